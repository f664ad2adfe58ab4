"""Simulated online A/B test against the Serve endpoint (the paper's Table 4, with simulated
users; ``python -m jobs.ab_test`` runs it).

Users of the simulated world send ``requests`` rerank requests over HTTP (``concurrency`` at a
time): the upstream candidates with their raw features, as the logs carry them. Each answer's
list is shown to the hidden user model, which clicks / likes / long-views (one random draw),
and the reaction goes back through ``POST /feedback``, so the served traffic also lands in the
feedback store. Per arm: CTR (clicks per shown item), clicks / likes / long views per request
with 95% confidence intervals, the same under the oracle (expected values of the served list:
same lists, no draw noise), and each arm's relative lift over the first arm with a 95% CI
(delta method). Written to ``out``/ab_test.json, logged to MLflow with a bar chart.

Without ``url`` the run starts the app itself from the ``build_app`` it is given (serve.app's: the
library does not import the deployments), with ``app`` = its ServeConfig args (default arms: GReF =
models:/gref-reranker@champion vs NAR4Rec = models:/gref-nar4rec@champion, the paper's Table 4 --
``make demo`` trains and registers both; any arm can be set with app.arms=...) and deletes it at
the end.
"""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from gref.cli import log
from gref.config import flatten, to_dict
from gref.stats import normal_mean_interval
from gref.tracking import TrackingConfig

KINDS = ("click", "like", "long_view")


