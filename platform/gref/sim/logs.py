"""Request generation in the simulated world: upstream ranker, production exposure policy,
user feedback, and the raw long-format log table (one row per candidate, SPEC raw-log contract).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gref.cli import log
from gref.sim.user_model import sample_feedback
from gref.sim.world import World

DAY_MS = 86_400_000

# Corruptions injected into ``corrupt_fraction`` of requests, so every quarantine path of
# jobs.prepare is exercised by the embedded default. Each maps to a reason code there.
CORRUPTIONS = ("duplicate_item", "duplicate_position", "exposed_without_feedback",
               "non_finite_feature", "no_exposed_item")


@dataclass
class RequestBatch:
    """A batch of simulated requests (the hidden truth of the logs)."""

    request_id: np.ndarray  # [R] int64
    user_id: np.ndarray  # [R] int64
    ts: np.ndarray  # [R] int64 ms
    candidates: np.ndarray  # [R, m] item ids in upstream order
    exposure: np.ndarray  # [R, n] indices into candidates, in display order
    feedback: dict[str, np.ndarray]  # click/like/long_view: [R, n] int8, per exposed slot
    randomized: np.ndarray | None = None  # [R] bool: in the randomisation bucket (None: the world has none)


def upstream_candidates(world: World, user_ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The previous stage: score a random pool noisily, keep the top m in its order. [R, m]"""
    cfg = world.config
    R = len(user_ids)
    pool = np.sort(rng.integers(0, cfg.n_items, size=(R, cfg.pool_size)), axis=1)
    dup = np.zeros(pool.shape, dtype=bool)
    dup[:, 1:] = pool[:, 1:] == pool[:, :-1]  # sampled twice: keep one copy
    score = world.affinity(user_ids, pool) + rng.normal(scale=cfg.upstream_noise, size=pool.shape)
    score[dup] = -np.inf
    top = np.argsort(-score, axis=1, kind="stable")[:, : cfg.candidates]
    return np.take_along_axis(pool, top, axis=1)


def production_policy(world: World, user_ids: np.ndarray, candidates: np.ndarray,
                      rng: np.random.Generator) -> np.ndarray:
    """The exposure policy: a noisy pointwise ranker + an expert rule (no two items of one
    creator adjacent, relaxed only if nothing else is left). Returns [R, n] candidate indices.
    """
    cfg = world.config
    R, m = candidates.shape
    score = world.affinity(user_ids, candidates) + rng.normal(scale=cfg.policy_noise, size=(R, m))
    creators = world.item_creator[candidates]
    taken = np.zeros((R, m), dtype=bool)
    exposure = np.zeros((R, cfg.exposed), dtype=np.int64)
    rows = np.arange(R)
    for t in range(cfg.exposed):
        s = np.where(taken, -np.inf, score)
        if t > 0:
            last_creator = creators[rows, exposure[:, t - 1]]
            ruled = np.where(creators == last_creator[:, None], -np.inf, s)
            has_other = np.isfinite(ruled).any(axis=1)
            s = np.where(has_other[:, None], ruled, s)
        pick = np.argmax(s, axis=1)
        exposure[:, t] = pick
        taken[rows, pick] = True
    return exposure


def simulate_requests(world: World, n_requests: int, first_request_id: int,
                      rng: np.random.Generator) -> RequestBatch:
    cfg = world.config
    p_user = world.user_activity / world.user_activity.sum()
    user_ids = rng.choice(cfg.n_users, size=n_requests, p=p_user)
    ts = cfg.start_ts_ms + rng.integers(0, cfg.days * DAY_MS, size=n_requests)
    candidates = upstream_candidates(world, user_ids, rng)
    exposure = production_policy(world, user_ids, candidates, rng)
    randomized = None
    if cfg.randomized_share > 0:  # (no draws otherwise: a world without the bucket logs as before)
        randomized, exposure = randomize(exposure, candidates.shape[1], cfg.randomized_share, rng)
    shown = np.take_along_axis(candidates, exposure, axis=1)
    fb = sample_feedback(world, user_ids, shown, rng)
    return RequestBatch(
        request_id=np.arange(first_request_id, first_request_id + n_requests, dtype=np.int64),
        user_id=user_ids.astype(np.int64), ts=ts.astype(np.int64), candidates=candidates,
        exposure=exposure, feedback={k: fb[k] for k in ("click", "like", "long_view")},
        randomized=randomized,
    )


