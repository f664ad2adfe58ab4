"""Raw long-format rows -> one sequence record per request, or a quarantine record.

``build_sequences`` is vectorised (NumPy/pandas/Arrow, no Python loop over requests): it is
called by a Ray Data task per hash slice of complete requests (jobs.prepare) and, unchanged, by the
single-process reference implementation in benchmarks/prepare.py.

Sequence record (one per valid request; lists are per request):
  request_id, user_id, ts, split, m, n
  item_id    [m]     candidates in upstream order (upstream_rank ascending)
  num_raw    [m*F]   numeric features, row-major, null -> NaN (imputed later)
  cat_<name> [m]     raw categorical values per categorical column
  exposure   [n]     indices into the candidates, in display order (position ascending)
  click, like, long_view [n]  feedback per exposed slot (null like/long_view -> 0)
  randomized         1 = a randomisation-bucket request (only when the logs have the column; null -> 0)
  explored           1 = a list sampled by the endpoint's exploration (the same; gref.offpolicy)
Quarantine record: request_id, reason, detail, n_rows, raw_rows (the request's rows as JSON).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from gref.data.schema import OPTIONAL_REQUEST

DAY_MS = 86_400_000
QUARANTINE_CHUNK = 2_000  # rejected requests turned into Python objects at a time

# Reason codes, in the order they are checked; a request gets the first that applies.
REASONS = {
    "null_key": "request_id, user_id, ts or item_id is null",
    "inconsistent_request": "user_id or ts differs between rows of one request",
    "invalid_randomized": "randomized is not 0 or 1, or differs between rows of one request",
    "invalid_explored": "explored is not 0 or 1, or differs between rows of one request",
    "invalid_upstream_rank": "upstream_rank is null or < 1",
    "duplicate_upstream_rank": "two candidates share an upstream_rank",
    "duplicate_item": "an item_id appears twice among the candidates",
    "invalid_position": "position < 1",
    "duplicate_position": "two exposed items share a position",
    "exposed_without_feedback": "an exposed row (position set) has a null click",
    "invalid_feedback": "a feedback value is not 0 or 1",
    "feedback_without_exposure": "a row without a position has positive feedback",
    "non_finite_feature": "a num_* feature is NaN or +-inf (null means missing and is fine)",
    "no_exposed_item": "no candidate of the request was exposed",
    "too_many_candidates": "more candidates than max_candidates",
}


def split_boundaries(max_ts: int, valid_days: int, test_days: int) -> tuple[int, int]:
    """(valid_start, test_start) in ms: the last ``test_days`` UTC calendar days are test,
    the ``valid_days`` before them validation, everything earlier train."""
    last_day_start = (int(max_ts) // DAY_MS) * DAY_MS
    test_start = last_day_start - (test_days - 1) * DAY_MS
    return test_start - valid_days * DAY_MS, test_start


def _np(table: pa.Table, name: str, fill=None) -> np.ndarray:
    col = table.column(name)
    if fill is not None:
        col = pc.fill_null(col, fill)
    return col.to_numpy(zero_copy_only=False)


def _flag(table: pa.Table, name: str) -> np.ndarray:
    """A request flag of the contract (``randomized``, ``explored``: bool, int or float; null = 0)
    as float64 per row."""
    return pc.fill_null(pc.cast(table.column(name), pa.float64()), 0.0).to_numpy(zero_copy_only=False)


def _per_group_any(flag: np.ndarray, starts: np.ndarray) -> np.ndarray:
    if len(flag) == 0:
        return np.zeros(0, dtype=bool)
    return np.logical_or.reduceat(flag, starts) if len(starts) else np.zeros(0, dtype=bool)


def _adjacent_dup(group: np.ndarray, key: np.ndarray, include: np.ndarray) -> np.ndarray:
    """Rows whose (group, key) equals that of another included row. Returns a row flag."""
    idx = np.flatnonzero(include)
    order = idx[np.lexsort((key[idx], group[idx]))]
    same = (group[order][1:] == group[order][:-1]) & (key[order][1:] == key[order][:-1])
    flag = np.zeros(len(group), dtype=bool)
    flag[order[1:][same]] = True
    return flag


def build_sequences(table: pa.Table, num_cols: list[str], cat_cols: list[str],
                    boundaries: tuple[int, int], max_candidates: int) -> tuple[pa.Table, pa.Table]:
    """Group rows by request and validate. Returns (sequences, quarantine) tables.

    ``table`` holds complete requests with canonical column names and int64-ms ``ts``. It is
    never copied whole: the rows are ordered by (request, upstream_rank) through an index
    (``order``), every check runs on NumPy columns read through it, and each output column is
    gathered from ``table`` once -- peak memory ~3x the table's Arrow size (with the process's
    own), where sorted copies of it had needed 5.4x (benchmarks.prepare, docs/benchmarks.md).
    """
    n_rows = table.num_rows
    req_codes, _ = pd.factorize(table.column("request_id").to_pandas(), use_na_sentinel=True)
    # Null request ids form one group of their own (code = max + 1), quarantined as null_key.
    req_codes = np.where(req_codes < 0, req_codes.max(initial=-1) + 1, req_codes)
    order = np.lexsort((_np(table, "upstream_rank", fill=0).astype(np.int64), req_codes))
    g = req_codes[order]  # from here on every per-row array is in request order
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]]) if n_rows else np.zeros(0, dtype=np.int64)
    counts = np.diff(np.r_[starts, n_rows])
    group_of_row = np.repeat(np.arange(len(starts)), counts)

    def ordered(name: str, fill=None) -> np.ndarray:
        return _np(table, name, fill=fill)[order]

    null = {c: np.asarray(table.column(c).is_null())[order] for c in table.column_names}
    rank = ordered("upstream_rank", fill=0).astype(np.int64)
    position = ordered("position", fill=0).astype(np.int64)
    exposed = ~null["position"]
    user_codes = pd.factorize(table.column("user_id").to_pandas())[0][order]
    item_codes = pd.factorize(table.column("item_id").to_pandas())[0][order]
    ts = ordered("ts", fill=0).astype(np.int64)
    fb_cols = [c for c in ("click", "like", "long_view") if c in table.column_names]

    flags: dict[str, np.ndarray] = {}
    flags["null_key"] = null["request_id"] | null["user_id"] | null["ts"] | null["item_id"]
    first = np.repeat(starts, counts)
    flags["inconsistent_request"] = (user_codes != user_codes[first]) | (ts != ts[first])
    for name in OPTIONAL_REQUEST:
        flag = _flag(table, name)[order] if name in table.column_names else np.zeros(n_rows)
        flags[f"invalid_{name}"] = ((flag != 0) & (flag != 1)) | (flag != flag[first])
    flags["invalid_upstream_rank"] = null["upstream_rank"] | (rank < 1)
    flags["duplicate_upstream_rank"] = _adjacent_dup(g, rank, ~null["upstream_rank"])
    flags["duplicate_item"] = _adjacent_dup(g, item_codes, ~null["item_id"])
    flags["invalid_position"] = exposed & (position < 1)
    flags["duplicate_position"] = _adjacent_dup(g, position, exposed)
    flags["exposed_without_feedback"] = exposed & null["click"]
    bad_fb = np.zeros(n_rows, dtype=bool)
    positive_unexposed = np.zeros(n_rows, dtype=bool)
    for c in fb_cols:
        v = ordered(c, fill=0)
        bad_fb |= ~null[c] & (v != 0) & (v != 1)
        positive_unexposed |= ~exposed & ~null[c] & (v > 0)
    flags["invalid_feedback"] = bad_fb
    flags["feedback_without_exposure"] = positive_unexposed
    nonfinite = np.zeros(n_rows, dtype=bool)
    for c in num_cols:
        nonfinite |= ~np.isfinite(ordered(c, fill=0.0).astype(np.float64))
    flags["non_finite_feature"] = nonfinite
    del null, rank, user_codes, item_codes, ts, bad_fb, positive_unexposed, nonfinite, first

    reason = np.full(len(starts), "", dtype=object)
    for code in REASONS:
        if code == "no_exposed_item":
            hit = ~_per_group_any(exposed, starts)
        elif code == "too_many_candidates":
            hit = counts > max_candidates
        else:
            hit = _per_group_any(flags[code], starts)
        reason = np.where((reason == "") & hit, code, reason)
    del flags
    ok_row = (reason == "")[group_of_row]
    return (_sequences(table, order, ok_row, g, num_cols, cat_cols, fb_cols, exposed, position, boundaries),
            _quarantine(table, order, starts, counts, reason))


def _sequences(table: pa.Table, order: np.ndarray, ok_row: np.ndarray, g: np.ndarray, num_cols: list[str],
               cat_cols: list[str], fb_cols: list[str], exposed: np.ndarray,
               position: np.ndarray, boundaries: tuple[int, int]) -> pa.Table:
    """The valid requests' records. ``order`` sorts ``table`` by (request, upstream_rank); the
    other per-row arrays are in that order already."""
    rows = np.flatnonzero(ok_row)
    gv = g[rows]
    starts = np.flatnonzero(np.r_[True, gv[1:] != gv[:-1]]) if len(rows) else np.zeros(0, dtype=np.int64)
    m = np.diff(np.r_[starts, len(rows)]).astype(np.int32)
    offsets = np.r_[0, np.cumsum(m)].astype(np.int32)
    cand_index = np.arange(len(rows)) - np.repeat(starts, m)
    source = order[rows]  # the table's row of every candidate, in output order
    first = pa.array(source[starts])  # each request's first row
    ts = table.column("ts").take(first).combine_chunks()
    valid_start, test_start = boundaries
    ts_np = ts.to_numpy(zero_copy_only=False)
    split = np.where(ts_np >= test_start, "test", np.where(ts_np >= valid_start, "valid", "train"))

    def lists(values: pa.Array | np.ndarray, offs: np.ndarray) -> pa.Array:
        return pa.ListArray.from_arrays(pa.array(offs, type=pa.int32()), values)

    def gathered(name: str) -> pa.Array:
        return table.column(name).take(pa.array(source)).combine_chunks()

    F = len(num_cols)
    num = np.empty((len(rows), F), dtype=np.float32)
    for j, c in enumerate(num_cols):  # a column at a time: one float64 copy of the table's column at most
        num[:, j] = _np(table, c, fill=np.nan)[source]
    cols: dict[str, pa.Array] = {
        "request_id": table.column("request_id").take(first).combine_chunks(),
        "user_id": table.column("user_id").take(first).combine_chunks(),
        "ts": ts,
        "split": pa.array(split.astype(str)),
        "m": pa.array(m),
        "item_id": lists(gathered("item_id"), offsets),
        "num_raw": lists(pa.array(num.reshape(-1)), offsets * F),
    }
    del num
    for c in cat_cols:
        cols[c] = lists(gathered(c), offsets)
    # exposure: exposed rows ordered by (request, position); gaps in positions are fine.
    exp_rows = np.flatnonzero(exposed[rows])
    exp_rows = exp_rows[np.lexsort((position[rows][exp_rows], gv[exp_rows]))]
    n = np.bincount(np.searchsorted(starts, exp_rows, side="right") - 1, minlength=len(starts)).astype(np.int32)
    exp_offsets = np.r_[0, np.cumsum(n)].astype(np.int32)
    cols["n"] = pa.array(n)
    cols["exposure"] = lists(pa.array(cand_index[exp_rows].astype(np.int32)), exp_offsets)
    for c in ("click", "like", "long_view"):
        values = (_np(table, c, fill=0)[source[exp_rows]].astype(np.float32) if c in fb_cols
                  else np.zeros(len(exp_rows), np.float32))
        cols[c] = lists(pa.array(values), exp_offsets)
    for name in OPTIONAL_REQUEST:
        if name in table.column_names:
            cols[name] = pa.array(_flag(table, name)[source[starts]].astype(np.int8))
    return pa.table(cols)


def _quarantine(table: pa.Table, order: np.ndarray, starts: np.ndarray, counts: np.ndarray,
                reason: np.ndarray) -> pa.Table:
    """One record per rejected request, its raw rows as JSON. The rejected rows are gathered
    from ``table`` in one take, then turned into Python a chunk of requests at a time."""
    schema = pa.schema([("request_id", pa.string()), ("reason", pa.string()), ("detail", pa.string()),
                        ("n_rows", pa.int64()), ("raw_rows", pa.string())])
    bad = np.flatnonzero(reason != "")
    parts = []
    for chunk in np.array_split(bad, max(1, -(-len(bad) // QUARANTINE_CHUNK))) if len(bad) else []:
        sizes = counts[chunk]
        index = np.concatenate([order[starts[gidx]:starts[gidx] + counts[gidx]] for gidx in chunk])
        rows = table.take(pa.array(index)).to_pylist()  # exact values, types kept
        ends = np.cumsum(sizes)
        parts.append(pa.Table.from_pylist([{
            "request_id": str(rows[end - size]["request_id"]),
            "reason": reason[gidx],
            "detail": REASONS[reason[gidx]],
            "n_rows": int(size),
            "raw_rows": json.dumps(rows[end - size:end], default=str),
        } for gidx, size, end in zip(chunk, sizes, ends)], schema=schema))
        del rows
    return pa.concat_tables(parts) if parts else schema.empty_table()


def imitation_requests(table: pa.Table) -> pa.Table:
    """The requests whose logged order may be imitated (pre-training, Eq. 7 pairs): not the
    randomisation bucket's (``randomized`` = 1: a random order of random candidates) nor the lists
    the endpoint sampled to explore (``explored`` = 1: the serving model's own random draws, not a
    ranking anyone chose). Both feed the reward and the estimates, not imitation. A table without
    either column is returned as it is."""
    flags = [c for c in ("randomized", "explored") if c in table.column_names]
    if not flags:
        return table
    keep = pc.not_equal(table.column(flags[0]), 1)
    for c in flags[1:]:
        keep = pc.and_(keep, pc.not_equal(table.column(c), 1))
    return table.filter(keep)
