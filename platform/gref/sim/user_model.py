"""The hidden user model of the simulated world, and its exact oracle, in several families.

Every family shares one user: she scrolls a list top-down in screens of ``screen_size`` items
and an examined item i at position p is clicked with probability sigmoid(l_p + b_p), where
  l_p = base_click_logit + affinity(u, i) + (the family's list effect on p, from the items above),
  b_p = a click-conditioned bonus, applied only when item p-1 was clicked.
She moves on from p-1 to p with probability cont_p (continue_in_screen, or continue_next_screen
at a screen boundary: position bias), times the family's examination factor, and after a click
on p-1 she may stop, satisfied, with probability sat_{p-1}. Families (``WorldConfig.family``):

  * ``attribute`` (the default): fatigue per earlier item of the same category; the Monkey King ->
    Nezha series bonus right after a clicked item of the same series. Examination ignores clicks.
  * ``satisfaction``: a click satisfies and ends the visit with probability
    sigmoid(sat_bias + sat_quality * quality) -- the better the item, the likelier the user stops
    (click-dependent examination, as the DBN / satisfied-user click models assume).
  * ``contrast``: an item's appeal is judged against what came just before it -- its logit moves by
    contrast * (its quality - the mean quality of the ``contrast_window`` items above it) (a
    numeric context effect: anchoring / contrast in choice sets).
  * ``complement``: effects between *different* categories -- a fixed random share of category
    pairs go together (phone -> case: + complement_strength on the item right after) and another
    share clash (- the same); pairs of one category have none.
  * ``coverage``: whole-page attention -- each user has ``intents`` favourite categories; the
    chance to move on to the next item is scaled by coverage_floor + (1 - coverage_floor) * (share
    of her intents the items seen so far cover): a page that shows her interests early is read on.
Given a click, like ~ sigmoid(like_bias + like_quality * quality) and long_view ~
sigmoid(long_view_bias + long_view_duration * (log-duration - 3.5)) in every family.

Exact expected feedback. With q_p = P(click p | examined p), s = sigmoid, and the list fixed,
every term above is a function of the list alone except the two that depend on clicks:
  pi_p = P(p-1 clicked | p examined) = q_{p-1} (1 - sat_{p-1}) / (1 - q_{p-1} sat_{p-1}),
  q_p  = s(l_p) + pi_p (s(l_p + b_p) - s(l_p)),
  e_p  = e_{p-1} cont_p (1 - q_{p-1} sat_{p-1}),    e_1 = 1,
  E[clicks] = sum_p e_p q_p.
(With sat = 0 this is the attribute family's recursion: e_p = prod cont, pi_p = q_{p-1}.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gref.sim.world import World

FAMILIES = ("attribute", "satisfaction", "contrast", "complement", "coverage")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def examination_probs(world: World, length: int) -> np.ndarray:
    """Position bias alone, e_p for p = 1..length with no family factor. [length]"""
    return np.cumprod(_screen_continuation(world, length))


def _screen_continuation(world: World, length: int) -> np.ndarray:
    """cont_p [length]: 1 at p = 1, continue_next_screen at a screen boundary, else continue_in_screen."""
    cfg = world.config
    cont = np.full(length, cfg.continue_in_screen)
    cont[0] = 1.0
    boundaries = np.arange(length) % cfg.screen_size == 0
    cont[boundaries & (np.arange(length) > 0)] = cfg.continue_next_screen
    return cont


@dataclass
class ListTerms:
    """Everything the user model needs about a batch of lists [B, L] (all functions of the list)."""

    logit: np.ndarray  # [B, L] l_p: click logit if examined (before the click-conditioned bonus)
    bonus: np.ndarray  # [B, L] b_p: added to l_p when item p-1 was clicked
    cont: np.ndarray  # [B, L] P(move on from p-1 to p), click aside; cont[:, 0] = 1
    sat: np.ndarray  # [B, L] P(stop after p | p clicked)
    valid: np.ndarray  # [B, L] bool: a real item


def list_terms(world: World, user_ids: np.ndarray, items: np.ndarray, logit: np.ndarray | None = None) -> ListTerms:
    """The family's terms of lists ``items`` [B, L] (item ids, -1 = none) for ``user_ids`` [B].
    ``logit`` [B, L]: the items' base logits to use instead of the hidden ones (reference rows that
    know the list effects but estimate each item's appeal from features)."""
    cfg = world.config
    valid = items >= 0
    safe = np.where(valid, items, 0)
    base = cfg.base_click_logit + world.affinity(user_ids, safe) if logit is None else logit
    B, L = items.shape
    terms = ListTerms(logit=np.where(valid, base, 0.0), bonus=np.zeros((B, L)),
                      cont=np.broadcast_to(_screen_continuation(world, L), (B, L)).copy(),
                      sat=np.zeros((B, L)), valid=valid)
    family = cfg.family
    if family == "attribute":
        cats = np.where(valid, world.item_category[safe], -1)
        same_cat = (cats[:, :, None] == cats[:, None, :]) & valid[:, :, None] & valid[:, None, :]
        earlier = np.tril(np.ones((L, L), dtype=bool), k=-1)  # [p, q]: q < p
        terms.logit -= cfg.category_fatigue * (same_cat & earlier).sum(axis=2)
        series = np.where(valid, world.item_series[safe], -1)
        terms.bonus[:, 1:] = cfg.series_boost * ((series[:, 1:] == series[:, :-1]) & valid[:, 1:] & valid[:, :-1])
    elif family == "satisfaction":
        terms.sat = np.where(valid, _sigmoid(cfg.sat_bias + cfg.sat_quality * world.item_quality[safe]), 0.0)
    elif family == "contrast":
        quality = np.where(valid, world.item_quality[safe], 0.0)
        for p in range(1, L):
            lo = max(0, p - cfg.contrast_window)
            seen = valid[:, lo:p]
            mean = (quality[:, lo:p] * seen).sum(1) / np.maximum(seen.sum(1), 1)
            terms.logit[:, p] += np.where(seen.any(1) & valid[:, p], cfg.contrast * (quality[:, p] - mean), 0.0)
    elif family == "complement":
        cats = np.where(valid, world.item_category[safe], 0)
        pair = category_pairs(world)[cats[:, :-1], cats[:, 1:]]  # [B, L-1]: effect of p-1 on p
        terms.logit[:, 1:] += cfg.complement_strength * pair * (valid[:, 1:] & valid[:, :-1])
    elif family == "coverage":
        intents = user_intents(world)[user_ids]  # [B, K]
        cats = np.where(valid, world.item_category[safe], -1)
        hit = (cats[:, :, None] == intents[:, None, :])  # [B, L, K]
        covered = np.maximum.accumulate(hit, axis=1).mean(2)  # [B, L]: share of intents covered by 1..p
        floor = cfg.coverage_floor
        terms.cont[:, 1:] *= floor + (1.0 - floor) * covered[:, :-1]
    else:
        raise ValueError(f"unknown user-model family '{family}' (one of {', '.join(FAMILIES)})")
    return terms


