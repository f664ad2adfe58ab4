"""Raw request logs -> training data, on Ray Data.

    python -m jobs.prepare --logs DIR --out OUT [--config dataset.yaml] [key=value ...]

Reads Parquet logs (raw-log contract; other column names via ``column_map``), validates the
schema (a missing required column exits non-zero naming it), groups rows by request,
quarantines inconsistent requests with a reason code, splits train/valid/test by time and
writes:
  OUT/sequences/{train,valid,test}/  one record per request (model-ready, see gref.data)
  OUT/pairs/{train,valid}/           Rerank-DPO winner/loser sequences (Eq. 7)
  OUT/quarantine/                    rejected requests: reason, detail, their raw rows
  OUT/features.json                  feature standardisation + categorical vocabularies
  OUT/summary.json                   counts (requests read = sequences + quarantined), the split
                                     and the data profile (m, n, CTR by slot)

Real logs: timestamps in seconds are detected and scaled (ts_unit), too few calendar days for
the day split switch to a split by time quantiles (split), a split that would be empty stops
here naming the option, and the longest list sets the model's length (summary profile).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from ray.data.context import ShuffleStrategy
from ray.data.expressions import col

from gref.cli import log, parser, print_json, resolve_config
from gref.config import ConfigError, to_dict
from gref.data.features import FeatureSpec, merge_stats, partial_stats
from gref.data.pairs import add_pairs
from gref.data.profile import choose_split, merge_profiles, partial_profile, profile_lines, ts_scale
from gref.data.schema import (
    DatasetConfig,
    SchemaError,
    canonical_schema,
    feature_columns,
)
from gref.data.sequences import build_sequences
from gref.ray_utils import data_context, init_ray

SPLITS = ("train", "valid", "test")


def find_log_files(logs: str | Path) -> list[str]:
    root = Path(logs)
    files = [str(root)] if root.is_file() else sorted(str(p) for p in root.rglob("*.parquet"))
    if not files:
        raise SchemaError(f"no Parquet files under {root}")
    return files


def normalize(batch: pa.Table, mapping: dict[str, str], buckets: int, item_id_feature: bool) -> pa.Table:
    """Rename to canonical names, make ts int64 ms, add the ``_bucket`` groupby key (and the
    item id as a categorical feature when asked)."""
    batch = batch.select(list(mapping)).rename_columns([mapping[c] for c in mapping])
    if item_id_feature:
        batch = batch.append_column("cat_item_id", batch.column("item_id"))
    ts = batch.column("ts")
    if pa.types.is_timestamp(ts.type):
        ts = pc.cast(pc.cast(ts, pa.timestamp("ms", tz=ts.type.tz)), pa.int64())
        batch = batch.set_column(batch.schema.get_field_index("ts"), "ts", ts)
    keys = batch.column("request_id").to_pandas()
    bucket = pd.util.hash_array(keys.astype(str).to_numpy() if keys.dtype == object else keys.to_numpy()) % buckets
    return batch.append_column("_bucket", pa.array(bucket.astype(np.int64)))


def _to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def build_group(batch: pa.Table, num_cols, cat_cols, max_candidates) -> pa.Table:
    """One hash bucket of complete requests -> its sequence and quarantine tables.

    map_groups returns one table, and the two outputs have different schemas, so each bucket
    returns one row holding both as Arrow IPC streams (plus its row count and max ts).
    """
    seqs, quarantine = build_sequences(batch.drop_columns(["_bucket"]), num_cols, cat_cols,
                                       boundaries=(0, 0), max_candidates=max_candidates)
    ts = seqs.column("ts").combine_chunks().cast(pa.int64())
    return pa.table({"sequences": pa.array([_to_ipc(seqs)], pa.binary()),
                     "quarantine": pa.array([_to_ipc(quarantine)], pa.binary()),
                     "rows": [batch.num_rows],
                     "ts": pa.array([ts.to_numpy(zero_copy_only=False)], pa.list_(pa.int64()))})


def unpack(batch: pa.Table, kind: str) -> pa.Table:
    tables = [pa.ipc.open_stream(b.as_py()).read_all() for b in batch.column(kind)]
    return pa.concat_tables(tables)


def assign_split(batch: pa.Table, boundaries: tuple[int, int], scale: int) -> pa.Table:
    ts = batch.column("ts").to_numpy().astype(np.int64) * scale
    split = np.where(ts >= boundaries[1], "test", np.where(ts >= boundaries[0], "valid", "train"))
    batch = batch.set_column(batch.schema.get_field_index("ts"), "ts", pa.array(ts))
    return batch.set_column(batch.schema.get_field_index("split"), "split", pa.array(split.astype(str)))


def stats_batch(batch: pa.Table, num_cols, cat_cols) -> pa.Table:
    """One block's feature statistics (train rows) and data profile (all rows), as JSON: one pass."""
    train = batch.filter(pc.equal(batch.column("split"), "train"))
    stats = partial_stats(train, num_cols, cat_cols)
    payload = {k: np.asarray(stats[k]).tolist() for k in ("count", "sum", "sumsq")}
    payload["cats"] = {c: dict(counter) for c, counter in stats["cats"].items()}
    return pa.table({"stats": [json.dumps(payload)], "profile": [json.dumps(partial_profile(batch))]})


