"""Rerank-DPO preference pairs (paper §4.3, Eq. 7).

For an exposure order Y = (y_1..y_n) with feedback, each shown item gets the personalisation
score  S_i = alpha / P_i + gamma * U_i  where P_i is its 1-based rank in the exposure order and
U_i = sum_f w_f * feedback_f (click 1.0, like 1.5, long_view 0.8 by default). Sorting Y by S
(descending; ties keep exposure order -- a stable sort) gives the winner Y_w. If Y_w == Y the
request yields no pair, otherwise the pair is (winner Y_w, loser Y_l = Y).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gref.data.schema import FEEDBACK
from gref.data.sequences import imitation_requests


def padded(lists: pa.Array, fill: float = 0.0) -> np.ndarray:
    """A ListArray of numbers -> [R, max_len] array padded with ``fill``."""
    lists = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
    lengths = np.asarray(lists.value_lengths().fill_null(0), dtype=np.int64)
    width = int(lengths.max(initial=0))
    values = np.asarray(lists.flatten().to_numpy(zero_copy_only=False))
    out = np.full((len(lengths), width), fill, dtype=values.dtype if values.size else np.float32)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    cols = np.arange(len(values)) - np.repeat(np.r_[0, np.cumsum(lengths)[:-1]], lengths)
    out[rows, cols] = values
    return out


def winner_order(feedback: dict[str, np.ndarray], n: np.ndarray, alpha: float, gamma: float,
                 weights: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 7 on a batch of padded exposure lists.

    feedback: name -> [R, L] per exposed slot (padding beyond n ignored); n: [R] lengths.
    Returns (order [R, L]: slot indices of Y_w, padding slots last; has_pair [R] bool).
    """
    R, L = next(iter(feedback.values())).shape
    slots = np.arange(L)[None, :]
    valid = slots < n[:, None]
    utility = sum(weights.get(name, 0.0) * feedback[name] for name in feedback)
    score = alpha / (slots + 1.0) + gamma * utility
    score = np.where(valid, score, -np.inf)
    order = np.argsort(-score, axis=1, kind="stable")
    has_pair = (order != slots).any(axis=1)
    return order, has_pair


def add_pairs(table: pa.Table, alpha: float, gamma: float, weights: dict[str, float]) -> pa.Table:
    """Keep requests that yield a pair; add ``winner`` and ``loser`` (candidate index lists)."""
    n = table.column("n").to_numpy().astype(np.int64)
    feedback = {name: padded(table.column(name)) for name in FEEDBACK}
    exposure = padded(table.column("exposure"), fill=-1).astype(np.int32)
    order, has_pair = winner_order(feedback, n, alpha, gamma, weights)
    winner = np.take_along_axis(exposure, order, axis=1)
    keep = np.flatnonzero(has_pair)
    offsets = np.r_[0, np.cumsum(n[keep])].astype(np.int32)
    flat = winner[keep][np.arange(winner.shape[1])[None, :] < n[keep][:, None]]
    out = table.take(pa.array(keep))
    out = out.append_column("winner", pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.int32())))
    return out.append_column("loser", out.column("exposure"))


def imitation_pairs(table: pa.Table, alpha: float, gamma: float, weights: dict[str, float]) -> pa.Table:
    """The Eq. 7 pairs of prepared sequences: ``add_pairs`` on the requests outside the
    randomisation bucket (a random order is nothing to imitate)."""
    return add_pairs(imitation_requests(table), alpha, gamma, weights)


def rederive(data_dir: str | Path, out_dir: str | Path, alpha: float, gamma: float) -> Path:
    """A prepared data dir whose pairs use another (alpha, gamma): ``out_dir`` links the
    sequences and feature spec of ``data_dir`` and holds its own ``pairs/{train,valid}``,
    rebuilt file by file from the sequences (no re-preparation of the raw logs).
    Reuses ``out_dir`` when it already holds these pairs. Returns ``out_dir``."""
    data_dir, out_dir = Path(data_dir).resolve(), Path(out_dir).resolve()
    summary = json.loads((data_dir / "summary.json").read_text())
    config = {**summary["config"], "alpha": alpha, "gamma": gamma}
    if (out_dir / "summary.json").exists() and json.loads((out_dir / "summary.json").read_text())["config"] == config:
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("sequences", "features.json"):
        link = out_dir / name
        if not link.exists():
            link.symlink_to(data_dir / name)
    counts = {}
    for split in ("train", "valid"):
        target = out_dir / "pairs" / split
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        counts[split] = 0
        for i, path in enumerate(sorted((data_dir / "sequences" / split).glob("*.parquet"))):
            table = imitation_pairs(pq.read_table(path), alpha, gamma, config["feedback_weights"])
            pq.write_table(table, target / f"part-{i:05d}.parquet")
            counts[split] += table.num_rows
    summary = {**summary, "config": config, "pairs": counts, "pairs_derived_from": str(data_dir)}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return out_dir
