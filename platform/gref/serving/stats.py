"""Per-arm counters of a router replica: a JSON view (``/stats``: latency percentiles over a
window, feedback rates) and Prometheus' text format (``/metrics``: counters and a latency
histogram per arm, what any Prometheus scrapes and Ray's dashboard can chart); and the
``Server-Timing`` header that tells a client where its request's time went."""

from __future__ import annotations

from collections import deque

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

FEEDBACK_KINDS = ("click", "like", "long_view")
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST  # Prometheus' text exposition format
LATENCY_BUCKETS_S = (0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ArmStats:
    def __init__(self, window: int = 10_000):
        self.requests = 0
        self.errors = 0
        self.latency_ms: deque[float] = deque(maxlen=window)  # the last `window` requests
        self.feedback_lists = 0  # served lists with a /feedback post
        self.feedback = dict.fromkeys(FEEDBACK_KINDS, 0)  # distinct events per kind (re-posts not counted twice)
        self.ignored_feature_values = 0  # candidate keys outside the model's feature spec: not stored

    def snapshot(self) -> dict[str, float | int]:
        lat = np.asarray(self.latency_ms, dtype=np.float64)
        pct = {f"latency_p{p}_ms": float(np.percentile(lat, p)) if lat.size else None for p in (50, 95, 99)}
        per_list = {f"{k}s_per_list": self.feedback[k] / self.requests if self.requests else None
                    for k in FEEDBACK_KINDS}
        return {"requests": self.requests, "errors": self.errors, **pct,
                "ignored_feature_values": self.ignored_feature_values,
                "feedback_lists": self.feedback_lists, **{f"{k}s": v for k, v in self.feedback.items()},
                **per_list}


class RouterStats:
    """The Router's counters, kept in both views at once (one call per event)."""

    def __init__(self, arms: list[str]):
        self.arms = {arm: ArmStats() for arm in arms}
        self.registry = CollectorRegistry()
        r = self.registry
        self._requests = Counter("gref_rerank_requests", "/rerank answers (200)", ["arm"], registry=r)
        self._errors = Counter("gref_rerank_errors", "/rerank 503s: the arm or the feedback store failed",
                               ["arm"], registry=r)
        self._latency = Histogram("gref_rerank_latency_seconds", "/rerank latency inside the Router",
                                  ["arm"], buckets=LATENCY_BUCKETS_S, registry=r)
        self._feedback_lists = Counter("gref_feedback_lists", "served lists with feedback", ["arm"], registry=r)
        self._feedback = Counter("gref_feedback_events", "distinct feedback events", ["arm", "kind"], registry=r)
        self._ignored = Counter("gref_ignored_feature_values", "candidate keys outside the model's features",
                                ["arm"], registry=r)
        self._weight = Gauge("gref_arm_weight", "traffic weight of the arm", ["arm"], registry=r)
        self._store = Gauge("gref_store_rows", "rows of the feedback store", ["table"], registry=r)
        for arm in arms:  # every series exists from the start: a rate over a fresh arm is 0, not absent
            for metric in (self._requests, self._errors, self._latency, self._feedback_lists, self._ignored):
                metric.labels(arm)
            for kind in FEEDBACK_KINDS:
                self._feedback.labels(arm, kind)

    def served(self, arm: str, latency_ms: float, ignored_feature_values: int) -> None:
        s = self.arms[arm]
        s.requests += 1
        s.latency_ms.append(latency_ms)
        s.ignored_feature_values += ignored_feature_values
        self._requests.labels(arm).inc()
        self._latency.labels(arm).observe(latency_ms / 1000.0)
        self._ignored.labels(arm).inc(ignored_feature_values)

    def error(self, arm: str) -> None:
        self.arms[arm].errors += 1
        self._errors.labels(arm).inc()

    def feedback(self, arm: str, first: bool, new: dict[str, int]) -> None:
        """``first``: the list's first feedback; ``new``: per kind, the events the store did not have."""
        s = self.arms.get(arm)
        if s is None:  # a list served by an arm this deployment no longer has
            return
        s.feedback_lists += int(first)
        self._feedback_lists.labels(arm).inc(int(first))
        for kind in FEEDBACK_KINDS:
            s.feedback[kind] += new[kind]
            self._feedback.labels(arm, kind).inc(new[kind])

    def snapshot(self, weights: dict[str, float]) -> dict[str, dict]:
        return {arm: {"weight": weights.get(arm, 0.0), **s.snapshot()} for arm, s in self.arms.items()}

    def prometheus(self, weights: dict[str, float], store: dict[str, int]) -> bytes:
        for arm in self.arms:
            self._weight.labels(arm).set(weights.get(arm, 0.0))
        for table, rows in store.items():
            self._store.labels(table).set(rows)
        return generate_latest(self.registry)


def server_timing(parse_s: float, arm_s: float, reranker: dict[str, float], store_s: float, total_s: float) -> str:
    """The ``Server-Timing`` header (W3C) of a served request, in ms: ``parse`` (key, body, JSON,
    validation, replay lookup), ``arm`` (the Router's await of the reranker: both hops, the batch's
    wait, encode, decode), of which the reranker's ``queue`` (hop there + batch wait), ``encode`` and
    ``decode`` (its batch of ``batch`` requests), ``store`` (the served list recorded) and ``total``
    (the Router's handling; a client's latency beyond it is the HTTP proxy and the network)."""
    stages = {"parse": 1000.0 * parse_s, "arm": 1000.0 * arm_s,
              **{k: reranker[k] for k in ("queue", "encode", "decode") if k in reranker},  # (a replica of an
              "store": 1000.0 * store_s, "total": 1000.0 * total_s}                      # older release: none)
    batch = [f'batch;desc="{reranker["batch"]}"'] if "batch" in reranker else []
    return ", ".join([*(f"{k};dur={v:.3f}" for k, v in stages.items()), *batch])
