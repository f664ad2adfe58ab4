"""Raw request logs -> training data, on Ray Data (``python -m jobs.prepare`` runs it).

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

Memory grows far slower than the logs (6.0 GB at 1M requests, 9.1 GB at 10M; the in-memory
script fails at 1M: benchmarks.prepare): Ray Data first writes the rows hash-partitioned
by request into slices of about ``slice_mb`` each (one streaming pass, OUT/_staging), then one
task per slice groups its requests in memory (the same ``build_sequences`` as a single process
would run), and the feature statistics, encoding and the per-split writes stream from the
staged sequences. Logs that fit one slice are prepared whole in one task's memory instead
(``prepare_in_memory``: the same output, without the passes over staged data).

Real logs: timestamps in seconds are detected and scaled (ts_unit), too few calendar days for
the day split switch to a split by time quantiles (split), a split that would be empty stops
here naming the option, and the longest list sets the model's length (summary profile).
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from ray.data.datasource import Partitioning

from gref.cli import log
from gref.config import ConfigError, to_dict
from gref.data.features import FeatureSpec, merge_stats, partial_stats
from gref.data.pairs import imitation_pairs
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
STAGED_ROW_GROUP = 20_000  # requests per row group of the staged and written sequences (what readers split on)
SLICE_MEMORY = 4  # a slice task's memory request / its raw rows' size (measured peak ~3.4x: rows + grouping)
RAW_ROW_GROUP = 100_000  # rows per row group of the partitioned raw rows, at most
RAW_WRITE_BUFFER = 2**29  # bytes a partitioning write task may buffer across all slices (row groups being filled)


def find_log_files(logs: str | Path) -> list[str]:
    root = Path(logs)
    files = [str(root)] if root.is_file() else sorted(str(p) for p in root.rglob("*.parquet"))
    if not files:
        raise SchemaError(f"no Parquet files under {root}")
    return files


def normalize(batch: pa.Table, mapping: dict[str, str], slices: int, item_id_feature: bool) -> pa.Table:
    """Rename to canonical names, make ts int64 ms, add the ``_slice`` of each row's request (a
    hash of request_id; none for one slice) and the item id as a categorical feature when asked."""
    batch = batch.select(list(mapping)).rename_columns([mapping[c] for c in mapping])
    if item_id_feature:
        batch = batch.append_column("cat_item_id", batch.column("item_id"))
    ts = batch.column("ts")
    if pa.types.is_timestamp(ts.type):
        ts = pc.cast(pc.cast(ts, pa.timestamp("ms", tz=ts.type.tz)), pa.int64())
        batch = batch.set_column(batch.schema.get_field_index("ts"), "ts", ts)
    if slices == 1:  # every row in the one slice: nothing to hash
        return batch
    keys = batch.column("request_id").to_pandas()
    hashed = pd.util.hash_array(keys.astype(str).to_numpy() if keys.dtype == object else keys.to_numpy())
    return batch.append_column("_slice", pa.array((hashed % slices).astype(np.int64)))


def raw_size(files: list[str], columns: list[str]) -> tuple[int, int]:
    """(bytes, rows) of ``columns`` of the Parquet files once read into Arrow, from their footers:
    rows x the type's width for fixed-width columns, the Parquet size (encoded, uncompressed) plus
    offsets for strings (Parquet's own sizes are after dictionary encoding: far below Arrow's)."""
    total = rows = 0
    for f in files:
        parquet = pq.ParquetFile(f)
        meta, schema = parquet.metadata, parquet.schema_arrow
        rows += meta.num_rows
        for name in columns:
            try:
                total += meta.num_rows * schema.field(name).type.bit_width // 8
            except ValueError:  # variable width
                total += 4 * meta.num_rows + sum(
                    meta.row_group(g).column(c).total_uncompressed_size for g in range(meta.num_row_groups)
                    for c in range(meta.num_columns) if meta.row_group(g).column(c).path_in_schema == name)
    return total, rows


def group_slice(row: dict, num_cols: list[str], cat_cols: list[str], max_candidates: int, staging: str) -> dict:
    """One slice of complete requests (its partition of staging/raw) -> staging/sequences/part-<slice>.parquet
    and staging/quarantine/part-<slice>.parquet; returns its row count and request timestamps."""
    part, root = row["slice"], Path(staging)
    if not (root / "raw" / f"_slice={part}").exists():  # no request hashed here
        return {"slice": part, "rows": 0, "ts": b""}
    table = pads.dataset(str(root / "raw" / f"_slice={part}"), format="parquet").to_table()
    seqs, quarantine = build_sequences(table, num_cols, cat_cols, boundaries=(0, 0), max_candidates=max_candidates)
    pq.write_table(seqs, root / "sequences" / f"part-{part:05d}.parquet", row_group_size=STAGED_ROW_GROUP)
    if quarantine.num_rows:
        pq.write_table(quarantine, root / "quarantine" / f"part-{part:05d}.parquet")
    ts = seqs.column("ts").to_numpy(zero_copy_only=False).astype(np.int64)
    return {"slice": part, "rows": table.num_rows, "ts": ts.tobytes()}


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


def time_split_of(request_ts: np.ndarray, cfg: DatasetConfig):
    """(ts scale to ms, the train/valid/test split) of the valid requests' timestamps."""
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
    return scale, time_split


