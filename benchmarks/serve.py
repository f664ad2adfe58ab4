"""Serving throughput and latency, side by side in one run (prints JSON).

    python -m benchmarks.serve [--model DIR] [--world DIR] [--levels 1,4,16] [--requests 300] [--direct-ingress]

For each concurrency level (clients in flight), the same simulated rerank requests (30
candidates with raw features, n = 10) go to:
  in_process    parse + encode + decode in this process, no HTTP (the floor)
  serve         the Ray Serve app (serve/app.py: proxy -> router -> reranker with @serve.batch,
                one arm, served lists recorded in sqlite), over loopback HTTP, its batches waiting
                up to ``--batch-wait-ms`` to fill (5: the app's default until this benchmark)
  serve_nowait  the same app beside it whose batches never wait: a batch is what has queued
                while the previous one ran (batch_wait_timeout_s = 0, the app's default; with a
                Reranker deployment per arm: the app's default until colocate became it)
  serve_colocated  as serve_nowait, with the Router running the reranker itself (colocate: true,
                the app's default now): one process hop less
  *_direct      with ``--direct-ingress``: Ray runs in Serve's high-throughput mode
                (RAY_SERVE_THROUGHPUT_OPTIMIZED=1, Ray >= 2.55: direct ingress, gRPC between
                deployments), and serve_nowait / serve_colocated are also measured at their Router
                replica's own port (serve.app.direct_urls), skipping the HTTP proxy
  plain         the same model in one FastAPI + uvicorn process (benchmarks/plain_server.py:
                same validation, decoding and sqlite record, one request at a time), over loopback
Levels run interleaved (in_process, serve, serve_nowait, serve_colocated, plain, next level) so
machine noise hits all alike. For the Serve targets ``breakdown_ms`` says where a request's time went, from the app's
``Server-Timing`` header (means over the level's requests): parse, arm (the Router's await of the
reranker) = queue (hop + batch wait) + encode + decode + the hop back, store, total (the Router's
handling) and proxy_http = the client's latency beyond the Router's total (HTTP proxy, loopback).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
import torch

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up")


def parse_server_timing(header: str) -> dict[str, float]:
    """``a;dur=1.5, b;dur=2, c;desc="4"`` -> {"a": 1.5, "b": 2.0, "c": 4.0} (a desc that is a number)."""
    out = {}
    for part in header.split(","):
        name, _, value = part.strip().partition(";")
        value = value.removeprefix("dur=").removeprefix("desc=").strip('"')
        try:
            out[name] = float(value)
        except ValueError:
            pass
    return out


def measure(call, bodies: list[dict], concurrency: int) -> dict[str, float]:
    """Send every body with ``concurrency`` clients; latency percentiles and throughput, and the
    mean ``breakdown_ms`` of the server's stages when ``call`` returns a Server-Timing header."""
    latencies: list[float] = []
    stages: list[dict[str, float]] = []
    lock = threading.Lock()

    def one(body):
        t0 = time.perf_counter()
        header = call(body)
        latency = 1000 * (time.perf_counter() - t0)
        with lock:
            latencies.append(latency)
            if header:
                timing = parse_server_timing(header)
                stages.append({**timing, "proxy_http": latency - timing["total"]})

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, bodies))
    wall = time.perf_counter() - t0
    lat = np.asarray(latencies)
    out = {"requests_per_s": round(len(bodies) / wall, 1), "p50_ms": round(float(np.percentile(lat, 50)), 2),
           "p99_ms": round(float(np.percentile(lat, 99)), 2)}
    if stages:
        out["breakdown_ms"] = {k: round(float(np.mean([s[k] for s in stages])), 2) for k in stages[0]}
    return out


def http_caller(url: str):
    local = threading.local()

    def call(body) -> str | None:
        if not hasattr(local, "s"):
            local.s = requests.Session()
        r = local.s.post(f"{url}/rerank", json=body, timeout=120)
        if r.status_code != 200:
            raise RuntimeError(f"{url}: {r.status_code} {r.text[:200]}")
        return r.headers.get("Server-Timing")
    return call


