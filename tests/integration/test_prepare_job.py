"""simulate -> prepare on a real local Ray cluster (Ray Data): counts, splits, sequences, pairs, and
the sliced and one-process reference paths writing the same outputs."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from gref.data.features import FeatureSpec


def read(path):
    return pads.dataset(str(path), format="parquet").to_table()


def test_counts_add_up(prep_dir):
    summary = json.loads((prep_dir / "summary.json").read_text())
    assert summary["requests_read"] == 3000
    assert summary["rows_read"] == 3000 * 30
    assert sum(summary["sequences"].values()) + summary["quarantined"] == summary["requests_read"]
    # corrupt_fraction=0.02 injects every corruption kind; all are caught with their reason
    assert set(summary["quarantined_by_reason"]) == {
        "duplicate_item", "duplicate_position", "exposed_without_feedback", "non_finite_feature", "no_exposed_item"}
    assert all(summary["sequences"][s] > 0 for s in ("train", "valid", "test"))
    for split in ("train", "valid", "test"):
        assert read(prep_dir / "sequences" / split).num_rows == summary["sequences"][split]
    quarantine = read(prep_dir / "quarantine")
    assert quarantine.num_rows == summary["quarantined"]
    assert all(json.loads(r) for r in quarantine.column("raw_rows").to_pylist())


def test_time_split_is_by_time(prep_dir):
    summary = json.loads((prep_dir / "summary.json").read_text())
    b = summary["split"]
    assert b["how"] == "days" and b["ts_unit"] == "ms"
    train, test = read(prep_dir / "sequences" / "train"), read(prep_dir / "sequences" / "test")
    assert max(train.column("ts").to_pylist()) < b["valid_start_ms"] <= b["test_start_ms"] <= min(test.column("ts").to_pylist())


def test_profile_counts_the_prepared_requests(prep_dir):
    summary = json.loads((prep_dir / "summary.json").read_text())
    profile = summary["profile"]
    assert profile["requests"] == sum(summary["sequences"].values())
    train = read(prep_dir / "sequences" / "train")
    assert profile["n"]["max"] >= max(train.column("n").to_pylist())
    first_slot = np.mean([c[0] for c in train.column("click").to_pylist()])
    assert 0 < profile["ctr_by_slot"][0] and abs(profile["ctr_by_slot"][0] - first_slot) < 0.05


def test_sequences_match_the_raw_logs(prep_dir, sim_dir):
    """One request, followed from the raw rows to its sequence record."""
    seq = read(prep_dir / "sequences" / "train").slice(0, 1).to_pylist()[0]
    raw = pq.read_table(sim_dir / "logs").filter(pa.compute.equal(pa.compute.field("request_id"), seq["request_id"])).to_pylist()
    raw.sort(key=lambda r: r["upstream_rank"])
    assert seq["item_id"] == [r["item_id"] for r in raw]
    shown = sorted((r for r in raw if r["position"] is not None), key=lambda r: r["position"])
    assert [seq["item_id"][i] for i in seq["exposure"]] == [r["item_id"] for r in shown]
    assert seq["click"] == [float(r["click"]) for r in shown]
    spec = FeatureSpec.load(prep_dir / "features.json")
    F = len(spec.num_cols)
    num = np.array(seq["num"]).reshape(seq["m"], F)
    j = spec.num_cols.index("num_quality")
    expect = (np.array([r["num_quality"] for r in raw]) - spec.mean[j]) / spec.std[j]
    assert np.allclose(num[:, j], expect, atol=1e-5)
    c = spec.cat_cols.index("cat_category")
    cats = np.array(seq["cat"]).reshape(seq["m"], len(spec.cat_cols))[:, c]
    assert list(cats) == [spec.vocab["cat_category"].get(str(r["cat_category"]), 1) for r in raw]


def test_pairs_follow_eq7(prep_dir):
    pairs = read(prep_dir / "pairs" / "train")
    assert pairs.num_rows > 0
    for rec in pairs.slice(0, 50).to_pylist():
        assert rec["loser"] == rec["exposure"] and rec["winner"] != rec["loser"]
        assert sorted(rec["winner"]) == sorted(rec["loser"])
        clicked = [i for i, c in zip(rec["exposure"], rec["click"]) if c > 0]
        assert rec["winner"][0] in clicked  # Eq. 7 with gamma=alpha=1 puts a clicked item first


def test_vocab_saved_with_oov_and_padding(prep_dir):
    spec = FeatureSpec.load(prep_dir / "features.json")
    assert spec.cat_cols == ["cat_category", "cat_creator", "cat_hour", "cat_series", "cat_user_segment"]
    for c in spec.cat_cols:
        assert min(spec.vocab[c].values()) == 2  # 0 = padding, 1 = out of vocabulary
    assert spec.encode_cat("cat_category", ["never-seen", None]).tolist() == [1, 1]


def _same_rows(a: pa.Table, b: pa.Table) -> None:
    """Equal request for request (sorted by request id); float columns to float32 precision (the
    standardisation's sums run in another order)."""
    a, b = a.sort_by("request_id"), b.sort_by("request_id")
    assert a.schema == b.schema and a.num_rows == b.num_rows
    for name in a.column_names:
        x, y = a.column(name).combine_chunks(), b.column(name).combine_chunks()
        if pa.types.is_list(x.type) and pa.types.is_floating(x.type.value_type):
            assert x.offsets.equals(y.offsets), name
            np.testing.assert_allclose(x.flatten().to_numpy(), y.flatten().to_numpy(), rtol=1e-5, atol=1e-6)
        else:
            assert x.equals(y), name


def test_sliced_preparation_equals_one_slice(ray_cluster, tmp_path, sim_dir, prep_dir):
    """Logs larger than ``slice_mb`` are hash-partitioned on disk into slices of requests, each
    grouped by a task of its own: the same prepared data, request for request, as one slice (the
    session's prep_dir: these logs are ~15 MB), and the staging area is gone afterwards."""
    from jobs import prepare

    summary = prepare.main(["--logs", str(sim_dir / "logs"), "--out", str(tmp_path / "sliced"),
                            "valid_days=1", "test_days=1", "slice_mb=4"])
    reference = json.loads((prep_dir / "summary.json").read_text())
    assert reference["slices"] == 1 and summary["slices"] >= 3
    for key in ("rows_read", "requests_read", "sequences", "pairs", "quarantined_by_reason", "split", "profile"):
        assert summary[key] == reference[key], key
    for sub, split in [("sequences", s) for s in ("train", "valid", "test")] + [("pairs", "train"), ("pairs", "valid")]:
        _same_rows(read(tmp_path / "sliced" / sub / split), read(prep_dir / sub / split))
    _same_rows(read(tmp_path / "sliced" / "quarantine"), read(prep_dir / "quarantine"))
    spec, ref = (FeatureSpec.load(d / "features.json") for d in (tmp_path / "sliced", prep_dir))
    assert spec.vocab == ref.vocab
    np.testing.assert_allclose(spec.mean, ref.mean, rtol=1e-9)
    np.testing.assert_allclose(spec.std, ref.std, rtol=1e-9)
    assert not (tmp_path / "sliced" / "_staging").exists()


def test_column_map_and_string_ids(ray_cluster, tmp_path, sim_dir):
    """A team's logs with other names, string ids and a timestamp ts, mapped by a dataset config;
    a randomisation bucket marked by a bool column of its own name, explored requests by ``explored``."""
    from jobs import prepare

    table = pq.read_table(next((sim_dir / "logs").glob("*.parquet"))).slice(0, 200 * 30)
    renamed = table.rename_columns([{"request_id": "req", "upstream_rank": "rank"}.get(c, c) for c in table.column_names])
    renamed = renamed.set_column(renamed.schema.get_field_index("req"), "req",
                                 pa.compute.cast(renamed.column("req"), pa.string()))
    renamed = renamed.set_column(renamed.schema.get_field_index("ts"), "ts",
                                 pa.compute.cast(renamed.column("ts"), pa.timestamp("ms")))
    request_ids = renamed.column("req").to_numpy(zero_copy_only=False)
    bucket = {r for r in set(request_ids) if int(r) % 4 == 0}  # every 4th request was randomised
    renamed = renamed.append_column("in_bucket", pa.array([r in bucket for r in request_ids]))
    explored = {r for r in set(request_ids) if int(r) % 5 == 1}  # sampled by the endpoint, as it exports them
    renamed = renamed.append_column("explored", pa.array([r in explored for r in request_ids]))
    (tmp_path / "logs").mkdir()
    pq.write_table(renamed, tmp_path / "logs" / "part.parquet")
    cfg = tmp_path / "dataset.yaml"
    cfg.write_text("column_map:\n  req: request_id\n  rank: upstream_rank\n  in_bucket: randomized\n")
    summary = prepare.main(["--logs", str(tmp_path / "logs"), "--out", str(tmp_path / "out"),
                            "--config", str(cfg), "valid_days=1", "test_days=1"])
    assert summary["requests_read"] == 200
    seqs = read(tmp_path / "out" / "sequences" / "train")
    assert pa.types.is_string(seqs.schema.field("request_id").type)
    everything = read(tmp_path / "out" / "sequences")
    marked = {r for r, flag in zip(everything.column("request_id").to_pylist(),
                                   everything.column("randomized").to_pylist()) if flag}
    quarantined = set(read(tmp_path / "out" / "quarantine").column("request_id").to_pylist())
    assert marked == bucket - quarantined and summary["profile"]["randomized_requests"] == len(marked)
    sampled = {r for r, flag in zip(everything.column("request_id").to_pylist(),
                                    everything.column("explored").to_pylist()) if flag}
    assert sampled == explored - quarantined
    # the one-process Polars reference (benchmarks/prepare_polars.py) reads the same messy logs alike
    from benchmarks.prepare_polars import differences
    from benchmarks.prepare_polars import main as polars_prepare

    polars_prepare(["--logs", str(tmp_path / "logs"), "--out", str(tmp_path / "polars"), "--config", str(cfg),
                    "valid_days=1", "test_days=1"])
    assert differences(tmp_path / "polars", tmp_path / "out") == []


def test_the_one_process_polars_reference_writes_the_same_outputs(tmp_path, sim_dir, prep_dir):
    """benchmarks/prepare_polars.py, what jobs.prepare is measured against, prepares the session's
    logs into the same tables, vocabularies and standardisation, in one bucket and in three."""
    from benchmarks.prepare_polars import differences
    from benchmarks.prepare_polars import main as polars_prepare

    for buckets in (1, 3):
        out = tmp_path / f"buckets{buckets}"
        polars_prepare(["--logs", str(sim_dir / "logs"), "--out", str(out), "--buckets", str(buckets),
                        "valid_days=1", "test_days=1"])
        assert differences(out, prep_dir) == []
        assert json.loads((out / "summary.json").read_text())["quarantined"] > 0  # the checks had work to do


def test_sliced_pairs_leave_the_randomisation_bucket_out(ray_cluster, tmp_path, sim_dir):
    """The pairs of the sliced path (read back from the written sequences) skip randomized
    requests as the one-slice path does: a random order is nothing to imitate."""
    from gref.data.pairs import add_pairs
    from jobs import prepare

    (tmp_path / "logs").mkdir()
    for i, path in enumerate(sorted((sim_dir / "logs").glob("*.parquet"))):
        table = pq.read_table(path)
        in_bucket = pa.compute.equal(pa.compute.bit_wise_and(table.column("request_id"), 3), 0)  # every 4th request
        pq.write_table(table.append_column("randomized", pa.compute.cast(in_bucket, pa.int8())),
                       tmp_path / "logs" / f"part-{i}.parquet")
    summary = prepare.main(["--logs", str(tmp_path / "logs"), "--out", str(tmp_path / "out"),
                            "valid_days=1", "test_days=1", "slice_mb=4"])
    assert summary["slices"] >= 3 and summary["profile"]["randomized_requests"] > 0
    for split in ("train", "valid"):
        seqs, pairs = read(tmp_path / "out" / "sequences" / split), read(tmp_path / "out" / "pairs" / split)
        assert pairs.num_rows and not any(pairs.column("randomized").to_pylist())
        everything = add_pairs(seqs, 1.0, 1.0, {"click": 1.0})  # the bucket's random orders would give pairs too
        assert any(everything.column("randomized").to_pylist())