def prepare_in_memory(files: list[str], mapping: dict[str, str], cfg: DatasetConfig, num_cols: list[str],
                      cat_cols: list[str], fixed: FeatureSpec | None, staging: str) -> dict:
    """Logs that fit one slice, in one task's memory: read once, grouped, split, standardised,
    written to ``staging``/out-{sequences,pairs}/split=<split> and ``staging``/quarantine -- what
    the sliced path writes, without its passes over staged data and its Ray Data start-ups."""
    root = Path(staging)
    table = normalize(pads.dataset(files, format="parquet").to_table(columns=list(mapping)), mapping, 1,
                      cfg.item_id_feature)
    seqs, quarantine = build_sequences(table, num_cols, cat_cols, boundaries=(0, 0), max_candidates=cfg.max_candidates)
    if quarantine.num_rows:
        pq.write_table(quarantine, root / "quarantine" / "part-00000.parquet")
    group_end = time.time()
    log("prepare", f"grouped {table.num_rows:,} rows into requests in one task")
    scale, time_split = time_split_of(seqs.column("ts").to_numpy(zero_copy_only=False).astype(np.int64), cfg)
    seqs = assign_split(seqs, time_split.boundaries, scale)
    train = seqs.filter(pc.equal(seqs.column("split"), "train"))
    spec = fixed or FeatureSpec.fit(merge_stats([partial_stats(train, num_cols, cat_cols)]), num_cols, cat_cols,
                                    cfg.min_category_count)
    profile = merge_profiles([partial_profile(seqs)])
    stats_end = time.time()
    encoded = spec.encode(seqs)
    pairs = imitation_pairs(encoded.filter(pc.not_equal(encoded.column("split"), "test")), cfg.alpha, cfg.gamma,
                            cfg.feedback_weights)
    for sub, written in (("sequences", encoded), ("pairs", pairs)):
        for split in SPLITS:
            part = written.filter(pc.equal(written.column("split"), split)).drop_columns(["split"])
            if part.num_rows:
                (root / f"out-{sub}" / f"split={split}").mkdir(parents=True)
                pq.write_table(part, root / f"out-{sub}" / f"split={split}" / "part-00000.parquet",
                               row_group_size=STAGED_ROW_GROUP)
    return {"rows_read": table.num_rows, "scale": scale, "split": time_split, "profile": profile, "spec": spec,
            "group_end": group_end, "stats_end": stats_end}


