"""Throughput of jobs.prepare on Ray Data vs a plain single-process pyarrow/pandas version of
the same transform, on the same simulated logs, in one run (prints JSON).

    python -m benchmarks.prepare [--requests 100000] [--workdir /tmp/gref-bench-prepare]
        [--shuffle sort_shuffle_pull_based,shuffle_v2]

``--shuffle``: the Ray Data groupby strategies to run side by side (DatasetConfig.shuffle_strategy;
the first is the default); every one must prepare exactly the plain version's requests.

Both call the same library functions (gref.data: build_sequences, FeatureSpec, add_pairs);
they differ only in who runs them: Ray Data (hash-bucket groupby across CPU workers, streamed,
written as Parquet) or one Python process holding the whole table in memory. Ray's figure
excludes ray.init (reported separately); both include reading and writing Parquet.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq


def plain_prepare(logs: Path, out: Path) -> dict:
    """The reference: everything in one process."""
    from gref.data.features import FeatureSpec, partial_stats
    from gref.data.pairs import add_pairs
    from gref.data.schema import DatasetConfig, canonical_schema, feature_columns
    from gref.data.sequences import build_sequences, split_boundaries

    cfg = DatasetConfig()
    table = pads.dataset(str(logs), format="parquet").to_table()
    mapping = canonical_schema(table.schema, cfg)
    num_cols, cat_cols = feature_columns(list(mapping.values()))
    boundaries = split_boundaries(pc.max(table.column("ts")).as_py(), cfg.valid_days, cfg.test_days)
    seqs, quarantine = build_sequences(table.select(list(mapping)), num_cols, cat_cols, boundaries, cfg.max_candidates)
    train = seqs.filter(pc.equal(seqs.column("split"), "train"))
    spec = FeatureSpec.fit(partial_stats(train, num_cols, cat_cols), num_cols, cat_cols)
    encoded = spec.encode(seqs)
    out.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        part = encoded.filter(pc.equal(encoded.column("split"), split))
        pq.write_table(part, out / f"sequences-{split}.parquet")
        if split != "test":
            pq.write_table(add_pairs(part, cfg.alpha, cfg.gamma, cfg.feedback_weights), out / f"pairs-{split}.parquet")
    pq.write_table(quarantine, out / "quarantine.parquet")
    return {"sequences": seqs.num_rows, "quarantined": quarantine.num_rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=100_000)
    p.add_argument("--workdir", default="/tmp/gref-bench-prepare")
    p.add_argument("--shuffle", default="sort_shuffle_pull_based,shuffle_v2",
                   help="comma-separated Ray Data shuffle strategies to measure")
    args = p.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    from jobs import prepare, simulate

    simulate.main(["--requests", str(args.requests), "--out", str(work / "sim"), "--chunk", "25000"])
    logs = work / "sim" / "logs"

    t0 = time.perf_counter()
    plain = plain_prepare(logs, work / "plain")
    plain_s = time.perf_counter() - t0

    import ray

    from gref.data.schema import DatasetConfig
    from gref.ray_utils import init_ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    t0 = time.perf_counter()
    init_ray()
    init_s = time.perf_counter() - t0
    ray_data = {}
    for strategy in args.shuffle.split(","):
        t0 = time.perf_counter()
        summary = prepare.run(str(logs), str(work / f"ray-{strategy}"), DatasetConfig(shuffle_strategy=strategy))
        seconds = time.perf_counter() - t0
        assert sum(summary["sequences"].values()) == plain["sequences"], f"{strategy}: the two implementations disagree"
        assert summary["quarantined"] == plain["quarantined"]
        ray_data[strategy] = {"seconds": round(seconds, 2), "requests_per_s": round(args.requests / seconds),
                              "over_plain": round(plain_s / seconds, 2)}
    print(json.dumps({
        "requests": args.requests, "rows": args.requests * 30, "cpus": ray.cluster_resources().get("CPU"),
        "plain_single_process": {"seconds": round(plain_s, 2), "requests_per_s": round(args.requests / plain_s)},
        "ray_init_seconds": round(init_s, 2),
        "ray_data": ray_data,
    }, indent=2))


if __name__ == "__main__":
    main()
