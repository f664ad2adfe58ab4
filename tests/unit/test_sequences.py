"""Grouping raw rows into sequences, and every quarantine reason, on hand-made logs."""

import json

import numpy as np
import pyarrow as pa
import pytest

from gref.data.schema import DatasetConfig, SchemaError, canonical_schema
from gref.data.sequences import REASONS, build_sequences, split_boundaries

DAY = 86_400_000


def request(rid, m=4, shown=(3, 1), clicks=(1, 0), user=7, ts=10 * DAY, changes=None):
    """Rows of one request: candidates with upstream ranks 1..m; ``shown`` maps display
    positions onto candidate indices (shown[0] is at position 1)."""
    rows = []
    for i in range(m):
        pos = shown.index(i) + 1 if i in shown else None
        rows.append({"request_id": rid, "user_id": user, "ts": ts, "item_id": 100 * rid + i,
                     "upstream_rank": i + 1, "position": pos,
                     "click": clicks[shown.index(i)] if i in shown else None,
                     "num_a": float(i), "cat_c": f"c{i % 2}"})
    for (i, col), value in (changes or {}).items():
        rows[i][col] = value
    return rows


def build_schema(rows) -> pa.Schema:
    fields = [("request_id", pa.int64()), ("user_id", pa.int64()), ("ts", pa.int64()), ("item_id", pa.int64()),
              ("upstream_rank", pa.int32()), ("position", pa.int32()), ("click", pa.int8()),
              ("num_a", pa.float64()), ("cat_c", pa.string())]
    if any("randomized" in r for r in rows):  # the optional request-level columns
        fields.append(("randomized", pa.int8()))
    if any("explored" in r for r in rows):  # as FeedbackStore.export_logs writes it
        fields.append(("explored", pa.bool_()))
    return pa.schema(fields)


def build(rows, max_candidates=200):
    table = pa.Table.from_pylist(rows, schema=build_schema(rows))
    return build_sequences(table, ["num_a"], ["cat_c"], (20 * DAY, 25 * DAY), max_candidates)


def test_valid_request_becomes_a_sequence():
    rows = request(1)[::-1]  # row order must not matter
    seqs, quarantine = build(rows)
    assert quarantine.num_rows == 0
    rec = seqs.to_pylist()[0]
    assert rec["item_id"] == [100, 101, 102, 103]  # upstream order
    assert rec["exposure"] == [3, 1]  # position 1 is candidate 3
    assert rec["click"] == [1.0, 0.0] and rec["m"] == 4 and rec["n"] == 2
    assert rec["num_raw"] == [0.0, 1.0, 2.0, 3.0] and rec["cat_c"] == ["c0", "c1", "c0", "c1"]
    assert rec["split"] == "train"


def test_position_gaps_and_variable_sizes():
    rows = request(1, m=3, shown=(2, 0), clicks=(0, 1))
    rows[0]["position"] = 7  # candidate 0 shown at 7, candidate 2 at 1: gap allowed
    rows += request(2, m=6, shown=(0, 1, 2, 3, 4), clicks=(0, 0, 0, 0, 1))
    seqs, quarantine = build(rows)
    assert quarantine.num_rows == 0
    recs = {r["request_id"]: r for r in seqs.to_pylist()}
    assert recs[1]["exposure"] == [2, 0] and recs[1]["m"] == 3
    assert recs[2]["n"] == 5 and recs[2]["m"] == 6


def test_missing_numeric_is_kept_as_nan_not_quarantined():
    seqs, quarantine = build(request(1, changes={(0, "num_a"): None}))
    assert quarantine.num_rows == 0
    assert np.isnan(seqs.to_pylist()[0]["num_raw"][0])


CASES = {
    "null_key": {(1, "item_id"): None},
    "inconsistent_request": {(2, "user_id"): 8},
    "invalid_upstream_rank": {(0, "upstream_rank"): 0},
    "duplicate_upstream_rank": {(1, "upstream_rank"): 1},
    "duplicate_item": {(2, "item_id"): 200},
    "invalid_position": {(3, "position"): 0},
    "duplicate_position": {(3, "position"): 2},
    "exposed_without_feedback": {(3, "click"): None},
    "invalid_feedback": {(3, "click"): 2},
    "feedback_without_exposure": {(0, "click"): 1},
    "non_finite_feature": {(2, "num_a"): float("inf")},
    "invalid_randomized": {(1, "randomized"): 1},  # one row of the request says so, the others not
    "invalid_explored": {(1, "explored"): True},  # a bool column: only disagreement between rows
}