def prepare_sliced(files: list[str], mapping: dict[str, str], cfg: DatasetConfig, num_cols: list[str],
                   cat_cols: list[str], fixed: FeatureSpec | None, staging: Path, size: int, rows: int,
                   slices: int, start: float) -> dict:
    """Logs of several slices, on Ray Data: the rows partitioned by request into ``slices`` on
    disk, a task per slice groups its requests, statistics / encoding / writes stream from the
    staged sequences. Writes what ``prepare_in_memory`` writes, returns what it returns."""
    import ray

    ctx = data_context()
    ctx.execution_options.preserve_order = True
    # rows -> their request's slice, on disk: streamed, no shuffle through memory. Whole blocks, and
    # row groups of many rows: the writer splits every batch it gets across all slices, and written
    # as they came (~700 rows per row group) 500k requests took 28 s and 2.8x the logs' bytes on disk,
    # with 100k-row groups 13 s and 1.5x (46 slices); a write task holds up to a row group per slice,
    # so the groups shrink as the slices grow in number
    group_rows = int(min(RAW_ROW_GROUP, max(10_000, RAW_WRITE_BUFFER / slices / max(size / max(rows, 1), 1))))
    ray.data.read_parquet(files).select_columns(list(mapping)).map_batches(
        normalize, batch_format="pyarrow", batch_size=None,
        fn_kwargs={"mapping": mapping, "slices": slices, "item_id_feature": cfg.item_id_feature},
    ).write_parquet(str(staging / "raw"), partition_cols=["_slice"], row_group_size=group_rows)
    log("prepare", f"{size / 2**30:.1f} GiB of rows partitioned into {slices} slices of requests "
                   f"({time.time() - start:.1f}s)")
    meta = ray.data.from_items([{"slice": i} for i in range(slices)], override_num_blocks=slices).map(
        # as many slices at once as the node's memory holds (a larger slice_mb cannot ask for more than there is)
        group_slice, num_cpus=1, memory=int(min(SLICE_MEMORY * size / slices, ray.cluster_resources()["memory"])),
        # a runtime env of their own (merged with the job's) starts fresh worker processes: the idle
        # workers of the partitioning pass keep ~3.5 GB each of freed Arrow memory, which a slice task
        # run in them had on top of its own (5.2 GB per task at 10M requests, 3.2 GB in a fresh one)
        runtime_env={"env_vars": {"GREF_PREPARE_STAGE": "group"}},
        fn_kwargs={"num_cols": num_cols, "cat_cols": cat_cols, "max_candidates": cfg.max_candidates,
                   "staging": str(staging)},
    ).take_all()
    shutil.rmtree(staging / "raw", ignore_errors=True)
    # the staged files (a few per slice) are read by Ray Data's first Parquet reader: 2.60's default
    # lists them in a task of its own first, ~1-2 s per read on one node and 20-35 s on three
    # simulated nodes (this job on 1,500 requests there: 114 -> 76 s; on one node, 40k requests,
    # mean of two: default 45.5 s, first reader 48.8 s, within the noise:
    # benchmarks/results/prepare-staged-reads-cpu.json). The raw scan above keeps the default: the
    # first reader made it ~3x slower (100k requests, one node)
    ctx.use_datasource_v2 = False
    rows_read = sum(m["rows"] for m in meta)
    group_end = time.time()
    log("prepare", f"grouped {rows_read:,} rows into requests ({group_end - start:.1f}s)")
    scale, time_split = time_split_of(np.concatenate([np.frombuffer(m["ts"], dtype=np.int64) for m in meta]), cfg)
    sequences = ray.data.read_parquet(str(staging / "sequences")).map_batches(
        assign_split, batch_format="pyarrow", batch_size=None,
        fn_kwargs={"boundaries": time_split.boundaries, "scale": scale})
    parts = sequences.map_batches(stats_batch, batch_format="pyarrow", batch_size=None,
                                  fn_kwargs={"num_cols": num_cols, "cat_cols": cat_cols}).take_all()
    profile = merge_profiles([json.loads(r["profile"]) for r in parts])
    spec = fixed or FeatureSpec.fit(merge_stats([_stats_from_json(r["stats"]) for r in parts]), num_cols, cat_cols,
                                    cfg.min_category_count)
    stats_end = time.time()
    log("prepare", f"features {'of ' + cfg.features if fixed else 'fitted on train'} ({stats_end - start:.1f}s)")
    encoded = sequences.map_batches(spec.encode, batch_format="pyarrow", batch_size=None)
    encoded.write_parquet(str(staging / "out-sequences"), partition_cols=["split"], row_group_size=STAGED_ROW_GROUP)
    # the pairs from the sequences just written (train and valid), not from ``encoded`` again: Ray Data
    # is lazy, and a second consumer re-ran read -> split -> encode over the staged sequences
    written = [str(staging / "out-sequences" / f"split={s}") for s in SPLITS[:2]
               if (staging / "out-sequences" / f"split={s}").exists()]
    if written:
        ray.data.read_parquet(written, partitioning=Partitioning("hive", base_dir=str(staging / "out-sequences"))
                              ).map_batches(imitation_pairs, batch_format="pyarrow", batch_size=None,
                                            fn_kwargs={"alpha": cfg.alpha, "gamma": cfg.gamma,
                                                       "weights": cfg.feedback_weights},
        ).write_parquet(str(staging / "out-pairs"), partition_cols=["split"], row_group_size=STAGED_ROW_GROUP)
    return {"rows_read": rows_read, "scale": scale, "split": time_split, "profile": profile, "spec": spec,
            "group_end": group_end, "stats_end": stats_end}


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

    if cfg.slice_mb < 1:
        raise ConfigError(f"slice_mb must be >= 1, got {cfg.slice_mb}")
    init_ray()
    size, rows = raw_size(files, list(mapping))
    slices = -(-size // (cfg.slice_mb * 2**20))
    if slices > 1:  # a multiple of the CPUs: the last wave of slice tasks keeps every CPU busy
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        slices = -(-slices // cpus) * cpus
    slices = max(1, slices)
    staging = out_dir / "_staging"  # removed at the end, also when the job stops on an error
    try:
        shutil.rmtree(staging, ignore_errors=True)
        for sub in ("sequences", "quarantine"):
            (staging / sub).mkdir(parents=True)
        if slices == 1:
            task = ray.remote(prepare_in_memory).options(
                num_cpus=1, memory=int(min(SLICE_MEMORY * size, ray.cluster_resources()["memory"])))
            try:
                done = ray.get(task.remote(files, mapping, cfg, num_cols, cat_cols, fixed, str(staging)))
            except ray.exceptions.RayTaskError as err:  # the job's own errors, as if raised here
                if isinstance(err.cause, (SchemaError, ConfigError)):
                    raise err.cause from None
                raise
        else:
            done = prepare_sliced(files, mapping, cfg, num_cols, cat_cols, fixed, staging, size, rows, slices, start)
        for sub, splits in (("sequences", SPLITS), ("pairs", SPLITS[:2])):
            shutil.rmtree(out_dir / sub, ignore_errors=True)
            (out_dir / sub).mkdir()
            for split in splits:
                written = staging / f"out-{sub}" / f"split={split}"
                if written.exists():
                    shutil.move(written, out_dir / sub / split)
                else:  # a split without requests (pairs: without a reordered one): an empty directory
                    (out_dir / sub / split).mkdir()
        spec, time_split, scale, profile = done["spec"], done["split"], done["scale"], done["profile"]
        spec.save(out_dir / "features.json")
    finally:  # the quarantine reaches OUT also when the job stops (every request quarantined: its reasons say why)
        if (staging / "quarantine").exists():
            shutil.rmtree(out_dir / "quarantine", ignore_errors=True)
            shutil.move(staging / "quarantine", out_dir / "quarantine")
        shutil.rmtree(staging, ignore_errors=True)
    rows_read, stage_end = done["rows_read"], {"group": done["group_end"], "stats": done["stats_end"]}
    stage_end["encode_write"] = time.time()

    reasons = Counter()
    if count_rows(out_dir / "quarantine"):
        reasons.update(pads.dataset(str(out_dir / "quarantine")).to_table(columns=["reason"])
                       .column("reason").to_pylist())
    seq_counts = {s: count_rows(out_dir / "sequences" / s) for s in SPLITS}
    summary = {
        "logs": str(Path(logs).resolve()),
        "files": len(files),
        "slices": slices,
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
