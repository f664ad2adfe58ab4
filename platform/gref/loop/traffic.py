"""Where a look's requests come from: the world's simulated users, sent by the loop, or real
clients of the endpoint, read back from the feedback store. Both give records of the same form."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from gref.cli import log
from gref.loop.config import ContinuousConfig


class TrafficSource(Protocol):
    """Where a look's requests come from. ``look`` -> (records, the look window's end in epoch ms);
    a record: request_id, user, arm, model, explored, sampled (the clicks), and with simulated users
    oracle (E[clicks] of the list served)."""

    audited: bool  # the oracle scores the served lists (simulated users with a world)

    def look(self, url: str, r: int, look: int, arms: dict[str, int],
             since_ms: int) -> tuple[list[dict[str, Any]], int]: ...


@dataclass
class SimulatedUsers:
    """``requests`` requests of the world's users per look, sent by the loop itself with fixed ids
    (s<seed>-r<r>-l<look>-<i>: a resent one is replayed by the store, never counted twice); every
    answer checked to come from the version of its arm (not a stale replica or another app)."""

    cfg: ContinuousConfig
    world: Any
    audited: bool = True

    def look(self, url: str, r: int, look: int, arms: dict[str, int],
             since_ms: int) -> tuple[list[dict[str, Any]], int]:
        from gref.serving.ab_client import send_traffic, simulated_requests

        cfg = self.cfg
        seed = cfg.seed * 100_003 + r * 101 + look
        reqs = simulated_requests(self.world, cfg.requests, seed)
        for i, req in enumerate(reqs):
            req["request_id"] = f"s{cfg.seed}-r{r}-l{look}-{i}"
        records, errors = send_traffic(url, self.world, reqs, cfg.n, seed, cfg.concurrency, "",
                                       f"round {r} look {look}")
        if errors:
            raise RuntimeError(f"round {r} look {look}: {len(errors)} requests failed, e.g. {errors[:2]}")
        stray = [rec for rec in records
                 if rec["arm"] not in arms or not rec["model"].endswith(f" v{arms[rec['arm']]}")]
        if stray:
            raise RuntimeError(f"round {r} look {look}: {len(stray)} answers from other models than the round's "
                               f"arms {arms}, e.g. {stray[0]['arm']}: {stray[0]['model']}")
        return records, int(time.time() * 1000)


@dataclass
class RealClients:
    """Real clients of the endpoint: a look is the lists the store holds from ``since_ms`` on that
    the round's arms served (their own version: not a replica of an earlier deploy), once there are
    ``requests`` of them served ``feedback_wait_s`` ago or more, or ``look_timeout_s`` passed."""

    cfg: ContinuousConfig
    audited: bool = False

    def look(self, url: str, r: int, look: int, arms: dict[str, int],
             since_ms: int) -> tuple[list[dict[str, Any]], int]:
        from gref.serving.feedback import FeedbackStore

        cfg = self.cfg
        store = FeedbackStore(cfg.feedback_db())
        started = last_log = time.time()
        log("continuous", f"round {r} look {look}: serving {arms} at {url}; waiting for {cfg.requests} requests "
                          f"from clients (each counted {cfg.feedback_wait_s:g} s after it was served)")
        while True:
            until_ms = int((time.time() - cfg.feedback_wait_s) * 1000)
            served = store.outcomes(since_ms, until_ms) if until_ms > since_ms else []
            records = [o for o in served if o["arm"] in arms and o["model"].endswith(f"#{arms[o['arm']]}")]
            waited = time.time() - started
            if len(records) >= cfg.requests or waited >= cfg.look_timeout_s:
                break
            if time.time() - last_log >= 30:
                log("continuous", f"round {r} look {look}: {len(records)}/{cfg.requests} requests after {waited:.0f} s")
                last_log = time.time()
            time.sleep(min(2.0, max(0.2, cfg.feedback_wait_s / 4)))
        if waited >= cfg.look_timeout_s:
            log("continuous", f"round {r} look {look}: {len(records)}/{cfg.requests} requests when look_timeout_s "
                              f"({cfg.look_timeout_s:g} s) ran out: deciding on those")
        if len(served) > len(records):
            log("continuous", f"round {r} look {look}: {len(served) - len(records)} lists from other versions left out")
        return records, until_ms


def traffic_source(cfg: ContinuousConfig, world) -> TrafficSource:
    """``cfg.traffic``: simulated (the world's users, sent by the loop) | clients (real clients)."""
    return RealClients(cfg) if cfg.traffic == "clients" else SimulatedUsers(cfg, world)


def arm_values(records: list[dict[str, Any]], arm: str, key: str) -> np.ndarray:
    """Clicks per greedy request of ``arm`` (``key`` = sampled: served clicks | oracle: expected)."""
    return np.array([rec[key]["click"] for rec in records if rec["arm"] == arm and not rec["explored"]], float)


def arm_users(records: list[dict[str, Any]], arm: str) -> np.ndarray:
    """The user of each of ``arm_values``' requests (records without one: the request is its own unit)."""
    return np.array([str(rec.get("user", rec["request_id"])) for rec in records
                     if rec["arm"] == arm and not rec["explored"]])