def _stats_from_json(text: str) -> dict:
    stats = json.loads(text)
    for k in ("count", "sum", "sumsq"):
        stats[k] = np.asarray(stats[k], dtype=np.float64)
    stats["cats"] = {c: Counter(v) for c, v in stats["cats"].items()}
    return stats


def count_rows(path: Path) -> int:
    return pads.dataset(str(path), format="parquet").count_rows() if path.exists() else 0


def run(logs: str, out: str, cfg: DatasetConfig) -> dict:
    import ray

    start = time.time()
    out_dir = Path(out).resolve()
    files = find_log_files(logs)
    schema = pads.dataset(files, format="parquet").schema
    mapping = canonical_schema(schema, cfg)
    canonical = list(mapping.values())
    if cfg.item_id_feature:
        if "cat_item_id" in canonical:
            raise SchemaError("item_id_feature=true, but the logs already have a cat_item_id column")
        canonical.append("cat_item_id")
    num_cols, cat_cols = feature_columns(canonical)
    fixed = FeatureSpec.load(cfg.features) if cfg.features else None
    if fixed is not None:  # the model's features, nothing else: its spec decides what it reads
        missing = sorted(set(fixed.num_cols + fixed.cat_cols) - set(num_cols + cat_cols))
        if missing:
            raise SchemaError(f"features={cfg.features}: the logs lack the feature column(s) {missing}")
        num_cols, cat_cols = list(fixed.num_cols), list(fixed.cat_cols)
    log("prepare", f"{len(files)} file(s), {len(num_cols)} numeric and {len(cat_cols)} categorical features")

    try:
        shuffle = ShuffleStrategy(cfg.shuffle_strategy)
    except ValueError:
        raise ConfigError(f"shuffle_strategy: '{cfg.shuffle_strategy}' is not one of "
                          f"{', '.join(s.value for s in ShuffleStrategy)}") from None
    init_ray()
    ctx = data_context()
    ctx.execution_options.preserve_order = True
    ctx.default_hash_shuffle_parallelism = cfg.shuffle_partitions
    ctx.shuffle_strategy = shuffle
    rows = ray.data.read_parquet(files).select_columns(list(mapping)).map_batches(
        normalize, batch_format="pyarrow", fn_kwargs={"mapping": mapping, "buckets": cfg.buckets,
                                                  "item_id_feature": cfg.item_id_feature})
    grouped = rows.groupby("_bucket", num_partitions=cfg.shuffle_partitions).map_groups(
        build_group, batch_format="pyarrow",
        fn_kwargs={"num_cols": num_cols, "cat_cols": cat_cols, "max_candidates": cfg.max_candidates},
    ).materialize()
    meta = grouped.select_columns(["rows", "ts"]).to_pandas()
    rows_read = int(meta["rows"].sum())
    stage_end = {"group": time.time()}
    log("prepare", f"grouped {rows_read:,} rows into requests ({stage_end['group'] - start:.1f}s)")
    request_ts = np.concatenate([np.asarray(t, dtype=np.int64) for t in meta["ts"]])
    if not len(request_ts):
        raise SchemaError("every request was quarantined: nothing to train on "
                          "(see the quarantine reasons in OUT/quarantine)")
    scale = ts_scale(int(request_ts.max()), cfg.ts_unit)
    if scale != 1:
        log("prepare", f"ts looks like seconds since the epoch (max {request_ts.max():,}); scaled to ms "
                       "(set ts_unit=ms if it really is ms)")
    time_split = choose_split(request_ts * scale, cfg.split, cfg.valid_days, cfg.test_days,
                         cfg.valid_fraction, cfg.test_fraction)
    log("prepare", f"time split {time_split.note}: valid from {pd.Timestamp(time_split.boundaries[0], unit='ms')}, "
                   f"test from {pd.Timestamp(time_split.boundaries[1], unit='ms')}")
    sequences = grouped.map_batches(unpack, batch_format="pyarrow", fn_kwargs={"kind": "sequences"}
                                    ).map_batches(assign_split, batch_format="pyarrow",
                                                  fn_kwargs={"boundaries": time_split.boundaries, "scale": scale})
    quarantine = grouped.map_batches(unpack, batch_format="pyarrow", fn_kwargs={"kind": "quarantine"})
    parts = sequences.map_batches(stats_batch, batch_format="pyarrow", batch_size=None,
                                  fn_kwargs={"num_cols": num_cols, "cat_cols": cat_cols}).take_all()
    profile = merge_profiles([json.loads(r["profile"]) for r in parts])
    spec = fixed or FeatureSpec.fit(merge_stats([_stats_from_json(r["stats"]) for r in parts]), num_cols, cat_cols,
                                    cfg.min_category_count)
    encoded = sequences.map_batches(spec.encode, batch_format="pyarrow").materialize()
    stage_end["stats_encode"] = time.time()
    log("prepare", f"features {'of ' + cfg.features if fixed else 'fitted on train'} and encoded "
                   f"({time.time() - start:.1f}s)")

    for sub in ("sequences", "pairs", "quarantine"):
        shutil.rmtree(out_dir / sub, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec.save(out_dir / "features.json")
    for split in SPLITS:
        part = encoded.filter(expr=col("split") == split)  # Arrow-native predicate
        part.write_parquet(str(out_dir / "sequences" / split))
        if split != "test":
            part.map_batches(add_pairs, batch_format="pyarrow", fn_kwargs={
                "alpha": cfg.alpha, "gamma": cfg.gamma, "weights": cfg.feedback_weights,
            }).write_parquet(str(out_dir / "pairs" / split))
    quarantine.write_parquet(str(out_dir / "quarantine"))
    stage_end["write"] = time.time()

    reasons = Counter()
    if count_rows(out_dir / "quarantine"):
        reasons.update(pads.dataset(str(out_dir / "quarantine")).to_table(columns=["reason"])
                       .column("reason").to_pylist())
    seq_counts = {s: count_rows(out_dir / "sequences" / s) for s in SPLITS}
    summary = {
        "logs": str(Path(logs).resolve()),
        "files": len(files),
        "rows_read": rows_read,
        "requests_read": sum(seq_counts.values()) + sum(reasons.values()),
        "sequences": seq_counts,
        "pairs": {s: count_rows(out_dir / "pairs" / s) for s in ("train", "valid")},
        "quarantined": sum(reasons.values()),
        "quarantined_by_reason": dict(sorted(reasons.items())),
        "split": {"how": time_split.how, "note": time_split.note, "ts_unit": "s" if scale == 1000 else "ms",
                  "valid_start_ms": time_split.boundaries[0], "test_start_ms": time_split.boundaries[1]},
        "profile": profile,
        "features": {"num": num_cols, "cat": cat_cols, "cat_sizes": spec.cat_sizes},
        "config": to_dict(cfg),
        "seconds": round(time.time() - start, 2),
        "stage_seconds": {stage: round(end - begin, 2) for (stage, end), begin
                          in zip(stage_end.items(), [start, *stage_end.values()])},
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    for line in profile_lines(profile, seq_counts, summary["quarantined"]):
        log("prepare", line)
    if mlflow_active():
        import mlflow
        mlflow.log_dict(summary, "data/summary.json")
        mlflow.log_metrics({f"data_{s}_requests": c for s, c in seq_counts.items()}
                           | {"data_quarantined": summary["quarantined"], "data_n_max": profile["n"]["max"]})
    return summary


def mlflow_active() -> bool:
    try:
        import mlflow
    except ImportError:
        return False
    return mlflow.active_run() is not None


def main(argv: list[str] | None = None) -> dict:
    p = parser("jobs.prepare", __doc__)
    p.add_argument("--logs", required=True, help="directory (or file) of raw-log Parquet")
    p.add_argument("--out", required=True, help="output directory")
    args = p.parse_args(argv)
    cfg = resolve_config(DatasetConfig, args)
    try:
        summary = run(args.logs, args.out, cfg)
    except SchemaError as err:
        sys.exit(f"schema error: {err}")
    except ConfigError as err:
        sys.exit(f"config error: {err}")
    log("prepare", "done")
    print_json({k: summary[k] for k in ("requests_read", "sequences", "pairs", "quarantined",
                                        "quarantined_by_reason", "seconds")})
    return summary


if __name__ == "__main__":
    main()
