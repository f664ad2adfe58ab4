"""The one-process reference of ``jobs.prepare`` (issue 36): what a strong engineer would write on one
machine instead of a Ray Data job -- Polars, no Ray, the same outputs.

    python -m benchmarks.prepare_polars --logs DIR --out DIR [--buckets 4] [key=value ...]

One streaming scan of the logs per hash bucket of requests (``--buckets``: 1 = every row in memory at
once; more = less memory, one more scan of the compressed logs each), one sort by (request,
upstream_rank), the validation as one ``group_by`` of per-request flags, the sequence lists cut from
the sorted columns by their offsets; then the library's own pure functions for what follows
(the time split, feature statistics and encoding, Eq. 7 pairs, the data profile), so what differs
from the job is only who groups the rows and how (``benchmarks.prepare --reference polars`` runs the
two side by side and checks their outputs equal). Writes OUT/{sequences,pairs,quarantine},
features.json and summary.json as the job does; prints the summary as JSON.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from gref.cli import parser, resolve_config
from gref.config import to_dict
from gref.data.features import FeatureSpec, merge_stats, partial_stats
from gref.data.pairs import imitation_pairs
from gref.data.prepare import SPLITS, STAGED_ROW_GROUP, assign_split, find_log_files, time_split_of
from gref.data.profile import merge_profiles, partial_profile
from gref.data.schema import FEEDBACK, OPTIONAL_REQUEST, DatasetConfig, canonical_schema, feature_columns
from gref.data.sequences import REASONS

QUARANTINE_CHUNK = 2_000  # rejected requests turned into Python objects at a time (as gref.data.sequences)


def canonical_arrow_schema(schema: pa.Schema, mapping: dict[str, str], item_id_feature: bool) -> pa.Schema:
    """The Arrow types of the logs' canonical columns as the job sees them (ts as int64 ms): the
    outputs are cast back to these, since Polars has its own string and integer types."""
    fields = [pa.field(dst, schema.field(src).type) for src, dst in mapping.items()]
    fields = [pa.field("ts", pa.int64()) if f.name == "ts" and pa.types.is_timestamp(f.type) else f for f in fields]
    if item_id_feature:
        fields.append(pa.field("cat_item_id", schema.field(next(s for s, d in mapping.items() if d == "item_id")).type))
    return pa.schema(fields)


def scan(files: list[str], mapping: dict[str, str], item_id_feature: bool) -> pl.LazyFrame:
    """The logs with canonical names, ts as int64 ms and the item id as a feature when asked."""
    frame = pl.scan_parquet(files).select([pl.col(src).alias(dst) for src, dst in mapping.items()])
    if frame.collect_schema()["ts"].is_temporal():
        frame = frame.with_columns(pl.col("ts").dt.epoch("ms"))
    if item_id_feature:
        frame = frame.with_columns(pl.col("item_id").alias("cat_item_id"))
    return frame


def reason_flags(columns: list[str], num_cols: list[str], max_candidates: int) -> dict[str, pl.Expr]:
    """Per request, one boolean per reason code of gref.data.sequences.REASONS (a null compares to
    nothing: ``any`` skips it)."""
    position, rank = pl.col("position"), pl.col("upstream_rank")
    exposed = position.is_not_null()
    fb_cols = [c for c in FEEDBACK if c in columns]

    def request_flag(name: str) -> pl.Expr:  # an optional request flag (randomized, explored); absent = 0
        return pl.col(name).cast(pl.Float64).fill_null(0.0) if name in columns else pl.lit(0.0)

    def feedback(name: str) -> pl.Expr:
        return pl.col(name).cast(pl.Float64)

    def duplicated(col: pl.Expr) -> pl.Expr:  # two non-null rows share the value
        return col.drop_nulls().n_unique() < col.count()

    def any_of(exprs: list[pl.Expr]) -> pl.Expr:
        return pl.any_horizontal(exprs) if exprs else pl.lit(False)

    flags = {
        "null_key": any_of([pl.col(c).is_null() for c in ("request_id", "user_id", "ts", "item_id")]).any(),
        "inconsistent_request": (pl.col("user_id").n_unique() > 1) | (pl.col("ts").n_unique() > 1),
        **{f"invalid_{name}": ((request_flag(name) != 0) & (request_flag(name) != 1)).any()
           | (request_flag(name).n_unique() > 1) for name in OPTIONAL_REQUEST},
        "invalid_upstream_rank": (rank.is_null() | (rank < 1)).any(),
        "duplicate_upstream_rank": duplicated(rank),
        "duplicate_item": duplicated(pl.col("item_id")),
        "invalid_position": (position < 1).any(),
        "duplicate_position": duplicated(position),
        "exposed_without_feedback": (exposed & pl.col("click").is_null()).any(),
        "invalid_feedback": any_of([(feedback(c) != 0) & (feedback(c) != 1) for c in fb_cols]).any(),
        "feedback_without_exposure": any_of([position.is_null() & (feedback(c) > 0) for c in fb_cols]).any(),
        "non_finite_feature": any_of([~pl.col(c).cast(pl.Float64).is_finite() for c in num_cols]).any(),
        "no_exposed_item": position.count() == 0,
        "too_many_candidates": pl.len() > max_candidates,
    }
    assert list(flags) == list(REASONS)
    return flags


def build(part: pl.LazyFrame, schema: pa.Schema, num_cols: list[str], cat_cols: list[str],
          max_candidates: int) -> tuple[pa.Table, pa.Table, int]:
    """Rows of complete requests -> (sequences, quarantine, rows read) exactly as
    gref.data.sequences.build_sequences makes them (requests in another order). The rows are
    collected already sorted by (request, upstream_rank, file order): one copy of them in memory."""
    columns = schema.names
    rows = part.with_row_index("_row").sort(
        [pl.col("request_id"), pl.col("upstream_rank").fill_null(0), pl.col("_row")], nulls_last=True,
    ).collect(engine="streaming")
    n_rows = rows.height
    new_request = pl.col("request_id").ne_missing(pl.col("request_id").shift()) | (pl.int_range(pl.len()) == 0)
    rows = rows.with_columns(_g=new_request.cum_sum() - 1)
    flags = reason_flags(columns, num_cols, max_candidates)
    groups = rows.group_by("_g", maintain_order=True).agg(pl.len().alias("_n"), **flags)
    reason = pl.lit("")
    for code in reversed(list(REASONS)):  # the first code that applies wins
        reason = pl.when(pl.col(code)).then(pl.lit(code)).otherwise(reason)
    reasons = groups.select(reason.alias("reason"), "_n")["reason"].to_numpy()
    counts = groups["_n"].to_numpy()
    rows = rows.with_columns(_ok=pl.Series(reasons == "").gather(rows["_g"]))
    bad = rows.filter(~pl.col("_ok"))
    rows = rows.filter(pl.col("_ok"))  # the valid rows; the frame with every row is freed
    quarantine = _quarantine(bad, schema, reasons[reasons != ""], counts[reasons != ""])
    del bad
    return _sequences(rows, schema, num_cols, cat_cols), quarantine, n_rows


def _arrow(frame: pl.DataFrame, names: list[str], schema: pa.Schema) -> pa.Table:
    table = frame.select(names).to_arrow(compat_level=pl.CompatLevel.oldest())
    return table.cast(pa.schema([schema.field(n) for n in names]))


def _sequences(ok: pl.DataFrame, schema: pa.Schema, num_cols: list[str], cat_cols: list[str]) -> pa.Table:
    """The valid requests' records from their rows, sorted by (request, upstream_rank)."""
    g = ok["_g"].to_numpy()
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]]) if len(g) else np.zeros(0, dtype=np.int64)
    m = np.diff(np.r_[starts, len(g)]).astype(np.int32)
    offsets = np.r_[0, np.cumsum(m)].astype(np.int32)

    def lists(values: pa.Array | np.ndarray, offs: np.ndarray) -> pa.Array:
        return pa.ListArray.from_arrays(pa.array(offs, type=pa.int32()), values)

    fb_cols = [c for c in FEEDBACK if c in schema.names]
    first_rows = ok.select(pl.all().gather(starts))
    firsts = _arrow(first_rows, ["request_id", "user_id", "ts"], schema)
    flat = _arrow(ok, ["item_id", *cat_cols], schema)
    num = np.empty((ok.height, len(num_cols)), dtype=np.float32)
    for j, c in enumerate(num_cols):  # a column at a time: one float64 copy of a column at most
        num[:, j] = ok[c].cast(pl.Float64).fill_null(float("nan")).to_numpy()
    cols: dict[str, pa.Array] = {
        "request_id": firsts.column("request_id").combine_chunks(),
        "user_id": firsts.column("user_id").combine_chunks(),
        "ts": firsts.column("ts").combine_chunks(),
        "split": pa.array(np.full(len(starts), "test")),  # gref.data.prepare.assign_split sets it
        "m": pa.array(m),
        "item_id": lists(flat.column("item_id").combine_chunks(), offsets),
        "num_raw": lists(pa.array(num.reshape(-1)), offsets * len(num_cols)),
    }
    del num
    for c in cat_cols:
        cols[c] = lists(flat.column(c).combine_chunks(), offsets)
    # exposure: the exposed rows by (request, position), as indices into the request's candidates
    cand = np.arange(len(g)) - np.repeat(starts, m)
    exposed = ok.with_columns(_cand=pl.Series(cand)).filter(pl.col("position").is_not_null()).sort(["_g", "position"])
    request = np.searchsorted(g[starts], exposed["_g"].to_numpy())  # the request of each exposed row
    n = np.bincount(request, minlength=len(starts)).astype(np.int32)
    exp_offsets = np.r_[0, np.cumsum(n)].astype(np.int32)
    cols["n"] = pa.array(n)
    cols["exposure"] = lists(pa.array(exposed["_cand"].to_numpy().astype(np.int32)), exp_offsets)
    for c in ("click", "like", "long_view"):
        values = (exposed[c].cast(pl.Float64).fill_null(0.0).to_numpy().astype(np.float32) if c in fb_cols
                  else np.zeros(exposed.height, np.float32))
        cols[c] = lists(pa.array(values), exp_offsets)
    for name in OPTIONAL_REQUEST:
        if name in schema.names:
            cols[name] = pa.array(first_rows[name].cast(pl.Float64).fill_null(0.0).to_numpy().astype(np.int8))
    return pa.table(cols)