@dataclass
class ABTestConfig:
    world: str = "runs/pipeline/sim/world"  # the simulated world whose users send the traffic
    url: str = ""  # a running app; "" = start serve.app here (with `app`) and delete it afterwards
    api_key: str = ""  # the endpoint's API key (scopes rerank, feedback); "" = $GREF_API_KEY; never logged
    port: int = 8000  # HTTP port when the job starts Serve
    app: dict = field(default_factory=dict)  # serve.app ServeConfig args (arms, weights, feedback_db, ...)
    requests: int = 2000  # rerank requests in all (bounded traffic)
    concurrency: int = 8  # requests in flight
    n: int = 10  # list length asked for
    seed: int = 0
    out: str = "runs/ab_test"
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def simulated_requests(world, count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` requests of the world's users: user id, world item ids, raw candidate rows."""
    from gref.sim.logs import simulate_requests, to_log_table

    rng = np.random.default_rng(seed)
    batch = simulate_requests(world, count, first_request_id=0, rng=rng)
    table = to_log_table(world, batch)
    features = [c for c in table.column_names if c.startswith(("num_", "cat_"))]
    m = batch.candidates.shape[1]
    cols = {c: table.column(c).to_numpy(zero_copy_only=False) for c in ["item_id", *features]}
    out = []
    for r in range(count):
        rows = slice(r * m, (r + 1) * m)
        cands = [{"item_id": str(item), **{c: cols[c][rows][i].item() for c in features}}
                 for i, item in enumerate(cols["item_id"][rows])]
        out.append({"user_id": int(batch.user_id[r]), "candidates": cands})
    return out


def lift_ci(a: np.ndarray, b: np.ndarray, users_a: np.ndarray | None = None,
            users_b: np.ndarray | None = None) -> dict[str, float]:
    """b / a - 1 with a 95% CI by the delta method (independent arms; users given: users are the units)."""
    from gref.serving.promotion import lift_interval

    lift, low, _ = lift_interval(a, b, 1.96, users_a, users_b)
    return {"lift": lift, "ci95": lift - low}


def summarize(records: list[dict[str, Any]], arms: list[str]) -> dict[str, Any]:
    """Per-arm metrics and lifts over the first arm."""
    out: dict[str, Any] = {"arms": {}, "lift_vs": arms[0], "lift": {}}
    per_arm = {arm: [r for r in records if r["arm"] == arm] for arm in arms}
    for arm, recs in per_arm.items():
        if len(recs) < 2:
            out["arms"][arm] = {"requests": len(recs)}
            continue
        shown = np.array([r["shown"] for r in recs], float)
        stats: dict[str, Any] = {"requests": len(recs), "model": recs[0]["model"]}
        clicks = np.array([r["sampled"]["click"] for r in recs], float)
        stats["ctr"] = {"mean": float(clicks.sum() / shown.sum()),
                        "ci95": normal_mean_interval(clicks / np.maximum(shown, 1))["ci95"]}
        for kind in KINDS:
            stats[f"{kind}s_per_request"] = normal_mean_interval(np.array([r["sampled"][kind] for r in recs], float))
            stats[f"oracle_{kind}s_per_request"] = normal_mean_interval(np.array([r["oracle"][kind] for r in recs], float))
        latency = np.array([r["latency_ms"] for r in recs])
        stats["latency_ms"] = {"p50": float(np.percentile(latency, 50)), "p99": float(np.percentile(latency, 99))}
        out["arms"][arm] = stats
    base = per_arm[arms[0]]
    for arm in arms[1:]:
        recs = per_arm[arm]
        if len(base) < 2 or len(recs) < 2:
            continue
        users = np.array([r["user"] for r in base]), np.array([r["user"] for r in recs])  # the split's unit
        out["lift"][arm] = {f"{src}{kind}s": lift_ci(np.array([r[key][kind] for r in base], float),
                                                     np.array([r[key][kind] for r in recs], float), *users)
                            for kind in KINDS for src, key in (("", "sampled"), ("oracle_", "oracle"))}
    return out


_local = threading.local()


def _session(api_key: str):
    import requests as http

    if not hasattr(_local, "session"):  # one keep-alive connection per worker thread
        _local.session = http.Session()
        if api_key:
            _local.session.headers["Authorization"] = f"Bearer {api_key}"
    return _local.session


def _one(url: str, world, req: dict[str, Any], n: int, rng_seed: int, api_key: str) -> dict[str, Any]:
    from gref.sim.user_model import expected_feedback, sample_feedback

    session = _session(api_key)
    t0 = time.perf_counter()
    body = {"user_id": str(req["user_id"]), "candidates": req["candidates"], "n": n,
            **({"request_id": req["request_id"]} if "request_id" in req else {})}  # a retry is then idempotent
    r = session.post(f"{url}/rerank", json=body, timeout=60)
    latency = 1000 * (time.perf_counter() - t0)
    if r.status_code != 200:
        return {"error": f"{r.status_code} {r.text[:200]}"}
    answer = r.json()
    items = np.array([[int(i) for i in answer["items"]]], dtype=np.int64)
    users = np.array([req["user_id"]], dtype=np.int64)
    drawn = sample_feedback(world, users, items, np.random.default_rng(rng_seed))
    oracle = expected_feedback(world, users, items)
    events = [{"item_id": answer["items"][p], **{k: int(drawn[k][0, p]) for k in KINDS}}
              for p in range(items.shape[1]) if any(drawn[k][0, p] for k in KINDS)]
    if events:
        fb = session.post(f"{url}/feedback", json={"request_id": answer["request_id"], "feedback": events}, timeout=60)
        if fb.status_code != 200:
            return {"error": f"feedback {fb.status_code} {fb.text[:200]}"}
    version = answer["model"]["version"]
    return {"arm": answer["arm"], "model": answer["model"]["name"] + (f" v{version}" if version else ""),
            "request_id": answer["request_id"], "user": str(req["user_id"]),
            "explored": bool(answer.get("explored")),
            "shown": items.shape[1], "latency_ms": latency,
            "sampled": {k: int(drawn[k].sum()) for k in KINDS},
            "oracle": {k: float(oracle[k].sum()) for k in KINDS}}


def send_traffic(url: str, world, reqs: list[dict[str, Any]], n: int, seed: int, concurrency: int, api_key: str,
                 label: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each request over HTTP, its simulated reaction back as feedback (request i draws its clicks
    from seed * 1_000_003 + i: a re-sent request draws the same). -> (records, errors)"""
    records, errors = [], []
    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(_one, url, world, req, n, seed * 1_000_003 + i, api_key) for i, req in enumerate(reqs)]
        for i, f in enumerate(futures):
            rec = f.result()
            (errors if "error" in rec else records).append(rec)
            if (i + 1) % max(1, len(reqs) // 10) == 0:
                log(label, f"{i + 1}/{len(reqs)} requests, {len(errors)} errors")
    return records, errors


def run(cfg: ABTestConfig, build_app: Callable[[dict], Any] | None = None) -> dict[str, Any]:
    """Send the traffic, summarise it per arm (written to ``out`` and MLflow). ``build_app``: serve.app's
    builder, needed when ``cfg.url`` is empty (the app is started here)."""
    import mlflow
    import requests as http

    from gref import tracking
    from gref.sim.world import World

    world = World.load(cfg.world)
    log("ab_test", f"{cfg.requests} simulated requests from {cfg.world}")
    reqs = simulated_requests(world, cfg.requests, cfg.seed)
    url, started_here = cfg.url.rstrip("/"), not cfg.url
    api_key = cfg.api_key or os.environ.get("GREF_API_KEY", "")
    if started_here:
        from ray import serve

        from gref.ray_utils import init_ray

        if build_app is None:
            raise ValueError("no url, and no build_app to start the app with")
        init_ray()
        serve.start(http_options={"host": "127.0.0.1", "port": cfg.port})
        serve.run(build_app({"tracking_uri": cfg.tracking.uri, **cfg.app}), name="gref-ab", route_prefix="/",
                  logging_config={"enable_access_log": False})  # 1 line per request would drown the report
        url = f"http://127.0.0.1:{cfg.port}"
        log("ab_test", f"app started at {url}")
    arms = sorted(http.get(f"{url}/healthz", timeout=30).json()["weights"])
    t0 = time.time()
    records, errors = send_traffic(url, world, reqs, cfg.n, cfg.seed, cfg.concurrency, api_key, "ab_test")
    wall = time.time() - t0
    if started_here:
        from ray import serve

        serve.delete("gref-ab")
    summary = {"url": url, "requests": cfg.requests, "errors": len(errors), "error_examples": errors[:3],
               "wall_s": round(wall, 1), "requests_per_s": round(len(records) / wall, 1), **summarize(records, arms)}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ab_test.json").write_text(json.dumps(summary, indent=2))
    chart = _chart(summary, out / "ab_test.png")
    tracking.setup(cfg.tracking)
    mlflow.set_experiment(cfg.tracking.experiment)
    with mlflow.start_run(run_name=f"ab-test-{time.strftime('%Y%m%d-%H%M%S')}"):
        mlflow.log_params({k: str(v)[:500] for k, v in flatten(to_dict(cfg)).items() if k != "api_key"})
        for arm, s in summary["arms"].items():
            mlflow.log_metrics({f"{arm}.{k}": v["mean"] for k, v in s.items() if isinstance(v, dict) and "mean" in v})
        for arm, lifts in summary["lift"].items():
            mlflow.log_metrics({f"{arm}.lift.{k}": v["lift"] for k, v in lifts.items()})
        mlflow.log_artifact(str(out / "ab_test.json"))
        mlflow.log_artifact(str(chart))
    return summary


def _chart(summary: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a, s in summary["arms"].items() if "ctr" in s]
    keys = [("clicks_per_request", "clicks / request"), ("oracle_clicks_per_request", "E[clicks] / request"),
            ("likes_per_request", "likes / request"), ("long_views_per_request", "long views / request")]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.4 * len(keys), 3.2))
    for ax, (key, title) in zip(axes, keys):
        ax.bar(arms, [summary["arms"][a][key]["mean"] for a in arms],
               yerr=[summary["arms"][a][key]["ci95"] for a in arms], capsize=4, color="tab:blue")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("simulated online A/B test (95% CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
