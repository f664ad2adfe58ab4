"""The hidden user model of the simulated world, and its exact oracle.

A user scrolls a list top-down in screens of ``screen_size`` items (cascade examination):
  P(examine p | examined p-1) = continue_in_screen, or continue_next_screen at a screen
  boundary (position bias; examination does not depend on clicks).
An examined item at position p is clicked with probability sigmoid(l_p + b_p), where
  l_p = base_click_logit + affinity(u, i_p) - category_fatigue * #{q < p : cat(q) = cat(p)}
  b_p = series_boost if item p-1 is of the same series as item p AND was clicked, else 0
(the Monkey King -> Nezha effect; fatigue and the series bonus are the intra-list effects
only a list-aware model can exploit). Given a click, like ~ sigmoid(like_bias + like_quality *
quality) and long_view ~ sigmoid(long_view_bias + long_view_duration * (log-duration - 3.5)).

Exact expected feedback: with q_p = P(click p | examined p) and since examination of p
implies examination of p-1 independently of its click,
  q_p = s(l_p) + [same series as p-1] * q_{p-1} * (s(l_p + boost) - s(l_p)),
  E[clicks] = sum_p e_p q_p,   e_p = prod of continuation probabilities up to p.
"""

from __future__ import annotations

import numpy as np

from gref.sim.world import World


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def examination_probs(world: World, length: int) -> np.ndarray:
    """e_p for p = 1..length: probability that the user looks at position p. [length]"""
    cfg = world.config
    cont = np.full(length, cfg.continue_in_screen)
    cont[0] = 1.0
    boundaries = np.arange(length) % cfg.screen_size == 0
    cont[boundaries & (np.arange(length) > 0)] = cfg.continue_next_screen
    return np.cumprod(cont)


def _list_terms(world: World, user_ids: np.ndarray, items: np.ndarray, valid: np.ndarray):
    """Per-position base logits, same-series flags and like / long-view probabilities."""
    cfg = world.config
    safe = np.where(valid, items, 0)
    base = cfg.base_click_logit + world.affinity(user_ids, safe)  # [B, L]
    cats = np.where(valid, world.item_category[safe], -1)
    # fatigue: number of earlier valid items with the same category
    same_cat = (cats[:, :, None] == cats[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    earlier = np.tril(np.ones(same_cat.shape[1:], dtype=bool), k=-1)  # [p, q]: q < p
    fatigue = (same_cat & earlier).sum(axis=2)
    logits = base - cfg.category_fatigue * fatigue
    series = np.where(valid, world.item_series[safe], -1)
    same_series_prev = np.zeros_like(valid)
    same_series_prev[:, 1:] = (series[:, 1:] == series[:, :-1]) & valid[:, 1:] & valid[:, :-1]
    p_like = _sigmoid(cfg.like_bias + cfg.like_quality * world.item_quality[safe])
    p_long = _sigmoid(cfg.long_view_bias + cfg.long_view_duration * (world.item_duration[safe] - 3.5))
    return logits, same_series_prev, p_like, p_long


def expected_feedback(world: World, user_ids: np.ndarray, items: np.ndarray) -> dict[str, np.ndarray]:
    """Exact expected clicks / likes / long views of ordered lists.

    user_ids: [B] int; items: [B, L] item ids in display order, -1 = no item (shorter list).
    Returns {"click": [B], "like": [B], "long_view": [B], "click_at": [B, L]}.
    """
    user_ids = np.asarray(user_ids, dtype=np.int64)
    items = np.atleast_2d(np.asarray(items, dtype=np.int64))
    valid = items >= 0
    logits, same_prev, p_like, p_long = _list_terms(world, user_ids, items, valid)
    boost = world.config.series_boost
    q = np.zeros(items.shape)
    for p in range(items.shape[1]):
        q[:, p] = _sigmoid(logits[:, p])
        if p > 0:
            gain = _sigmoid(logits[:, p] + boost) - q[:, p]
            q[:, p] += same_prev[:, p] * q[:, p - 1] * gain
    click_at = q * examination_probs(world, items.shape[1])[None, :] * valid
    return {
        "click": click_at.sum(1),
        "like": (click_at * p_like).sum(1),
        "long_view": (click_at * p_long).sum(1),
        "click_at": click_at,
    }


def sample_feedback(world: World, user_ids: np.ndarray, items: np.ndarray,
                    rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw one realisation of the user model. Shapes as in ``expected_feedback``.

    Returns int8 arrays [B, L]: examined, click, like, long_view (0 where no item).
    """
    user_ids = np.asarray(user_ids, dtype=np.int64)
    items = np.atleast_2d(np.asarray(items, dtype=np.int64))
    valid = items >= 0
    logits, same_prev, p_like, p_long = _list_terms(world, user_ids, items, valid)
    cfg = world.config
    B, L = items.shape
    examined = np.zeros((B, L), dtype=bool)
    click = np.zeros((B, L), dtype=bool)
    alive = np.ones(B, dtype=bool)
    for p in range(L):
        if p > 0:
            cont = cfg.continue_next_screen if p % cfg.screen_size == 0 else cfg.continue_in_screen
            alive &= rng.random(B) < cont
        examined[:, p] = alive & valid[:, p]
        bonus = cfg.series_boost * (same_prev[:, p] & (click[:, p - 1] if p > 0 else False))
        click[:, p] = examined[:, p] & (rng.random(B) < _sigmoid(logits[:, p] + bonus))
    like = click & (rng.random((B, L)) < p_like)
    long_view = click & (rng.random((B, L)) < p_long)
    i8 = np.int8
    return {"examined": examined.astype(i8), "click": click.astype(i8),
            "like": like.astype(i8), "long_view": long_view.astype(i8)}
