"""Per-arm counters of a router replica: requests, errors, latency percentiles, feedback rates."""

from __future__ import annotations

from collections import deque

import numpy as np

FEEDBACK_KINDS = ("click", "like", "long_view")


class ArmStats:
    def __init__(self, window: int = 10_000):
        self.requests = 0
        self.errors = 0
        self.latency_ms: deque[float] = deque(maxlen=window)  # the last `window` requests
        self.feedback_lists = 0  # served lists with a /feedback post
        self.feedback = dict.fromkeys(FEEDBACK_KINDS, 0)  # distinct events per kind (re-posts not counted twice)
        self.ignored_feature_values = 0  # candidate keys outside the model's feature spec: not stored

    def served(self, latency_ms: float) -> None:
        self.requests += 1
        self.latency_ms.append(latency_ms)

    def snapshot(self) -> dict[str, float | int]:
        lat = np.asarray(self.latency_ms, dtype=np.float64)
        pct = {f"latency_p{p}_ms": float(np.percentile(lat, p)) if lat.size else None for p in (50, 95, 99)}
        per_list = {f"{k}s_per_list": self.feedback[k] / self.requests if self.requests else None
                    for k in FEEDBACK_KINDS}
        return {"requests": self.requests, "errors": self.errors, **pct,
                "ignored_feature_values": self.ignored_feature_values,
                "feedback_lists": self.feedback_lists, **{f"{k}s": v for k, v in self.feedback.items()},
                **per_list}
