"""``jobs.prepare`` beside its one-process Polars reference (benchmarks/prepare_polars.py), side by
side on the same logs in one run, alternated (issue 36's targets: the job within 1.3x the
reference's wall time, its peak memory within the bucketed reference's). Prints JSON.

    python -m benchmarks.prepare_vs_polars --requests 200000 [--logs DIR] [--repeats 2] [--buckets 1,4]
        [--slice-mb 1024] [--json out.json]

Each run is a child process (``python -m jobs.prepare`` / ``python -m benchmarks.prepare_polars``)
timed from start to exit -- the job's Ray start-up included, since a user waits for it too -- with
the peak of the summed PSS of it and every process it started (benchmarks.prepare.PeakMemory).
The first repeat's outputs are compared table for table (``prepare_polars.differences``); the run
stops if they differ.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.prepare import PeakMemory
from benchmarks.prepare_polars import differences


def timed(command: list[str]) -> dict:
    """Wall seconds and peak PSS of ``command`` and its descendants."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    t0 = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    with PeakMemory(child.pid) as memory:
        output, _ = child.communicate()
    if child.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{output[-3000:]}")
    peak = memory.summary()
    return {"seconds": round(time.perf_counter() - t0, 2), "peak_pss_gb": peak["peak_pss_gb"],
            "peak_worker_processes": peak["peak_worker_processes"]}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="benchmarks.prepare_vs_polars", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=200_000, help="requests to simulate (ignored with --logs)")
    p.add_argument("--logs", help="raw logs already written (jobs.simulate), else simulated into --workdir")
    p.add_argument("--workdir", default="/tmp/gref-bench-prepare-polars")
    p.add_argument("--repeats", type=int, default=2, help="alternated rounds (the order flips each round)")
    p.add_argument("--buckets", default="1,4", help="comma-separated bucket counts of the reference")
    p.add_argument("--slice-mb", type=int, help="the job's slice_mb (default: DatasetConfig's)")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    logs = Path(args.logs) if args.logs else work / "sim" / "logs"
    if not args.logs:
        subprocess.run([sys.executable, "-m", "jobs.simulate", "--requests", str(args.requests), "--out",
                        str(work / "sim"), "--chunk", "25000"], check=True, stdout=subprocess.DEVNULL)
    job_args = [f"slice_mb={args.slice_mb}"] if args.slice_mb else []
    outs = {"jobs.prepare": work / "out-job"}
    outs |= {f"polars, {b} bucket(s)": work / f"out-polars{b}" for b in args.buckets.split(",")}
    commands = {name: [sys.executable, "-m", "benchmarks.prepare_polars", "--logs", str(logs), "--out", str(out),
                       "--buckets", name.split()[1]] for name, out in outs.items() if name != "jobs.prepare"}
    commands = {"jobs.prepare": [sys.executable, "-m", "jobs.prepare", "--logs", str(logs), "--out",
                                 str(outs["jobs.prepare"]), *job_args]} | commands
    runs: dict[str, list[dict]] = {name: [] for name in commands}
    for r in range(args.repeats):
        for name in (list(commands) if r % 2 == 0 else list(reversed(commands))):
            runs[name].append(timed(commands[name]))
            print(f"[prepare_vs_polars] round {r}: {name} {runs[name][-1]}", flush=True)
        if r == 0:
            for name in commands:
                if name != "jobs.prepare":
                    found = differences(outs[name], outs["jobs.prepare"])
                    if found:
                        raise SystemExit(f"{name} and jobs.prepare differ: {found}")
    summary = json.loads((work / "out-job" / "summary.json").read_text())
    job = runs["jobs.prepare"]
    result = {
        "requests": summary["requests_read"], "rows": summary["rows_read"], "slices": summary["slices"],
        "log_parquet_gb": round(sum(f.stat().st_size for f in logs.rglob("*.parquet")) / 2**30, 3),
        "cpus": os.cpu_count(), "outputs_equal": True,
        "runs": runs,
        "job_over_reference": {name: [round(j["seconds"] / x["seconds"], 2) for j, x in zip(job, runs[name])]
                               for name in commands if name != "jobs.prepare"},
        "job_peak_over_reference_peak": {name: [round(j["peak_pss_gb"] / x["peak_pss_gb"], 2)
                                                for j, x in zip(job, runs[name])]
                                         for name in commands if name != "jobs.prepare"},
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
