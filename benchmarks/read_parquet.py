"""What a Train run pays to read its prepared split: Ray Data's two Parquet readers side by side
(``DataContext.use_datasource_v2``; 2.60's default is V2), on the same files, in one Ray session,
alternating so both see the same machine (prints JSON).

    python -m benchmarks.read_parquet [--requests 3000,40000] [--repeats 5] [--workdir /tmp/gref-bench-read]

Each size is simulated and prepared in one process (benchmarks.prepare's plain version), then its
train split is read with ``ray.data.read_parquet(...).materialize()`` -- what gref.train.runner
does before every run -- ``repeats`` times per reader after one warm-up read each. Both readers
must return the same rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import pyarrow as pa


def prepared_train_split(requests: int, workdir: Path) -> Path:
    """A directory holding the encoded train split of ``requests`` simulated requests."""
    from benchmarks.prepare import plain_prepare
    from jobs import simulate

    root = workdir / f"r{requests}"
    split = root / "train"
    if not split.exists():
        shutil.rmtree(root, ignore_errors=True)
        simulate.main(["--requests", str(requests), "--seed", "0", "--out", str(root / "sim")])
        plain_prepare(root / "sim" / "logs", root / "plain")
        split.mkdir()
        (root / "plain" / "sequences-train.parquet").rename(split / "part-0.parquet")
    return split


def timed_read(path: Path, v2: bool) -> tuple[float, object]:
    import ray

    from gref.ray_utils import data_context

    data_context(whole_split_reads=not v2)
    start = time.perf_counter()
    ds = ray.data.read_parquet(str(path), num_cpus=0.1).materialize()  # as gref.train.runner reads
    return time.perf_counter() - start, ds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", default="3000,40000", help="comma-separated sizes (requests simulated)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--workdir", default="/tmp/gref-bench-read")
    args = p.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from gref.ray_utils import init_ray

    workdir = Path(args.workdir)
    splits = {int(n): prepared_train_split(int(n), workdir) for n in args.requests.split(",")}
    init_ray(num_cpus=os.cpu_count(), include_dashboard=False)
    results = {}
    for n, path in splits.items():
        rows = {}
        for v2 in (False, True):  # one warm-up read each (the first read of a session starts worker processes)
            _, ds = timed_read(path, v2)
            rows[v2] = ds.to_arrow_refs()
        v1_table, v2_table = (ray.get(rows[v2]) for v2 in (False, True))
        same = pa.concat_tables(v1_table).sort_by("request_id").equals(pa.concat_tables(v2_table).sort_by("request_id"))
        seconds = {"v1": [], "v2": []}
        for _ in range(args.repeats):
            for v2 in (False, True):
                seconds["v2" if v2 else "v1"].append(timed_read(path, v2)[0])
        med = {k: statistics.median(v) for k, v in seconds.items()}
        results[str(n)] = {"train_rows": sum(t.num_rows for t in v1_table), "same_rows": same,
                           "seconds_median": {k: round(v, 3) for k, v in med.items()},
                           "seconds": {k: [round(x, 3) for x in v] for k, v in seconds.items()},
                           "v2_over_v1": round(med["v2"] / med["v1"], 2)}
    print(json.dumps({"cpus": os.cpu_count(), "repeats": args.repeats, "ray": ray.__version__,
                      "sizes": results}, indent=2))


if __name__ == "__main__":
    main()