@pytest.mark.parametrize("reason", sorted(REASONS))
def test_every_quarantine_reason(reason):
    if reason == "no_exposed_item":
        bad = request(2, shown=(), clicks=())
    elif reason == "too_many_candidates":
        bad = request(2, m=5)
    else:
        bad = request(2, changes=CASES[reason])
    seqs, quarantine = build(request(1) + bad + request(3), max_candidates=4)
    assert seqs.column("request_id").to_pylist() == [1, 3]  # the good ones survive
    q = quarantine.to_pylist()
    assert [r["reason"] for r in q] == [reason]
    assert q[0]["request_id"] == "2" and q[0]["n_rows"] == len(bad)
    kept = json.loads(q[0]["raw_rows"])  # the request's rows, nothing lost
    assert sorted(map(str, (r["item_id"] for r in kept))) == sorted(map(str, (r["item_id"] for r in bad)))


def test_quarantine_in_chunks_and_chunked_input_change_nothing(monkeypatch):
    """build_sequences reads the table through an index and turns rejected requests into JSON a
    chunk at a time: neither how the input is chunked nor the chunk size may change its output."""
    from gref.data import sequences

    rows = []
    for rid in range(1, 13):
        changes = {(3, "click"): None} if rid % 3 == 0 else {(2, "item_id"): 100 * rid} if rid % 4 == 0 else None
        rows += request(rid, user=rid % 5, ts=(10 + rid) * DAY, changes=changes)
    rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]  # rows of requests interleaved
    whole_seqs, whole_q = build(rows)
    assert dict(zip(whole_q.column("request_id").to_pylist(), whole_q.column("reason").to_pylist())) == {
        "3": "exposed_without_feedback", "6": "exposed_without_feedback", "9": "exposed_without_feedback",
        "12": "exposed_without_feedback", "4": "duplicate_item", "8": "duplicate_item"}
    assert sorted(whole_seqs.column("request_id").to_pylist()) == [1, 2, 5, 7, 10, 11]
    monkeypatch.setattr(sequences, "QUARANTINE_CHUNK", 1)
    schema = build_schema(rows)
    chunked = pa.Table.from_batches([pa.RecordBatch.from_pylist(rows[i:i + 5], schema=schema)
                                     for i in range(0, len(rows), 5)])
    seqs, q = build_sequences(chunked, ["num_a"], ["cat_c"], (20 * DAY, 25 * DAY), 200)
    assert seqs.equals(whole_seqs) and q.equals(whole_q)
    by_id = {r["request_id"]: json.loads(r["raw_rows"]) for r in q.to_pylist()}
    assert sorted(r["upstream_rank"] for r in by_id["3"]) == [1, 2, 3, 4]  # each record: its own rows
    assert {r["request_id"] for rows_ in by_id.values() for r in rows_} == {int(k) for k in by_id}


def test_the_randomisation_flag_is_carried_per_request():
    rows = request(1) + [{**r, "randomized": 1} for r in request(2)] + [{**r, "randomized": None} for r in request(3)]
    seqs, quarantine = build(rows + [{**r, "randomized": 2} for r in request(4)])
    assert seqs.column("randomized").to_pylist() == [0, 1, 0]  # absent or null: not randomised
    assert quarantine.column("reason").to_pylist() == ["invalid_randomized"]  # 2 is no flag
    seqs, _ = build(request(1))
    assert "randomized" not in seqs.column_names  # logs without the column: records without it
    schema = pa.schema([(c, pa.int64()) for c in ("request_id", "user_id", "ts", "item_id", "upstream_rank",
                                                  "position", "click")] + [("randomized", pa.bool_())])
    assert canonical_schema(schema, DatasetConfig())["randomized"] == "randomized"  # a bool column is fine


def test_the_explored_flag_is_carried_per_request():
    """FeedbackStore.export_logs writes ``explored`` as a bool on every row of a served list."""
    rows = request(1) + [{**r, "explored": True} for r in request(2)] + [{**r, "explored": False} for r in request(3)]
    seqs, quarantine = build(rows)
    assert seqs.column("explored").to_pylist() == [0, 1, 0] and quarantine.num_rows == 0
    assert "randomized" not in seqs.column_names


