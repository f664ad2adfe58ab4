"""Load with faults: steady traffic while a reranker replica and then a Router are killed
(prints JSON; loopback only; not a test).

    python -m benchmarks.load [--seconds 180] [--clients 8] [--store postgres|sqlite]

The app (a tiny untrained GReF arm, ``benchmarks.tiny_app``) runs 2 reranker replicas and, with
``--store postgres`` (default: a pgserver-started PostgreSQL), 2 Routers writing one database;
with ``--store sqlite``, 1 Router. ``--clients`` clients each loop: /rerank with a request_id of
their own, then /feedback (a click on the first item). A client retries a call that got no answer,
a 5xx, a 408 or a 429 with the same body and request_id, for up to ``--retry-s`` seconds -- safe
because both calls are idempotent -- and a request counts as failed when it never got its 200.

At 1/3 of the run one reranker replica is killed, at 2/3 one Router. Reported: p50/p99 latency
of answered calls before, during (10 s after each kill) and after; requests answered / failed /
retried; and, read from the store afterwards, the lists and feedback rows against what clients
were answered: lost = answered but not stored, doubled = stored more than once (impossible by
the primary keys, counted anyway).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import requests

from benchmarks.tiny_app import tiny_app

KILL_WINDOW_S = 10.0  # "during" = this long after a kill
RETRYABLE = (408, 429)  # HTTP says a client may repeat these (a body cut off in a dying Router: 408)


def _kill_one(deployment: str) -> str:
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["namespace"] == "serve" and f"#{deployment}#" in a["name"]]
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    return names[0]


class Load:
    """``clients`` threads, each looping /rerank (a request_id of its own) then /feedback (a click on
    the first item), retrying a call that got no answer, a 5xx, a 408 or a 429 with the same body
    for up to ``retry_s``; a request counts as failed when it never got its 200."""

    def __init__(self, url: str, key: str, clients: int = 8, retry_s: float = 30.0):
        self.url, self.key, self.retry_s = url, key, retry_s
        self.candidates = [{"item_id": f"i{i}", "num_item_f0": 0.1 * i} for i in range(30)]
        self.events: list[tuple[float, str, float]] = []  # (time, call, latency ms) of answered calls
        self.answered = {"rerank": 0, "feedback": 0}
        self.failed = {"rerank": 0, "feedback": 0}
        self.retried = 0
        self.retried_status: dict[int, int] = {}  # answers that were retried, by status
        self.refused: list[str] = []
        self.served_ids: list[str] = []
        self.clicked_ids: list[str] = []
        self.lock, self.stopping = threading.Lock(), threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(c,)) for c in range(clients)]

    def start(self) -> "Load":
        self.t0 = time.time()
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join()

    def _call(self, session, path: str, body: dict) -> dict | None:
        started, deadline = time.perf_counter(), time.time() + self.retry_s
        first = True
        while time.time() < deadline:
            if not first:
                with self.lock:
                    self.retried += 1
                time.sleep(0.2)
            first = False
            try:
                r = session.post(f"{self.url}{path}", json=body, timeout=30)
            except requests.RequestException:
                continue
            if r.status_code in RETRYABLE or r.status_code >= 500:
                with self.lock:
                    self.retried_status[r.status_code] = self.retried_status.get(r.status_code, 0) + 1
                continue
            if r.status_code != 200:  # a refusal no retry can change: counted as failed
                with self.lock:
                    self.refused.append(f"{path}: {r.status_code} {r.text[:200]}")
                return None
            with self.lock:
                self.events.append((time.time(), path, 1000 * (time.perf_counter() - started)))
            return r.json()
        return None

    def _client(self, c: int) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.key}"
        while not self.stopping.is_set():
            request_id = f"load-{c}-{uuid.uuid4().hex[:12]}"
            answer = self._call(session, "/rerank", {"user_id": f"user-{c}-{request_id[-2:]}", "n": 10,
                                                     "candidates": self.candidates, "request_id": request_id})
            with self.lock:
                if answer:
                    self.answered["rerank"] += 1
                    self.served_ids.append(request_id)
                else:
                    self.failed["rerank"] += 1
            if not answer:
                continue
            ok = self._call(session, "/feedback", {"request_id": request_id,
                                                   "feedback": [{"item_id": answer["items"][0], "click": 1}]})
            with self.lock:
                if ok:
                    self.answered["feedback"] += 1
                    self.clicked_ids.append(request_id)
                else:
                    self.failed["feedback"] += 1

    def latency(self, phase) -> dict[str, dict]:
        """p50 / p99 of answered /rerank calls per ``phase(time)`` name."""
        by_phase: dict[str, list[float]] = {}
        for at, path, ms in self.events:
            if path == "/rerank":
                by_phase.setdefault(phase(at), []).append(ms)
        return {name: {"requests": len(v), "p50_ms": round(float(np.percentile(v, 50)), 1),
                       "p99_ms": round(float(np.percentile(v, 99)), 1)} for name, v in by_phase.items()}

    def outcome(self, db: str) -> dict:
        """What the clients were answered against what the store holds: lost = answered but not
        stored, doubled = stored more than once (impossible by the primary keys, counted anyway)."""
        from gref.serving.feedback import FeedbackStore

        store = FeedbackStore(db)
        stored = {r[0] for r in store.db.query("SELECT request_id FROM served WHERE request_id LIKE 'load-%'")}
        with_feedback = {r[0]: r[1] for r in store.db.query(
            "SELECT request_id, count(*) FROM feedback WHERE request_id LIKE 'load-%' GROUP BY request_id")}
        return {
            "seconds": round(time.time() - self.t0, 1), "answered": self.answered, "failed": self.failed,
            "retried_calls": self.retried, "retried_after_status": self.retried_status,
            "refused_examples": self.refused[:5],
            "lists_answered": len(self.served_ids), "lists_stored": len(stored),
            "lists_lost": len(set(self.served_ids) - stored),
            "lists_doubled": len(self.served_ids) - len(set(self.served_ids)),
            "feedback_answered": len(self.clicked_ids), "feedback_rows": sum(with_feedback.values()),
            "feedback_lost": len(set(self.clicked_ids) - set(with_feedback)),
            "feedback_doubled": sum(n - 1 for n in with_feedback.values() if n > 1)}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=180.0)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--store", choices=["postgres", "sqlite"], default="postgres")
    p.add_argument("--retry-s", type=float, default=30.0, help="how long a client keeps retrying one call")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gref-load-"))
    if args.store == "postgres":
        import pgserver

        server = pgserver.get_server(tmp / "pg", cleanup_mode="stop")
        db, routers = server.get_uri(), 2
    else:
        db, routers = str(tmp / "fb.db"), 1
    url, key = tiny_app(tmp, name="load", feedback_db=db, colocate=False, replicas=2, routers=routers, reranker_cpus=0.2,
                        router_cpus=0.1)
    load = Load(url, key, args.clients, args.retry_s).start()
    kills = {}
    time.sleep(args.seconds / 3)
    kills["reranker"] = (time.time(), _kill_one("reranker-gref"))
    time.sleep(args.seconds / 3)
    kills["router"] = (time.time(), _kill_one("Router"))
    time.sleep(args.seconds / 3)
    load.stop()

    def phase(at: float) -> str:
        for name, (when, _) in kills.items():
            if when <= at < when + KILL_WINDOW_S:
                return f"during_{name}_kill"
        return "before" if at < kills["reranker"][0] else "after"

    result = {"store": args.store, "routers": routers, "reranker_replicas": 2, "clients": args.clients,
              "killed": {k: v[1] for k, v in kills.items()}, "latency": load.latency(phase), **load.outcome(db)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