def category_pairs(world: World) -> np.ndarray:
    """The complement family's [n_categories, n_categories] effect of the item above (row) on the
    item below (column): +1 go together, -1 clash, 0 none; diagonal 0. Fixed by the world's seed."""
    cfg = world.config
    rng = np.random.default_rng([cfg.seed, 7001])
    u = rng.random((cfg.n_categories, cfg.n_categories))
    pairs = np.where(u < cfg.complement_share, 1.0, np.where(u > 1.0 - cfg.complement_share, -1.0, 0.0))
    np.fill_diagonal(pairs, 0.0)
    return pairs


def user_intents(world: World) -> np.ndarray:
    """The coverage family's intents: each user's ``intents`` categories of highest mean affinity
    (the mean latent vector of a category's items against the user's). [n_users, intents] int"""
    cfg = world.config
    counts = np.bincount(world.item_category, minlength=cfg.n_categories)[:, None]
    centroids = np.zeros((cfg.n_categories, world.item_latent.shape[1]))
    np.add.at(centroids, world.item_category, world.item_latent)
    centroids /= np.maximum(counts, 1)
    score = world.user_latent @ centroids.T
    score[:, counts[:, 0] == 0] = -np.inf
    return np.argsort(-score, axis=1, kind="stable")[:, : cfg.intents]