def test_null_request_id_is_quarantined():
    rows = request(1) + [{**r, "request_id": None} for r in request(2)]
    seqs, quarantine = build(rows)
    assert seqs.num_rows == 1 and quarantine.column("reason").to_pylist() == ["null_key"]


def test_split_boundaries_are_calendar_days():
    valid_start, test_start = split_boundaries(10 * DAY + 5, valid_days=1, test_days=2)
    assert (valid_start, test_start) == (8 * DAY, 9 * DAY)


def test_schema_missing_column_is_named():
    schema = pa.schema([("request_id", pa.int64()), ("user_id", pa.int64()), ("ts", pa.int64()),
                        ("item_id", pa.int64()), ("upstream_rank", pa.int32()), ("position", pa.int32())])
    with pytest.raises(SchemaError, match="'click'"):
        canonical_schema(schema, DatasetConfig())


def test_column_map_renames():
    schema = pa.schema([("req", pa.string()), ("uid", pa.int64()), ("time", pa.timestamp("ms")),
                        ("item_id", pa.string()), ("rank", pa.int32()), ("position", pa.int32()),
                        ("click", pa.int8()), ("num_x", pa.float32()), ("extra", pa.string())])
    cfg = DatasetConfig(column_map={"req": "request_id", "uid": "user_id", "time": "ts", "rank": "upstream_rank"})
    mapping = canonical_schema(schema, cfg)
    assert mapping == {"req": "request_id", "uid": "user_id", "time": "ts", "item_id": "item_id",
                       "rank": "upstream_rank", "position": "position", "click": "click", "num_x": "num_x"}
    with pytest.raises(SchemaError, match="column_map"):
        canonical_schema(schema, DatasetConfig(column_map={"nope": "request_id"}))


@pytest.mark.parametrize("values", [
    pa.array([3, 7, None, 3, -2, 12345678901], pa.int64()),
    pa.array(["a", "b", None, "a", "é", ""], pa.string()),
    pa.array([1.0, 2.5, None, 1.0], pa.float64()),  # not keyed by Arrow: the Python path
])
def test_categorical_counts_and_ids_by_arrow_equal_pythons(values):
    """partial_stats counts and encode_cat_array looks up categorical values with Arrow; both must
    key them exactly as ``str(v)`` does (the vocabulary's keys, and the serving path's encode_cat)."""
    from collections import Counter

    from gref.data.features import FeatureSpec, partial_stats

    table = pa.table({"num_raw": pa.array([[0.0] * len(values)], pa.list_(pa.float64())),
                      "cat_c": pa.ListArray.from_arrays(pa.array([0, len(values)], pa.int32()), values)})
    counts = partial_stats(table, [], ["cat_c"])["cats"]["cat_c"]
    assert counts == Counter(str(v) for v in values.to_pylist() if v is not None)
    seen = [str(v) for v in values.to_pylist()[:2]]  # in the vocabulary; the rest unseen or null
    spec = FeatureSpec([], ["cat_c"], [], [], {"cat_c": {seen[0]: 2, seen[1]: 3}})
    assert spec.encode_cat_array("cat_c", values).tolist() == spec.encode_cat("cat_c", values.to_pylist()).tolist()
    assert spec.encode_cat_array("cat_c", values).tolist()[:3] == [2, 3, 1]


def test_imitation_leaves_the_randomisation_bucket_out():
    """Pre-training and Eq. 7 pairs imitate production's order; a bucket request's order is random."""
    from gref.data.sequences import imitation_requests

    table = pa.table({"request_id": [1, 2, 3], "randomized": pa.array([0, 1, 0], pa.int8())})
    assert imitation_requests(table).column("request_id").to_pylist() == [1, 3]
    no_bucket = pa.table({"request_id": [1, 2]})
    assert imitation_requests(no_bucket) is no_bucket


def test_imitation_leaves_the_explored_lists_out():
    """An explored list is the serving model's own sample, not a ranking to imitate; with both flags
    a request leaves when either is set."""
    from gref.data.sequences import imitation_requests

    table = pa.table({"request_id": [1, 2, 3, 4], "explored": pa.array([0, 1, 0, 0], pa.int8()),
                      "randomized": pa.array([0, 0, 1, 0], pa.int8())})
    assert imitation_requests(table).column("request_id").to_pylist() == [1, 4]
    assert imitation_requests(table.drop(["randomized"])).column("request_id").to_pylist() == [1, 3, 4]