def _quarantine(bad: pl.DataFrame, schema: pa.Schema, reasons: np.ndarray, counts: np.ndarray) -> pa.Table:
    """One record per rejected request, its raw rows (sorted by upstream_rank) as JSON."""
    out_schema = pa.schema([("request_id", pa.string()), ("reason", pa.string()), ("detail", pa.string()),
                            ("n_rows", pa.int64()), ("raw_rows", pa.string())])
    if not len(reasons):
        return out_schema.empty_table()
    raw = _arrow(bad, schema.names, schema)
    ends = np.cumsum(counts)
    parts = []
    for chunk in np.array_split(np.arange(len(reasons)), -(-len(reasons) // QUARANTINE_CHUNK)):
        first = ends[chunk[0]] - counts[chunk[0]]
        records = raw.slice(first, ends[chunk[-1]] - first).to_pylist()
        parts.append(pa.Table.from_pylist([{
            "request_id": str(records[ends[i] - counts[i] - first]["request_id"]),
            "reason": reasons[i], "detail": REASONS[reasons[i]], "n_rows": int(counts[i]),
            "raw_rows": json.dumps(records[ends[i] - counts[i] - first:ends[i] - first], default=str),
        } for i in chunk], schema=out_schema))
    return pa.concat_tables(parts)


def prepare(logs: str, out: str, cfg: DatasetConfig, buckets: int = 1) -> dict:
    """``jobs.prepare``'s outputs in one process: group and validate a hash bucket of requests at a
    time (staged to OUT/_staging), then split, fit the features, encode and write."""
    start = time.time()
    out_dir = Path(out).resolve()
    files = find_log_files(logs)
    logs_schema = pads.dataset(files, format="parquet").schema
    mapping = canonical_schema(logs_schema, cfg)
    schema = canonical_arrow_schema(logs_schema, mapping, cfg.item_id_feature)
    num_cols, cat_cols = feature_columns(schema.names)
    fixed = FeatureSpec.load(cfg.features) if cfg.features else None
    if fixed is not None:
        num_cols, cat_cols = list(fixed.num_cols), list(fixed.cat_cols)
    shutil.rmtree(out_dir, ignore_errors=True)
    staging = out_dir / "_staging"
    for sub in ("_staging", "quarantine", *(f"sequences/{s}" for s in SPLITS), "pairs/train", "pairs/valid"):
        (out_dir / sub).mkdir(parents=True)
    logs_frame, rows_read, ts, quarantined = scan(files, mapping, cfg.item_id_feature), 0, [], {}
    for b in range(buckets):
        part = logs_frame if buckets == 1 else logs_frame.filter(pl.col("request_id").hash(seed=0) % buckets == b)
        seqs, quarantine, n_rows = build(part, schema, num_cols, cat_cols, cfg.max_candidates)
        rows_read += n_rows
        pq.write_table(seqs, staging / f"part-{b:05d}.parquet", row_group_size=STAGED_ROW_GROUP)
        if quarantine.num_rows:
            pq.write_table(quarantine, out_dir / "quarantine" / f"part-{b:05d}.parquet")
            for r in quarantine.column("reason").to_pylist():
                quarantined[r] = quarantined.get(r, 0) + 1
        ts.append(seqs.column("ts").to_numpy(zero_copy_only=False).astype(np.int64))
    group_end = time.time()
    scale, time_split = time_split_of(np.concatenate(ts), cfg)
    staged = sorted(staging.glob("*.parquet"))
    stats, profiles = [], []
    for path in staged:
        seqs = assign_split(pq.read_table(path), time_split.boundaries, scale)
        stats.append(partial_stats(seqs.filter(pc.equal(seqs.column("split"), "train")), num_cols, cat_cols))
        profiles.append(partial_profile(seqs))
    spec = fixed or FeatureSpec.fit(merge_stats(stats), num_cols, cat_cols, cfg.min_category_count)
    stats_end = time.time()
    counts = {"sequences": dict.fromkeys(SPLITS, 0), "pairs": dict.fromkeys(SPLITS[:2], 0)}
    for b, path in enumerate(staged):
        encoded = spec.encode(assign_split(pq.read_table(path), time_split.boundaries, scale))
        pairs = imitation_pairs(encoded.filter(pc.not_equal(encoded.column("split"), "test")), cfg.alpha, cfg.gamma,
                                cfg.feedback_weights)
        for sub, written in (("sequences", encoded), ("pairs", pairs)):
            for split in counts[sub]:
                table = written.filter(pc.equal(written.column("split"), split)).drop_columns(["split"])
                if table.num_rows:
                    pq.write_table(table, out_dir / sub / split / f"part-{b:05d}.parquet",
                                   row_group_size=STAGED_ROW_GROUP)
                    counts[sub][split] += table.num_rows
    shutil.rmtree(staging)
    spec.save(out_dir / "features.json")
    end = time.time()
    summary = {
        "rows_read": rows_read, "buckets": buckets,
        "requests_read": sum(counts["sequences"].values()) + sum(quarantined.values()),
        "sequences": counts["sequences"], "pairs": counts["pairs"],
        "quarantined": sum(quarantined.values()), "quarantined_by_reason": dict(sorted(quarantined.items())),
        "split": {"how": time_split.how, "note": time_split.note, "ts_unit": "s" if scale == 1000 else "ms",
                  "valid_start_ms": time_split.boundaries[0], "test_start_ms": time_split.boundaries[1]},
        "profile": merge_profiles(profiles),
        "features": {"num": num_cols, "cat": cat_cols, "cat_sizes": spec.cat_sizes},
        "config": to_dict(cfg), "seconds": round(end - start, 2),
        "stage_seconds": {"group": round(group_end - start, 2), "stats": round(stats_end - group_end, 2),
                          "encode_write": round(end - stats_end, 2)},
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


SUMMARY_KEYS = ("rows_read", "requests_read", "sequences", "pairs", "quarantined_by_reason", "split", "profile")


def differences(a: str | Path, b: str | Path) -> list[str]:
    """What differs between two prepared data dirs: the summary's counts, split and profile, every
    table request for request (sorted by request id: the two write requests in other orders;
    floats to float32 precision, since the standardisation's sums run in another order), the
    vocabularies and the standardisation. [] = the same outputs."""
    a, b = Path(a), Path(b)
    found = []
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    found += [f"summary {k}: {sa[k]} != {sb[k]}" for k in SUMMARY_KEYS if sa[k] != sb[k]]
    tables = [f"sequences/{s}" for s in SPLITS] + ["pairs/train", "pairs/valid", "quarantine"]
    for name in tables:
        x, y = (pads.dataset(str(d / name), format="parquet").to_table() if any((d / name).rglob("*.parquet"))
                else None for d in (a, b))
        if x is None or y is None:
            found += [f"{name}: only one side has rows"] if (x is None) != (y is None) else []
            continue
        x, y = x.sort_by("request_id"), y.sort_by("request_id")
        if x.schema != y.schema or x.num_rows != y.num_rows:
            found.append(f"{name}: schema or rows differ ({x.num_rows} vs {y.num_rows})")
            continue
        for col in x.column_names:
            u, v = x.column(col).combine_chunks(), y.column(col).combine_chunks()
            if pa.types.is_list(u.type) and pa.types.is_floating(u.type.value_type):
                same = u.offsets.equals(v.offsets) and np.allclose(
                    u.flatten().to_numpy(), v.flatten().to_numpy(), rtol=1e-5, atol=1e-6, equal_nan=True)
            else:
                same = u.equals(v)
            if not same:
                found.append(f"{name}: column {col} differs")
    fa, fb = (FeatureSpec.load(d / "features.json") for d in (a, b))
    if fa.vocab != fb.vocab:
        found.append("features: vocabularies differ")
    if not (np.allclose(fa.mean, fb.mean, rtol=1e-9) and np.allclose(fa.std, fb.std, rtol=1e-9)):
        found.append("features: standardisation differs")
    return found


def main(argv: list[str] | None = None) -> dict:
    p = parser("benchmarks.prepare_polars", __doc__)  # --config and key=value: a DatasetConfig, as jobs.prepare
    p.add_argument("--logs", required=True, help="raw Parquet logs (file or directory)")
    p.add_argument("--out", required=True, help="output directory (replaced)")
    p.add_argument("--buckets", type=int, default=1, help="hash buckets of requests grouped one at a time")
    args = p.parse_args(argv)
    summary = prepare(args.logs, args.out, resolve_config(DatasetConfig, args), args.buckets)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
