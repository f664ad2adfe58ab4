"""Throughput and peak memory of jobs.prepare on Ray Data vs a plain single-process
pyarrow/pandas version of the same transform, on the same simulated logs, in one run (prints JSON).

    python -m benchmarks.prepare [--requests 100000] [--logs DIR] [--workdir /tmp/gref-bench-prepare]
        [--slice-mb 1024] [--plain-memory-gb 20] [--object-store-gb G] [--plot memory.png] [--json out.json]

``--logs``: simulated logs already written (``jobs.simulate --requests N``), else the benchmark
simulates ``--requests`` of them first. ``--slice-mb``: DatasetConfig.slice_mb, comma-separated
values run side by side; every one must prepare exactly the plain version's requests.

Both call the same library functions (gref.data: build_sequences, FeatureSpec, add_pairs);
they differ only in who runs them: Ray Data (rows partitioned on disk into hash slices of
requests, a task per slice, statistics and encoding streamed) or one Python process holding the
whole table in memory. The plain version
runs in a child process capped at ``--plain-memory-gb`` of address space (RLIMIT_AS), so on
logs too large for memory it fails with a MemoryError (recorded, with its last line) instead
of taking the machine down. Peak memory: the plain child's maximum RSS; for Ray, the peak over
the run of the summed PSS of the driver and every process it started (raylet, object store,
workers; shared pages counted once), sampled every 0.5 s, and of the machine's used memory
(total - available) above its level before the run. Ray's time excludes ray.init (reported
separately); both include reading and writing Parquet. Every ``*_gb`` figure is in GiB (2**30 bytes).
Where the peak is: the per-kind breakdown of the peak sample (``peak_by_process``: the driver,
Ray's daemons, workers by their task's name) and a timeline every 10 s (``--plot``: a chart of it,
with the job's stages marked).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from gref.data.schema import DatasetConfig

GB = 1024 ** 3


def process_kind(proc: psutil.Process, root: psutil.Process) -> str:
    """What a process of the run is: the driver, a Ray daemon (raylet, gcs_server, a Python
    service by its script's name) or a worker by its title (``ray::IDLE``, ``ray::group_slice``,
    ``ray::ReadParquet->MapBatches(normalize)``...)."""
    if proc.pid == root.pid:
        return "driver"
    cmd = proc.cmdline()
    if cmd and cmd[0].startswith("ray::"):
        return cmd[0].split(" ")[0]
    scripts = [Path(arg).stem for arg in cmd[1:] if arg.endswith(".py")]
    return scripts[0] if scripts else proc.name()


class PeakMemory:
    """Samples the summed PSS of a process and its descendants, and the machine's used memory;
    keeps the per-kind breakdown of the peak sample and a coarse timeline (for the memory plot)."""

    def __init__(self, pid: int, interval_s: float = 0.5, timeline_s: float = 10.0):
        self.root, self.interval_s, self.timeline_s = psutil.Process(pid), interval_s, timeline_s
        self.peak_pss = self.peak_used = self.peak_workers = 0
        self.peak_at_s, self.peak_kinds, self.timeline = 0.0, {}, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def used() -> int:
        vm = psutil.virtual_memory()
        return vm.total - vm.available

    def tree(self) -> list[tuple[str, int]]:
        """(kind, PSS bytes) of the root and every descendant alive now."""
        rows = []
        for proc in [self.root, *self.root.children(recursive=True)]:
            try:
                rows.append((process_kind(proc, self.root), proc.memory_full_info().pss))
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        return rows

    def tree_pss(self) -> int:
        return sum(pss for _, pss in self.tree())

    def _run(self) -> None:
        t0 = last_point = time.perf_counter()
        while not self._stop.is_set():
            rows, now = self.tree(), time.perf_counter()
            total = sum(pss for _, pss in rows)
            workers = sum(kind.startswith("ray::") and "Agent" not in kind for kind, _ in rows)
            self.peak_workers = max(self.peak_workers, workers)
            if total > self.peak_pss:
                self.peak_pss, self.peak_at_s = total, now - t0
                self.peak_kinds = {}
                for kind, pss in rows:
                    count, summed = self.peak_kinds.get(kind, (0, 0))
                    self.peak_kinds[kind] = (count + 1, summed + pss)
            if now - last_point >= self.timeline_s or not self.timeline:
                self.timeline.append((round(now - t0, 1), round(total / GB, 2), workers))
                last_point = now
            self.peak_used = max(self.peak_used, self.used())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakMemory":
        self.baseline_pss, self.baseline_used = self.tree_pss(), self.used()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        kinds = sorted(self.peak_kinds.items(), key=lambda kv: -kv[1][1])
        return {"peak_pss_gb": round(self.peak_pss / GB, 2), "pss_before_gb": round(self.baseline_pss / GB, 2),
                "peak_machine_used_above_before_gb": round((self.peak_used - self.baseline_used) / GB, 2),
                "peak_at_s": round(self.peak_at_s, 1), "peak_worker_processes": self.peak_workers,
                "peak_by_process": {kind: {"processes": n, "pss_gb": round(pss / GB, 2)} for kind, (n, pss) in kinds},
                "timeline_s_gb_workers": self.timeline}


def plot_timelines(runs: dict[str, dict], title: str, path: str) -> None:
    """Summed PSS and worker processes over time of each Ray run, its stages' ends marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 1, figsize=(9, 3.2 * len(runs)), squeeze=False)
    for ax, (name, run) in zip(axes[:, 0], runs.items()):
        t, gb, workers = zip(*run["timeline_s_gb_workers"])
        ax.plot(t, gb, color="tab:blue", label="PSS of the driver + every Ray process (GiB)")
        ax.set_ylabel("GiB")
        ax.set_ylim(0, max(gb) * 1.15)
        twin = ax.twinx()
        twin.step(t, workers, where="post", color="tab:gray", alpha=0.6, label="worker processes")
        twin.set_ylabel("workers")
        end = 0.0
        for stage, seconds in run["stage_seconds"].items():
            end += seconds
            ax.axvline(end, color="tab:red", lw=0.8, ls="--")
            ax.text(end, max(gb) * 1.08, f" {stage} ends", color="tab:red", fontsize=8, ha="right")
        ax.set_title(f"{title}, {name}: peak {run['peak_pss_gb']} GiB at {run['peak_at_s']} s", fontsize=10)
        ax.set_xlabel("seconds since the job started")
        ax.legend(loc="lower left", fontsize=8)
        twin.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plain_prepare(logs: Path, out: Path) -> dict:
    """The reference: everything in one process."""
    from gref.data.features import FeatureSpec, partial_stats
    from gref.data.pairs import add_pairs
    from gref.data.schema import canonical_schema, feature_columns
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