def click_probs(terms: ListTerms) -> tuple[np.ndarray, np.ndarray]:
    """The exact recursion: (e [B, L] P(examine p), q [B, L] P(click p | examined p))."""
    B, L = terms.logit.shape
    e, q = np.zeros((B, L)), np.zeros((B, L))
    for p in range(L):
        s = _sigmoid(terms.logit[:, p])
        if p == 0:
            e[:, 0], q[:, 0] = 1.0, s
        else:
            q_prev, sat_prev = q[:, p - 1], terms.sat[:, p - 1]
            keep = 1.0 - q_prev * sat_prev
            pi = q_prev * (1.0 - sat_prev) / np.maximum(keep, 1e-12)
            e[:, p] = e[:, p - 1] * terms.cont[:, p] * keep
            q[:, p] = s + pi * (_sigmoid(terms.logit[:, p] + terms.bonus[:, p]) - s)
    valid = terms.valid
    return e * valid, q * valid


def _outcome_probs(world: World, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cfg = world.config
    safe = np.where(items >= 0, items, 0)
    p_like = _sigmoid(cfg.like_bias + cfg.like_quality * world.item_quality[safe])
    p_long = _sigmoid(cfg.long_view_bias + cfg.long_view_duration * (world.item_duration[safe] - 3.5))
    return p_like, p_long


def expected_feedback(world: World, user_ids: np.ndarray, items: np.ndarray,
                      logit: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Exact expected clicks / likes / long views of ordered lists.

    user_ids: [B] int; items: [B, L] item ids in display order, -1 = no item (shorter list);
    ``logit`` [B, L]: base logits replacing the hidden ones (see ``list_terms``).
    Returns {"click": [B], "like": [B], "long_view": [B], "click_at": [B, L]}.
    """
    user_ids = np.asarray(user_ids, dtype=np.int64)
    items = np.atleast_2d(np.asarray(items, dtype=np.int64))
    e, q = click_probs(list_terms(world, user_ids, items, logit))
    click_at = e * q
    p_like, p_long = _outcome_probs(world, items)
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
    t = list_terms(world, user_ids, items)
    B, L = items.shape
    examined = np.zeros((B, L), dtype=bool)
    click = np.zeros((B, L), dtype=bool)
    alive = np.ones(B, dtype=bool)
    stops = bool(t.sat.any())  # no extra draws where nobody stops on a click (the attribute stream as before)
    for p in range(L):
        if p > 0:
            alive &= rng.random(B) < t.cont[:, p]
            if stops:
                alive &= ~(click[:, p - 1] & (rng.random(B) < t.sat[:, p - 1]))
        examined[:, p] = alive & t.valid[:, p]
        bonus = t.bonus[:, p] * (click[:, p - 1] if p > 0 else False)
        click[:, p] = examined[:, p] & (rng.random(B) < _sigmoid(t.logit[:, p] + bonus))
    p_like, p_long = _outcome_probs(world, items)
    like = click & (rng.random((B, L)) < p_like)
    long_view = click & (rng.random((B, L)) < p_long)
    i8 = np.int8
    return {"examined": examined.astype(i8), "click": click.astype(i8),
            "like": like.astype(i8), "long_view": long_view.astype(i8)}
