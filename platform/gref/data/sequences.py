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
Quarantine record: request_id, reason, detail, n_rows, raw_rows (the request's rows as JSON).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

DAY_MS = 86_400_000

# Reason codes, in the order they are checked; a request gets the first that applies.
REASONS = {
    "null_key": "request_id, user_id, ts or item_id is null",
    "inconsistent_request": "user_id or ts differs between rows of one request",
    "invalid_randomized": "randomized is not 0 or 1, or differs between rows of one request",
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


def _randomized(table: pa.Table) -> np.ndarray:
    """The ``randomized`` column (bool, int or float; null = 0) as float64 per row."""
    return pc.fill_null(pc.cast(table.column("randomized"), pa.float64()), 0.0).to_numpy(zero_copy_only=False)


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

    ``table`` holds complete requests with canonical column names and int64-ms ``ts``.
    """
    n_rows = table.num_rows
    req_codes, _ = pd.factorize(table.column("request_id").to_pandas(), use_na_sentinel=True)
    # Null request ids form one group of their own (code = max + 1), quarantined as null_key.
    req_codes = np.where(req_codes < 0, req_codes.max(initial=-1) + 1, req_codes)
    rank = _np(table, "upstream_rank", fill=0).astype(np.int64)
    order = np.lexsort((rank, req_codes))
    t = table.take(pa.array(order))
    g = req_codes[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]]) if n_rows else np.zeros(0, dtype=np.int64)
    counts = np.diff(np.r_[starts, n_rows])
    group_of_row = np.repeat(np.arange(len(starts)), counts)

    null = {c: np.asarray(t.column(c).is_null()) for c in t.column_names}
    rank = _np(t, "upstream_rank", fill=0).astype(np.int64)
    position = _np(t, "position", fill=0).astype(np.int64)
    exposed = ~null["position"]
    user_codes, _ = pd.factorize(t.column("user_id").to_pandas())
    item_codes, _ = pd.factorize(t.column("item_id").to_pandas())
    ts = _np(t, "ts", fill=0).astype(np.int64)
    fb_cols = [c for c in ("click", "like", "long_view") if c in t.column_names]

    flags: dict[str, np.ndarray] = {}
    flags["null_key"] = null["request_id"] | null["user_id"] | null["ts"] | null["item_id"]
    first = np.repeat(starts, counts)
    flags["inconsistent_request"] = (user_codes != user_codes[first]) | (ts != ts[first])
    randomized = _randomized(t) if "randomized" in t.column_names else np.zeros(n_rows)
    flags["invalid_randomized"] = ((randomized != 0) & (randomized != 1)) | (randomized != randomized[first])
    flags["invalid_upstream_rank"] = null["upstream_rank"] | (rank < 1)
    flags["duplicate_upstream_rank"] = _adjacent_dup(g, rank, ~null["upstream_rank"])
    flags["duplicate_item"] = _adjacent_dup(g, item_codes, ~null["item_id"])
    flags["invalid_position"] = exposed & (position < 1)
    flags["duplicate_position"] = _adjacent_dup(g, position, exposed)
    flags["exposed_without_feedback"] = exposed & null["click"]
    bad_fb = np.zeros(n_rows, dtype=bool)
    positive_unexposed = np.zeros(n_rows, dtype=bool)
    for c in fb_cols:
        v = _np(t, c, fill=0)
        bad_fb |= ~null[c] & (v != 0) & (v != 1)
        positive_unexposed |= ~exposed & ~null[c] & (v > 0)
    flags["invalid_feedback"] = bad_fb
    flags["feedback_without_exposure"] = positive_unexposed
    nonfinite = np.zeros(n_rows, dtype=bool)
    for c in num_cols:
        v = _np(t, c, fill=0.0).astype(np.float64)
        nonfinite |= ~np.isfinite(v)
    flags["non_finite_feature"] = nonfinite

    reason = np.full(len(starts), "", dtype=object)
    for code in REASONS:
        if code == "no_exposed_item":
            hit = ~_per_group_any(exposed, starts)
        elif code == "too_many_candidates":
            hit = counts > max_candidates
        else:
            hit = _per_group_any(flags[code], starts)
        reason = np.where((reason == "") & hit, code, reason)
    ok_group = reason == ""
    ok_row = ok_group[group_of_row]
    return (_sequences(t, ok_row, g, num_cols, cat_cols, fb_cols, exposed, position, boundaries),
            _quarantine(t, starts, counts, reason))


def _sequences(t: pa.Table, ok_row: np.ndarray, g: np.ndarray, num_cols: list[str],
               cat_cols: list[str], fb_cols: list[str], exposed: np.ndarray,
               position: np.ndarray, boundaries: tuple[int, int]) -> pa.Table:
    rows = np.flatnonzero(ok_row)
    gv = g[rows]
    starts = np.flatnonzero(np.r_[True, gv[1:] != gv[:-1]]) if len(rows) else np.zeros(0, dtype=np.int64)
    m = np.diff(np.r_[starts, len(rows)]).astype(np.int32)
    offsets = np.r_[0, np.cumsum(m)].astype(np.int32)
    cand_index = np.arange(len(rows)) - np.repeat(starts, m)
    v = t.take(pa.array(rows))
    first = pa.array(starts)
    ts = v.column("ts").take(first)
    valid_start, test_start = boundaries
    ts_np = ts.to_numpy(zero_copy_only=False)
    split = np.where(ts_np >= test_start, "test", np.where(ts_np >= valid_start, "valid", "train"))

    def lists(values: pa.Array | np.ndarray, offs: np.ndarray) -> pa.Array:
        return pa.ListArray.from_arrays(pa.array(offs, type=pa.int32()), values)

    F = len(num_cols)
    if F:
        num = np.stack([_np(v, c, fill=np.nan).astype(np.float32) for c in num_cols], axis=1)
    else:
        num = np.zeros((len(rows), 0), dtype=np.float32)
    cols: dict[str, pa.Array] = {
        "request_id": v.column("request_id").take(first).combine_chunks(),
        "user_id": v.column("user_id").take(first).combine_chunks(),
        "ts": ts.combine_chunks(),
        "split": pa.array(split.astype(str)),
        "m": pa.array(m),
        "item_id": lists(v.column("item_id").combine_chunks(), offsets),
        "num_raw": lists(pa.array(num.reshape(-1)), offsets * F),
    }
    for c in cat_cols:
        cols[c] = lists(v.column(c).combine_chunks(), offsets)
    # exposure: exposed rows ordered by (request, position); gaps in positions are fine.
    exp_rows = np.flatnonzero(exposed[rows])
    exp_rows = exp_rows[np.lexsort((position[rows][exp_rows], gv[exp_rows]))]
    n = np.bincount(np.searchsorted(starts, exp_rows, side="right") - 1, minlength=len(starts)).astype(np.int32)
    exp_offsets = np.r_[0, np.cumsum(n)].astype(np.int32)
    cols["n"] = pa.array(n)
    cols["exposure"] = lists(pa.array(cand_index[exp_rows].astype(np.int32)), exp_offsets)
    for c in ("click", "like", "long_view"):
        values = _np(v, c, fill=0).astype(np.float32)[exp_rows] if c in fb_cols else np.zeros(len(exp_rows), np.float32)
        cols[c] = lists(pa.array(values), exp_offsets)
    if "randomized" in v.column_names:
        cols["randomized"] = pa.array(_randomized(v)[starts].astype(np.int8))
    return pa.table(cols)


def _quarantine(t: pa.Table, starts: np.ndarray, counts: np.ndarray, reason: np.ndarray) -> pa.Table:
    records = []
    for gidx in np.flatnonzero(reason != ""):
        rows = t.slice(int(starts[gidx]), int(counts[gidx])).to_pylist()  # exact values, types kept
        records.append({
            "request_id": str(rows[0]["request_id"]),
            "reason": reason[gidx],
            "detail": REASONS[reason[gidx]],
            "n_rows": int(counts[gidx]),
            "raw_rows": json.dumps(rows, default=str),
        })
    schema = pa.schema([("request_id", pa.string()), ("reason", pa.string()), ("detail", pa.string()),
                        ("n_rows", pa.int64()), ("raw_rows", pa.string())])
    return pa.Table.from_pylist(records, schema=schema)