def run_plain(logs: Path, out: Path, memory_gb: float) -> dict:
    """plain_prepare in a child process capped at ``memory_gb`` of address space."""
    def cap() -> None:
        limit = int(memory_gb * GB)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    t0 = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "benchmarks.prepare", "--plain-child", str(logs), str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=cap)
    with PeakMemory(child.pid) as memory:
        stdout, stderr = child.communicate()
    seconds = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the largest child so far: this one (run first)
    result = {"seconds": round(seconds, 2), "peak_rss_gb": round(usage.ru_maxrss * 1024 / GB, 2),
              "memory_cap_gb": memory_gb} | memory.summary()
    if child.returncode != 0:
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        return result | {"ok": False, "returncode": child.returncode, "error": lines[-1] if lines else ""}
    return result | {"ok": True} | json.loads(stdout.strip().splitlines()[-1])


def spilled() -> list[str]:
    """Ray's object-spilling lines for the session (what did not fit in the object store)."""
    from ray._private.internal_api import memory_summary

    return [line.strip() for line in memory_summary(stats_only=True).splitlines()
            if "Spilled" in line or "Restored" in line]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=100_000, help="requests to simulate (the number in --logs)")
    p.add_argument("--logs", help="simulated raw logs to prepare instead of simulating new ones")
    p.add_argument("--workdir", default="/tmp/gref-bench-prepare")
    p.add_argument("--slice-mb", default=str(DatasetConfig().slice_mb),
                   help="comma-separated DatasetConfig.slice_mb values to measure")
    p.add_argument("--plain-memory-gb", type=float, default=round(psutil.virtual_memory().total / GB * 0.85, 1),
                   help="address-space cap of the plain child process (default 85%% of RAM)")
    p.add_argument("--object-store-gb", type=float, help="Ray's object store size (default: Ray's, 30%% of RAM)")
    p.add_argument("--plot", help="write a chart of the Ray runs' memory over time to this PNG")
    p.add_argument("--json", help="also write the result to this file (stdout mixes it with progress lines)")
    p.add_argument("--plain-child", nargs=2, metavar=("LOGS", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.plain_child:
        print(json.dumps(plain_prepare(Path(args.plain_child[0]), Path(args.plain_child[1]))))
        return
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if args.logs:
        logs = Path(args.logs)
    else:
        from jobs import simulate

        simulate.main(["--requests", str(args.requests), "--out", str(work / "sim"), "--chunk", "25000"])
        logs = work / "sim" / "logs"
    requests = args.requests
    log_bytes = sum(f.stat().st_size for f in logs.rglob("*.parquet"))

    plain = run_plain(logs, work / "plain", args.plain_memory_gb)
    shutil.rmtree(work / "plain", ignore_errors=True)
    if plain["ok"]:
        plain["requests_per_s"] = round(requests / plain["seconds"])

    import ray

    from gref.ray_utils import init_ray
    from gref.data import prepare

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    t0 = time.perf_counter()
    init_ray(object_store_memory=int(args.object_store_gb * GB) if args.object_store_gb else None)
    init_s = time.perf_counter() - t0
    ray_data = {}
    for slice_mb in (int(x) for x in args.slice_mb.split(",")):
        out = work / f"ray-{slice_mb}"
        t0 = time.perf_counter()
        with PeakMemory(os.getpid()) as memory:
            summary = prepare.run(str(logs), str(out), DatasetConfig(slice_mb=slice_mb))
        seconds = time.perf_counter() - t0
        assert summary["requests_read"] == requests, f"slice_mb={slice_mb}: read {summary['requests_read']} requests"
        if plain["ok"]:
            assert sum(summary["sequences"].values()) == plain["sequences"], f"slice_mb={slice_mb}: the two disagree"
            assert summary["quarantined"] == plain["quarantined"]
        ray_data[f"slice_mb={slice_mb}"] = {"slices": summary["slices"], "seconds": round(seconds, 2), "requests_per_s": round(requests / seconds),
                              "over_plain": round(plain["seconds"] / seconds, 2) if plain["ok"] else None,
                              "stage_seconds": summary["stage_seconds"], "sequences": summary["sequences"],
                              "quarantined": summary["quarantined"]} | memory.summary()
        shutil.rmtree(out, ignore_errors=True)
    if args.plot:
        plot_timelines(ray_data, f"jobs.prepare, {requests:,} requests", args.plot)
    result = {
        "requests": requests, "log_rows": pads.dataset(str(logs), format="parquet").count_rows(),
        "log_parquet_gb": round(log_bytes / GB, 2), "cpus": ray.cluster_resources().get("CPU"),
        "machine_memory_gb": round(psutil.virtual_memory().total / GB, 1),
        "object_store_gb": round(ray.cluster_resources().get("object_store_memory", 0) / GB, 2),
        "plain_single_process": plain,
        "ray_init_seconds": round(init_s, 2),
        "ray_data": ray_data,
        "ray_spilling": spilled(),
    }
    if args.json:  # stdout also carries the job's progress and Ray's worker lines
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