def randomize(exposure: np.ndarray, m: int, share: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The randomisation bucket: each request joins it with probability ``share`` and then shows
    n of its m candidates in a uniformly random order (every candidate lands on every slot with
    probability 1/m). exposure [R, n] -> (randomized [R] bool, exposure [R, n])."""
    R, n = exposure.shape
    randomized = rng.random(R) < share
    shuffled = np.argsort(rng.random((R, m)), axis=1)[:, :n]
    return randomized, np.where(randomized[:, None], shuffled, exposure)


def to_log_table(world: World, batch: RequestBatch) -> pa.Table:
    """Long format: one row per (request, candidate), canonical raw-log columns."""
    R, m = batch.candidates.shape
    n = batch.exposure.shape[1]
    items = batch.candidates.reshape(-1)
    users = np.repeat(batch.user_id, m)
    rows = np.arange(R)[:, None]
    position = np.zeros((R, m), dtype=np.int32)  # 0 = not shown (null in the log)
    position[rows, batch.exposure] = np.arange(1, n + 1, dtype=np.int32)[None, :]
    fb_full = {}
    for name, values in batch.feedback.items():
        full = np.zeros((R, m), dtype=np.int8)
        full[rows, batch.exposure] = values
        fb_full[name] = full.reshape(-1)
    shown = position.reshape(-1) > 0
    hour = ((batch.ts // 3_600_000) % 24).astype(np.int64)

    def nullable(values: np.ndarray) -> pa.Array:
        return pa.array(values, mask=~shown)

    cols: dict[str, pa.Array] = {
        "request_id": pa.array(np.repeat(batch.request_id, m)),
        "user_id": pa.array(users),
        "ts": pa.array(np.repeat(batch.ts, m)),
        "item_id": pa.array(items),
        "upstream_rank": pa.array(np.tile(np.arange(1, m + 1, dtype=np.int32), R)),
        "position": nullable(position.reshape(-1)),
        "click": nullable(fb_full["click"]),
        "like": nullable(fb_full["like"]),
        "long_view": nullable(fb_full["long_view"]),
        "num_quality": pa.array(world.item_quality_obs[items]),
        "num_duration": pa.array(world.item_duration[items]),
    }
    for j in range(world.item_obs.shape[1]):
        cols[f"num_item_f{j}"] = pa.array(world.item_obs[items, j])
    for j in range(world.user_obs.shape[1]):
        cols[f"num_user_f{j}"] = pa.array(world.user_obs[users, j])
    cols["num_user_activity"] = pa.array(np.log(world.user_activity[users]))
    cols["cat_category"] = pa.array(world.item_category[items])
    cols["cat_series"] = pa.array(world.item_series[items])
    cols["cat_creator"] = pa.array(world.item_creator[items])
    cols["cat_user_segment"] = pa.array(world.user_segment[users])
    cols["cat_hour"] = pa.array(np.repeat(hour, m))
    if batch.randomized is not None:
        cols["randomized"] = pa.array(np.repeat(batch.randomized.astype(np.int8), m))
    return pa.table(cols)


def corrupt(table: pa.Table, world: World, fraction: float, rng: np.random.Generator) -> pa.Table:
    """Make ``fraction`` of the requests malformed in one of the CORRUPTIONS ways."""
    if fraction <= 0:
        return table
    m = world.config.candidates
    R = table.num_rows // m
    chosen = np.flatnonzero(rng.random(R) < fraction)
    if len(chosen) == 0:
        return table
    cols = {name: table.column(name).to_numpy(zero_copy_only=False).copy() for name in table.column_names}
    valid = {name: ~np.asarray(table.column(name).is_null()) for name in ("position", "click", "like", "long_view")}
    for k, req in enumerate(chosen):
        start = req * m
        kind = CORRUPTIONS[k % len(CORRUPTIONS)]
        if kind == "duplicate_item":
            cols["item_id"][start + 1] = cols["item_id"][start]
        elif kind == "duplicate_position":
            exposed = start + np.flatnonzero(valid["position"][start:start + m])
            cols["position"][exposed[1]] = cols["position"][exposed[0]]
        elif kind == "exposed_without_feedback":
            exposed = start + np.flatnonzero(valid["position"][start:start + m])
            valid["click"][exposed[0]] = False
        elif kind == "non_finite_feature":
            cols["num_quality"][start + 2] = np.nan
        elif kind == "no_exposed_item":
            for name in ("position", "click", "like", "long_view"):
                valid[name][start:start + m] = False
    arrays = {}
    for name in table.column_names:
        mask = ~valid[name] if name in valid else None
        arrays[name] = pa.array(cols[name], type=table.schema.field(name).type, mask=mask)
    return pa.table(arrays)


def generate_logs(world: World, n_requests: int, out_dir: str | Path, chunk: int = 10_000,
                  seed: int | None = None, progress: bool = True) -> Iterator[Path]:
    """Simulate ``n_requests`` and write them as ``out_dir/part-XXXXX.parquet``, one file per
    chunk. Yields each written path. Reproducible from (world seed, seed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(world.config.seed + 1 if seed is None else seed)
    done = 0
    part = 0
    while done < n_requests:
        size = min(chunk, n_requests - done)
        batch = simulate_requests(world, size, first_request_id=done, rng=rng)
        table = corrupt(to_log_table(world, batch), world, world.config.corrupt_fraction, rng)
        path = out / f"part-{part:05d}.parquet"
        pq.write_table(table, path)
        done += size
        part += 1
        if progress:
            log("simulate", f"{done:,}/{n_requests:,} requests written")
        yield path