def in_process_caller(model_dir: str):
    from gref.data.features import FeatureSpec
    from gref.model.decoding import decode
    from gref.reranker_io import load_reranker
    from gref.serving.requests import encode_candidates, parse_json, parse_rerank

    model = load_reranker(model_dir)
    spec = FeatureSpec.load(f"{model_dir}/features.json")

    def call(body):
        req = parse_rerank(parse_json(json.dumps(body).encode(), 1_000_000), 200, model.cfg.max_length)
        num, cat = encode_candidates(req.candidates, spec)
        decode(model, torch.from_numpy(num)[None], torch.from_numpy(cat)[None],
               torch.ones(1, len(num), dtype=torch.bool), req.n)
    return call


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="", help="reranker dir (default: the DPO model of runs/pipeline)")
    p.add_argument("--world", default=str(REPO / "runs/pipeline/sim/world"))
    p.add_argument("--levels", default="1,4,16")
    p.add_argument("--requests", type=int, default=300, help="requests per level and target")
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="the serve target's batch_wait_timeout_s, in ms")
    p.add_argument("--direct-ingress", action="store_true",
                   help="run Serve in its high-throughput mode and add the *_direct targets")
    args = p.parse_args()
    model_dir = args.model or json.loads((REPO / "runs/pipeline/summary.json").read_text())["dpo"]["model_dir"]
    torch.set_num_threads(1)

    from gref.sim.world import World
    from gref.serving.ab_client import simulated_requests

    bodies = [{"user_id": str(r["user_id"]), "candidates": r["candidates"], "n": 10}
              for r in simulated_requests(World.load(args.world), args.requests, seed=1)]
    tmp = Path(tempfile.mkdtemp(prefix="gref-serve-bench-"))

    plain_port = _free_port()
    plain = subprocess.Popen([sys.executable, "-m", "benchmarks.plain_server", "--model", model_dir,
                              "--port", str(plain_port), "--db", str(tmp / "plain.db")], cwd=REPO)
    from ray import serve

    from gref.ray_utils import init_ray
    from serve.app import build_app, direct_urls

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if args.direct_ingress:  # read by Serve's controller and replicas: set before Ray starts them
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
        # a deleted app's replicas drain 2 s, not 30 (no load balancer to deregister from; make serve's)
        os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")
    init_ray()
    serve_port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": serve_port})
    apps = (("bench", "/", args.batch_wait_ms, False), ("bench-nowait", "/nowait", 0.0, False),
            ("bench-colocated", "/colocated", 0.0, True))
    for name, prefix, wait_ms, colocate in apps:
        serve.run(build_app({"arms": {"gref": model_dir}, "feedback_db": str(tmp / f"{name}.db"), "replicas": 1,
                             "reranker_cpus": 0.5, "max_batch_size": args.max_batch_size, "colocate": colocate,
                             "batch_wait_timeout_s": wait_ms / 1000}), name=name, route_prefix=prefix)
    targets = {"in_process": in_process_caller(model_dir),
               "serve": http_caller(f"http://127.0.0.1:{serve_port}"),
               "serve_nowait": http_caller(f"http://127.0.0.1:{serve_port}/nowait"),
               "serve_colocated": http_caller(f"http://127.0.0.1:{serve_port}/colocated"),
               "plain": http_caller(f"http://127.0.0.1:{plain_port}")}
    if args.direct_ingress:
        for name, target in (("bench-nowait", "serve_nowait_direct"), ("bench-colocated", "serve_colocated_direct")):
            (url,) = direct_urls(name, host="127.0.0.1")  # one replica each
            targets[target] = http_caller(url)
    try:
        _wait(f"http://127.0.0.1:{plain_port}")
        for call in targets.values():  # warm-up: model load, connections, first batches
            measure(call, bodies[:20], 4)
        results: dict[str, dict] = {}
        for level in (int(x) for x in args.levels.split(",")):
            results[str(level)] = {name: measure(call, bodies, level) for name, call in targets.items()}
            print(f"# concurrency {level}: {results[str(level)]}", file=sys.stderr, flush=True)
    finally:
        plain.terminate()
        for name, *_ in apps:
            serve.delete(name)
    served = [t for t in targets if t.startswith("serve")]
    ratios = {level: {f"{t}_vs_plain_throughput": round(r[t]["requests_per_s"] / r["plain"]["requests_per_s"], 2)
                      for t in served}
              | {f"{t}_minus_plain_p50_ms": round(r[t]["p50_ms"] - r["plain"]["p50_ms"], 2) for t in served}
              for level, r in results.items()}
    print(json.dumps({"model": model_dir, "requests_per_level": args.requests, "cpus": os.cpu_count(),
                      "max_batch_size": args.max_batch_size, "batch_wait_ms": args.batch_wait_ms,
                      "serve_throughput_optimized": args.direct_ingress,
                      "default": default_vs_plain(results, args.direct_ingress),
                      "results": results, "ratios": ratios}, indent=2))


def default_vs_plain(results: dict[str, dict], direct: bool) -> dict[str, dict]:
    """The issue's targets for the app's default config (``colocate: true``; ``serve_colocated``),
    at its Router's own port when Serve runs with direct ingress (``make serve``) and through the
    proxy, beside the previous default (a Reranker deployment per arm, ``serve_nowait``): p50 minus
    plain's at the lowest level, throughput over plain's at the highest."""
    levels = sorted(int(k) for k in results)
    low, high = str(levels[0]), str(levels[-1])
    paths = {"default_direct": "serve_colocated_direct", "default_proxy": "serve_colocated",
             "previous_default_direct": "serve_nowait_direct", "previous_default_proxy": "serve_nowait"}
    return {name: {"target": t, f"p50_minus_plain_ms_at_{low}": round(results[low][t]["p50_ms"]
                                                                      - results[low]["plain"]["p50_ms"], 2),
                   f"throughput_vs_plain_at_{high}": round(results[high][t]["requests_per_s"]
                                                           / results[high]["plain"]["requests_per_s"], 2)}
            for name, t in paths.items() if t in results[low] and (direct or not name.endswith("direct"))}


if __name__ == "__main__":
    main()
