"""Continuous training (``python -m jobs.continuous``): serve -> learn from what was served ->
challenge -> promote only what is proven better.

Round 0 serves the champion alone (``champion``: a registered version, alias, run or directory;
registered into ``tracking.registered_model`` when it is not). Every round r >= 1 then:
  1. post-trains a challenger from the champion on the traffic of the last ``1 + replay_rounds``
     rounds (``reward`` + ``dpo``: the pipeline's recipe, oracle-free: the reward is selected on
     held-out clicks, the challenger by the reward's value of its lists) and registers it with the
     alias ``challenger``;
  2. serves champion and challenger side by side (Ray Serve, users split by a hash), ``requests``
     requests per look: ``traffic=simulated`` sends them from the simulated users of ``world``;
     ``traffic=clients`` leaves them to real clients of the endpoint (``host``:``port``) and waits
     until the feedback store holds that many lists served by the round's arms, each served
     ``feedback_wait_s`` ago (its clicks are in), up to ``look_timeout_s``. A share ``explore`` of
     the requests get a list sampled from the model (temperature ``explore_temperature``) instead
     of its greedy list, its log-probability stored with it -- training data with alternatives;
  3. decides on the served clicks per greedy request (gref.serving.promotion: promote when the
     interval of the lift is above 0, roll back when below, else one more look, up to
     ``rule.max_looks``); a promotion moves the alias ``champion``. With a simulated ``world`` its
     oracle audits every decision (the lift of expected clicks, on the A/B and on a fixed audit
     set, where it also scores the round's reward's own lists: the challenger's teacher) but never
     makes one (``world=''`` with real clients: no audit);
  4. exports the round's lists + feedback (a time window of the feedback store, from where the
     previous round's ended: no row twice, none lost) and prepares them alone, with the round-0
     champion's feature spec (unseen values -> OOV).
A challenger that fails to train leaves the champion serving alone for that round. ``aa=true`` is
the false-promotion check: the challenger is the champion itself (nothing trained). MLflow: one
parent run, a nested run per round, a plot of both arms per round; the registry keeps the
history (aliases + a tag per challenger version). Killed, the same command resumes where it
stopped (``out``/state.json; a look's requests carry fixed ids, so re-sent ones are replayed by
the store, never counted twice). Writes ``out``/summary.json.

The Serve application itself (serve/app.py's deployments) is handed in as a ``ServeApp``: the
library does not import the entrypoints.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal, Protocol

import numpy as np

from gref.cli import log
from gref.config import ConfigError, flatten, save_yaml, to_dict
from gref.data.schema import DatasetConfig
from gref.serving.promotion import PromotionRule, decide, lift_interval
from gref.stats import paired_ratio_lift
from gref.tracking import TrackingConfig
from gref.train.config import DPOConfig, RewardConfig


@dataclass
class ContinuousConfig:
    out: str = "runs/continuous"  # state.json, feedback.db, rounds/<r>/{logs,prep,window}, ray/, summary.json
    world: str = "runs/pipeline/sim/world"  # the simulated users (their clicks; the oracle only audits); '' = none
    traffic: Literal["simulated", "clients"] = "simulated"  # simulated: the loop sends the world's users | clients: real clients call the app
    champion: str = "models:/gref-reranker@champion"  # round 0's champion
    rounds: int = 6  # challengers trained and decided (round 0, serving only, comes first)
    requests: int = 4000  # requests per A/B look, both arms (sent, or awaited from clients; round 0: the champion)
    concurrency: int = 8  # requests in flight
    n: int = 10  # list length
    explore: float = 0.1  # share of requests served a sampled list (training data with alternatives)
    explore_temperature: float = 1.0  # their sampling temperature
    replay_rounds: int = 1  # earlier rounds' traffic trained on besides the newest round's
    rule: PromotionRule = field(default_factory=PromotionRule)
    aa: bool = False  # A/A check: the challenger is the champion itself (a promotion is a false one)
    audit_requests: int = 2000  # a fixed set of simulated requests the oracle scores every version on (0 = off)
    seed: int = 0
    app_name: str = "gref-loop"  # the Serve app the loop (re)deploys (clients: the app they call, route /)
    host: str = "127.0.0.1"  # where Serve's HTTP proxy listens (0.0.0.0: clients on other machines)
    port: int = 8000  # HTTP port of the Serve app the loop runs
    feedback_wait_s: float = 60.0  # clients: a list's clicks count once it was served this long ago
    look_timeout_s: float = 3600.0  # clients: the longest a look waits for its requests (then decides on what came)
    direct_ingress: bool = False  # looks go to the Router replica's own port, not Serve's proxy (Serve's
    #                               high-throughput mode, on in the Ray this job starts; docs/serving.md: ~2x the traffic)
    app: dict = field(default_factory=dict)  # more serve.app ServeConfig args (replicas, reranker_cpus, ...)
    dataset: DatasetConfig = field(default_factory=lambda: DatasetConfig(
        split="quantile", valid_fraction=0.15, test_fraction=0.05))  # a round spans minutes: split by time quantiles
    reward: RewardConfig = field(default_factory=RewardConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


@dataclass(frozen=True)
class ServeApp:
    """The Serve application the loop deploys each round (jobs.continuous passes serve.app's)."""

    build: Callable[[dict], Any]  # ServeConfig args -> a bound Serve application
    direct_urls: Callable[..., list[str]]  # (app name, host=, node_ip=) -> the Router replicas' own URLs


class State:
    """What the loop has done, on disk after every step (``out``/state.json): a killed run resumes."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"rounds": {}}

    def round(self, r: int) -> dict[str, Any]:
        return self.data["rounds"].setdefault(str(r), {"round": r})

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        os.replace(tmp, self.path)


# ---------------------------------------------------------------- registry


def _registry_uri(cfg: ContinuousConfig, version: int) -> str:
    return f"models:/{cfg.tracking.registered_model}/{version}"


def _start_champion(cfg: ContinuousConfig) -> int:
    """The round-0 champion as a version of ``tracking.registered_model`` (registered when it is a
    directory, a run or another registered model), with the alias ``champion``."""
    from gref import tracking

    name = cfg.tracking.registered_model
    pinned, version = tracking.pin_version(cfg.champion)
    if not (pinned.startswith(f"models:/{name}/") and version):
        version = tracking.log_reranker(tracking.reranker_dir(pinned), name)["version"]
    tracking.set_aliases(name, {"champion": int(version)})
    return int(version)


def _tag(cfg: ContinuousConfig, version: int, key: str, value: str) -> None:
    from mlflow import MlflowClient

    MlflowClient().set_model_version_tag(cfg.tracking.registered_model, str(version), key, value)


# ---------------------------------------------------------------- serving and traffic


def _feedback_location(cfg: ContinuousConfig) -> str:
    """The app's feedback store: ``app.feedback_db`` (e.g. PostgreSQL) or ``out``/feedback.db."""
    return str(cfg.app.get("feedback_db") or Path(cfg.out).resolve() / "feedback.db")


def _deploy(cfg: ContinuousConfig, app: ServeApp, arms: dict[str, int], salt: str) -> tuple[str, str]:
    """(Re)deploy the loop's Serve app with these arms (name -> registered version) and user split.
    -> (the URL the looks go to, "direct" | "proxy")"""
    from ray import serve

    args = {"tracking_uri": cfg.tracking.uri, "explore": cfg.explore, "explore_temperature": cfg.explore_temperature,
            **cfg.app, "feedback_db": _feedback_location(cfg),
            "salt": salt,  # the round's salt, as state.json records it
            "arms": {arm: _registry_uri(cfg, v) for arm, v in arms.items()}}
    serve.run(app.build(args), name=cfg.app_name, route_prefix="/", logging_config={"enable_access_log": False})
    proxy = f"http://{'127.0.0.1' if cfg.host in ('0.0.0.0', '::') else cfg.host}:{cfg.port}"
    if not cfg.direct_ingress or cfg.traffic == "clients":  # clients know the proxy's address, not a replica's
        return proxy, "proxy"
    import ray

    # serve.run returns once the replaced Router replicas are gone: the targets are this deploy's
    # the app listens on loopback
    urls = app.direct_urls(cfg.app_name, host="127.0.0.1", node_ip=ray.util.get_node_ip_address())
    if not urls:
        log("continuous", "direct ingress is off in this Ray (start it with RAY_SERVE_THROUGHPUT_OPTIMIZED=1) "
                          "or no Router replica runs on this node: the looks go through Serve's proxy")
    return (urls[0], "direct") if urls else (proxy, "proxy")


def _enable_direct_ingress() -> None:
    """Serve's direct ingress in the Ray this job is about to start (a cluster it joins must have been
    started with RAY_SERVE_THROUGHPUT_OPTIMIZED=1). The loop is its app's only client and reads the
    Router's port after every deploy, so a replaced replica need not drain for the 30 s Serve keeps
    by default for external load balancers to deregister it: every redeploy would wait that long."""
    import ray

    if ray.is_initialized() or os.environ.get("RAY_ADDRESS"):
        return
    os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "1")


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
        store = FeedbackStore(_feedback_location(cfg))
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


def _arm_values(records: list[dict[str, Any]], arm: str, key: str) -> np.ndarray:
    """Clicks per greedy request of ``arm`` (``key`` = sampled: served clicks | oracle: expected)."""
    return np.array([rec[key]["click"] for rec in records if rec["arm"] == arm and not rec["explored"]], float)


def _arm_users(records: list[dict[str, Any]], arm: str) -> np.ndarray:
    """The user of each of ``_arm_values``' requests (records without one: the request is its own unit)."""
    return np.array([str(rec.get("user", rec["request_id"])) for rec in records
                     if rec["arm"] == arm and not rec["explored"]])


# ---------------------------------------------------------------- data and training


def _prepare_round(cfg: ContinuousConfig, rnd: dict[str, Any], features: Path) -> dict[str, Any]:
    """Export the round's window of the feedback store and prepare it alone (the fixed spec)."""
    from gref.data import prepare

    root = Path(cfg.out) / "rounds" / str(rnd["round"])
    rows = _export_round(cfg, rnd, root / "logs" / "served.parquet")
    summary = prepare.run(str(root / "logs"), str(root / "prep"), replace(cfg.dataset, features=str(features)))
    return {"rows": rows, "sequences": summary["sequences"], "quarantined": summary["quarantined"]}


def _export_round(cfg: ContinuousConfig, rnd: dict[str, Any], dest: Path) -> int:
    """The round's window of the store the app writes to (``app.feedback_db``, e.g. PostgreSQL, or
    out/feedback.db) as raw-log Parquet at ``dest``; returns the number of rows."""
    from gref.serving.feedback import FeedbackStore

    return FeedbackStore(_feedback_location(cfg)).export_logs(dest, since_ms=rnd["since_ms"], until_ms=rnd["until_ms"])


def _window(cfg: ContinuousConfig, r: int) -> Path:
    """Round r's training data: the prepared traffic of rounds r-1-replay_rounds .. r-1, linked
    into one prepared-data directory (same feature spec; the newest round's summary)."""
    rounds = Path(cfg.out) / "rounds"
    parts = [k for k in range(max(0, r - 1 - cfg.replay_rounds), r)]
    out = rounds / str(r) / "window"
    shutil.rmtree(out, ignore_errors=True)
    for split in ("train", "valid"):
        (out / "sequences" / split).mkdir(parents=True)
        for k in parts:
            for f in sorted((rounds / str(k) / "prep" / "sequences" / split).glob("*.parquet")):
                os.link(f, out / "sequences" / split / f"round{k}-{f.name}")
    newest = rounds / str(r - 1) / "prep"
    shutil.copy(newest / "features.json", out / "features.json")
    summary = json.loads((newest / "summary.json").read_text())
    summary["window_rounds"] = parts
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return out


def _train_challenger(cfg: ContinuousConfig, r: int, champion: int, data: Path) -> int:
    """Reward model + post-training from the champion on ``data``; the registered version."""
    from gref import tracking
    from gref.recipe import post_train

    storage = str(_training_storage(cfg))
    rcfg = replace(cfg.reward, data=str(data), init=_registry_uri(cfg, champion), tracking=cfg.tracking,
                   eval=replace(cfg.reward.eval, world=""), run=replace(cfg.reward.run, name=f"round{r}-reward",
                                                                        storage=storage))
    dcfg = replace(cfg.dpo, data=str(data), reward="", register=True, tracking=cfg.tracking,
                   eval=replace(cfg.dpo.eval, world=""),  # oracle-free model selection
                   run=replace(cfg.dpo.run, name=f"round{r}-post", storage=storage))
    outcome, _ = post_train(dcfg, tracking.load_reranker_uri(_registry_uri(cfg, champion)), rcfg)
    version = int(outcome["registered_version"])
    tracking.set_aliases(cfg.tracking.registered_model, {"challenger": version})
    return version


def _training_storage(cfg: ContinuousConfig) -> Path:
    """Where the rounds' training runs keep their checkpoints and models (one directory per run name)."""
    return Path(cfg.out).resolve() / "ray"


def _reward_dir(cfg: ContinuousConfig, r: int) -> Path:
    """Round r's reward model (the challenger's teacher), as gref.recipe.train_reward saves it."""
    return _training_storage(cfg) / f"round{r}-reward" / "model"


# ---------------------------------------------------------------- the oracle's audit


def _cached_audit(cfg: ContinuousConfig, name: str, compute: Callable[[], np.ndarray | None]) -> np.ndarray | None:
    """out/audit/<name>.npy, computed once (a resumed run and benchmarks.loop_recipes reuse it);
    None, and nothing cached, when ``compute`` has nothing to score."""
    cache = Path(cfg.out) / "audit" / f"{name}.npy"
    if not cache.exists():
        values = compute()
        if values is None:
            return None
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, values)
    return np.load(cache)


def _audit_values(cfg: ContinuousConfig, world, version: int) -> np.ndarray:
    """E[clicks] (the oracle) of the version's greedy lists on the fixed audit requests, per request."""
    from gref import tracking
    from gref.data.features import FeatureSpec

    def compute() -> np.ndarray:
        uri = _registry_uri(cfg, version)
        spec = FeatureSpec.load(tracking.reranker_dir(uri) / "features.json")
        return audit_model_values(cfg, world, tracking.load_reranker_uri(uri), spec)

    return _cached_audit(cfg, f"v{version}", compute)


def _teacher_values(cfg: ContinuousConfig, world, r: int) -> np.ndarray | None:
    """The oracle's E[clicks] of round r's reward model's own beam-search lists on the audit set (the
    teacher its challenger distils: how far the challenger got towards it); None without one."""
    from gref.data.features import FeatureSpec
    from gref.reranker_io import load_reranker

    model_dir = _reward_dir(cfg, r)

    def compute() -> np.ndarray | None:
        if not (model_dir / "model.pt").exists():
            return None
        return audit_model_values(cfg, world, load_reranker(model_dir), FeatureSpec.load(model_dir / "features.json"))

    return _cached_audit(cfg, f"teacher-r{r}", compute)


def audit_model_values(cfg: ContinuousConfig, world, model, spec) -> np.ndarray:
    """E[clicks] (the oracle) of any reranker's lists (``model.rerank``: a GReF's greedy decode, the
    reward model's beam search) on the fixed audit requests, per request."""
    import torch

    from gref.serving.requests import encode_batch
    from gref.sim.user_model import expected_feedback
    from gref.serving.ab_client import simulated_requests

    model = model.eval()
    reqs = simulated_requests(world, cfg.audit_requests, 999_983 + cfg.seed)
    values = []
    for start in range(0, len(reqs), 256):
        chunk = reqs[start:start + 256]
        num, cat, mask = encode_batch([req["candidates"] for req in chunk], spec)
        with torch.no_grad():
            placed = model.rerank(torch.from_numpy(num), torch.from_numpy(cat), torch.from_numpy(mask), cfg.n).numpy()
        items = np.array([[int(req["candidates"][j]["item_id"]) if j >= 0 else -1 for j in row]
                          for req, row in zip(chunk, placed)], np.int64)
        users = np.array([req["user_id"] for req in chunk], np.int64)
        values.append(expected_feedback(world, users, items)["click"])
    return np.concatenate(values)


# ---------------------------------------------------------------- one round


def _serve_round(cfg: ContinuousConfig, app: ServeApp, state: State, traffic: TrafficSource, r: int,
                 arms: dict[str, int]) -> None:
    """The round's A/B looks (round 0 / no challenger: one look, nothing to decide)."""
    import mlflow

    rnd = state.round(r)
    # the round's export window opens once, resumed or not, where the previous round's closed: what
    # clients were served while the challenger trained is the next partition's, not lost
    if "since_ms" not in rnd:
        rnd["since_ms"] = (state.round(r - 1).get("until_ms") if r else None) or int(time.time() * 1000)
    state.save()
    # each round is a new experiment with its own user split: a verdict never rides on an earlier
    # round's luck of the split (an A/A loop's arms never change, so a hash of them would split alike)
    # a salt of the user's (app.salt) prefixes the round's: every round still splits users anew
    salt = rnd.setdefault("salt", f"{cfg.app.get('salt') or 'continuous'}-s{cfg.seed}-r{r}")
    url, rnd["ingress"] = _deploy(cfg, app, arms, salt)
    looks = rnd.setdefault("looks", [])
    rnd.setdefault("ab_since_ms", int(time.time() * 1000))  # clients' lists count from the first deploy's end
    records_dir = Path(cfg.out) / "rounds" / str(r)
    records_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    for look in range(1, len(looks) + 1):  # looks done before a restart: their records are on disk
        records += json.loads((records_dir / f"look{look}.json").read_text())
    while rnd.get("decision") is None:
        look = len(looks) + 1
        since_ms = looks[-1]["until_ms"] if looks else rnd["ab_since_ms"]
        new, until_ms = traffic.look(url, r, look, arms, since_ms)
        (records_dir / f"look{look}.json").write_text(json.dumps(new))
        records += new
        clicks = {arm: _arm_values(records, arm, "sampled") for arm in arms}
        summary = {"look": look, "requests": len(records), "until_ms": until_ms,
                   **{f"{arm}_clicks": float(v.mean()) for arm, v in clicks.items() if len(v)}}
        if "challenger" not in arms:
            looks.append(summary)
            rnd["decision"] = {"action": "none", "why": "no challenger this round"}
            break
        users = _arm_users(records, "champion"), _arm_users(records, "challenger")
        # the information each look saw, as a share of max_looks full looks (rule obf_spending)
        planned = cfg.requests * cfg.rule.max_looks
        fractions = tuple(min(n / planned, 1.0) for n in [*(s["requests"] for s in looks), len(records)])
        d = decide(_arm_values(records, "champion", "sampled"), _arm_values(records, "challenger", "sampled"),
                   look, cfg.rule, *users, fractions=fractions)
        summary.update({"action": d.action, "lift": d.lift, "low": d.low, "high": d.high, "why": d.why})
        audit = ""
        if traffic.audited:  # the simulated users' E[clicks] of the lists served: the oracle audits
            oracle = lift_interval(_arm_values(records, "champion", "oracle"),
                                   _arm_values(records, "challenger", "oracle"), 1.96,
                                   *(users if cfg.rule.unit == "user" else (None, None)))
            summary.update({"oracle_lift": oracle[0], "oracle_low": oracle[1], "oracle_high": oracle[2]})
            audit = f" (oracle lift {oracle[0]:+.2%} [{oracle[1]:+.2%}, {oracle[2]:+.2%}])"
        looks.append(summary)
        log("continuous", f"round {r} look {look}: {d.why} -> {d.action}{audit}")
        if d.action != "continue":
            rnd["decision"] = summary
        state.save()
    rnd["explored"] = sum(rec["explored"] for rec in records)
    rnd["until_ms"] = looks[-1]["until_ms"]  # clients: a list younger than its feedback wait is the next round's
    state.save()
    if mlflow.active_run() is not None:
        mlflow.log_dict({"looks": looks}, "ab_looks.json")


def _apply(cfg: ContinuousConfig, state: State, r: int) -> None:
    """Move the champion alias on a promotion; tag the challenger version with what happened."""
    from gref import tracking

    rnd = state.round(r)
    challenger, action = rnd.get("challenger"), rnd["decision"]["action"]
    if challenger is None or rnd.get("applied"):
        return
    if action == "promote" and not cfg.aa:
        tracking.set_aliases(cfg.tracking.registered_model, {"champion": challenger})
        state.data["champion"] = challenger
    if not cfg.aa:
        _tag(cfg, challenger, "gref.loop", f"round {r}: {action} ({rnd['decision']['why']})")
    rnd["applied"] = True
    state.save()


def _challenge(cfg: ContinuousConfig, state: State, r: int, champion: int) -> None:
    """Round r's challenger: trained from the champion on the window's traffic (A/A: the champion
    itself). One that fails to train leaves the champion serving alone, the error kept."""
    rnd = state.round(r)
    if cfg.aa:
        rnd["challenger"] = champion
    else:
        log("continuous", f"round {r}: training a challenger from champion v{champion}")
        try:
            rnd["challenger"] = _train_challenger(cfg, r, champion, _window(cfg, r))
        except Exception as err:  # noqa: BLE001 -- the champion keeps serving whatever broke
            rnd["train_error"] = f"{type(err).__name__}: {err}"[:2000]
            log("continuous", f"round {r}: the challenger failed to train ({rnd['train_error']}); "
                              "the champion serves alone")
    state.save()


def _audit_round(cfg: ContinuousConfig, world, state: State, r: int, arms: dict[str, int]) -> None:
    """The oracle's view of round r on the fixed audit set: each arm vs the round-0 champion, the
    challenger vs the champion (paired), and the round's reward's own lists (the teacher)."""
    rnd = state.round(r)
    base = _audit_values(cfg, world, state.data["round0_champion"])
    for role in ("champion", "challenger"):
        if role in arms:
            values = _audit_values(cfg, world, arms[role])
            rnd[f"audit_{role}"] = float(values.mean())
            rnd[f"audit_{role}_vs_round0"] = paired_ratio_lift(base, values)
    if "challenger" in arms:
        rnd["audit_lift"] = paired_ratio_lift(_audit_values(cfg, world, arms["champion"]),
                                              _audit_values(cfg, world, arms["challenger"]))
    teacher = None if cfg.aa else _teacher_values(cfg, world, r)
    if teacher is not None:
        rnd["audit_teacher"] = float(teacher.mean())
        rnd["audit_teacher_vs_round0"] = paired_ratio_lift(base, teacher)


def run(cfg: ContinuousConfig, app: ServeApp) -> dict[str, Any]:
    """Every round not yet done (resumed from ``out``/state.json), then the summary (also written
    to ``out``/summary.json and MLflow)."""
    import mlflow
    from ray import serve

    from gref import tracking
    from gref.ray_utils import init_ray
    from gref.sim.world import World

    check(cfg)
    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "continuous.yaml")
    state = State(out / "state.json")
    world = World.load(cfg.world) if cfg.world else None  # clients without a simulated world: no oracle
    traffic = traffic_source(cfg, world)
    audit = bool(cfg.audit_requests) and world is not None
    tracking.setup(cfg.tracking)
    mlflow.set_experiment(cfg.tracking.experiment)
    if cfg.direct_ingress and cfg.traffic == "simulated":
        _enable_direct_ingress()
    init_ray()
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    started = time.time()
    parent, _ = tracking.resumable_run(out / "mlflow_run_id", f"continuous-{time.strftime('%Y%m%d-%H%M%S')}")
    with parent:
        if "champion" not in state.data:
            state.data["champion"] = state.data["round0_champion"] = _start_champion(cfg)
            mlflow.log_params({k: str(v)[:500] for k, v in flatten(to_dict(cfg)).items()})
            state.save()
        features = tracking.reranker_dir(_registry_uri(cfg, state.data["round0_champion"])) / "features.json"
        for r in range(cfg.rounds + 1):
            rnd = state.round(r)
            if rnd.get("prepared"):
                continue
            (out / "rounds" / str(r)).mkdir(parents=True, exist_ok=True)
            round_run, _ = tracking.resumable_run(out / "rounds" / str(r) / "mlflow_run_id", f"round-{r}", nested=True)
            with round_run:
                champion = rnd.setdefault("champion", state.data["champion"])
                if r > 0 and "challenger" not in rnd and "train_error" not in rnd:
                    _challenge(cfg, state, r, champion)
                arms = {"champion": champion, **({"challenger": rnd["challenger"]} if "challenger" in rnd else {})}
                if rnd.get("decision") is None or "until_ms" not in rnd:
                    _serve_round(cfg, app, state, traffic, r, arms)
                _apply(cfg, state, r)
                if audit:
                    _audit_round(cfg, world, state, r, arms)
                # the last round's traffic would only train a challenger never decided; A/A trains nothing
                if r < cfg.rounds and not cfg.aa:
                    rnd["data"] = _prepare_round(cfg, rnd, features)
                rnd["prepared"] = True
                state.save()
                metrics = {k: v for k, v in _round_metrics(rnd).items() if math.isfinite(v)}
                mlflow.log_metrics(metrics)
            mlflow.log_metrics(metrics, step=r, run_id=parent.info.run_id)  # per-round curves on the parent
        summary = _summary(cfg, state, time.time() - started, audit)
        if audit:
            summary["final_vs_round0"] = paired_ratio_lift(_audit_values(cfg, world, state.data["round0_champion"]),
                                                     _audit_values(cfg, world, state.data["champion"]))
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        mlflow.log_artifact(str(out / "summary.json"))
        mlflow.log_artifact(str(_plot(summary, out / "rounds.png")))
        mlflow.log_metrics({"promotions": summary["promotions"], **(
            {"false_or_regressing_promotions": summary["regressions_promoted"]} if audit or cfg.aa else {})})
    if cfg.traffic == "clients":  # the clients' endpoint stays up, with the final champion alone
        url, _ = _deploy(cfg, app, {"champion": state.data["champion"]}, f"{state.round(cfg.rounds)['salt']}-after")
        log("continuous", f"{url} keeps serving champion v{state.data['champion']} (app {cfg.app_name})")
    else:
        serve.delete(cfg.app_name)
    return summary


def check(cfg: ContinuousConfig) -> None:
    """Settings that cannot work together, said before anything starts."""
    if cfg.world and not (Path(cfg.world) / "world.json").exists():
        raise ConfigError(f"no simulated world at '{cfg.world}' (make demo / jobs.simulate write DIR/world)")
    if cfg.traffic == "simulated" and not cfg.world:
        raise ConfigError("traffic=simulated sends the simulated users of a world: set world=DIR "
                          "(or traffic=clients to wait for real clients)")
    if cfg.requests < 1 or cfg.feedback_wait_s < 0 or cfg.look_timeout_s <= 0:
        raise ConfigError("requests must be >= 1, feedback_wait_s >= 0 and look_timeout_s > 0")


def _round_metrics(rnd: dict[str, Any]) -> dict[str, float]:
    """A round's numbers: the decision's lift and interval, the oracle's, both arms' clicks."""
    d = rnd.get("decision") or {}
    out = {k: float(d[k]) for k in ("lift", "low", "high", "oracle_lift") if k in d}
    out.update({k: float(rnd[k]) for k in ("audit_champion", "audit_challenger", "audit_teacher") if k in rnd})
    out.update({k: float(v) for k, v in rnd["looks"][-1].items() if k.endswith("_clicks")})
    out["looks"] = float(len(rnd["looks"]))
    out.update(_phase_seconds(rnd))
    return out


def _phase_seconds(rnd: dict[str, Any]) -> dict[str, float]:
    """Where a round's wall-clock time went: ``learn_s`` from the previous round's end to this
    round's first A/B request (preparing that round's traffic, training the challenger, deploying),
    ``serve_s`` its looks. Empty for a round that has not served yet."""
    if not all(k in rnd for k in ("since_ms", "ab_since_ms", "until_ms")):
        return {}
    return {"learn_s": (rnd["ab_since_ms"] - rnd["since_ms"]) / 1000,
            "serve_s": (rnd["until_ms"] - rnd["ab_since_ms"]) / 1000}


def _summary(cfg: ContinuousConfig, state: State, seconds: float, audit: bool) -> dict[str, Any]:
    rounds = [state.round(r) for r in range(cfg.rounds + 1)]
    promoted = [rnd for rnd in rounds if (rnd.get("decision") or {}).get("action") == "promote"]
    # a promotion that regressed: the promoted version's oracle E[clicks] on the audit set is lower
    # (unknown without an oracle, unless A/A: then every promotion is a false one)
    regressions = sum(1 for rnd in promoted if cfg.aa or rnd.get("audit_lift", {}).get("lift", 0.0) < 0) \
        if audit or cfg.aa else None
    final = state.data["champion"]
    out = {"out": str(Path(cfg.out).resolve()), "aa": cfg.aa, "round0_champion": state.data["round0_champion"],
           "final_champion": final, "promotions": len(promoted), "regressions_promoted": regressions,
           "rollbacks": sum(1 for rnd in rounds if (rnd.get("decision") or {}).get("action") == "rollback"),
           "minutes": round(seconds / 60, 1), "rounds": rounds}
    phases = [_phase_seconds(rnd) for rnd in rounds]
    for phase in ("learn", "serve"):
        out[f"{phase}_minutes"] = [round(p.get(f"{phase}_s", 0.0) / 60, 2) for p in phases]  # per round
    return out


def _plot(summary: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = summary["rounds"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    xs = [rnd["round"] for rnd in rounds]
    for role, style in (("champion", "o-"), ("challenger", "s--"), ("teacher", "^:")):
        pts = [(rnd["round"], rnd[f"audit_{role}"]) for rnd in rounds if f"audit_{role}" in rnd]
        if pts:
            axes[0].plot(*zip(*pts), style, label=role)
        pts = [(rnd["round"], rnd["looks"][-1].get(f"{role}_clicks")) for rnd in rounds if rnd.get("looks")]
        pts = [(x, y) for x, y in pts if y is not None]
        if pts:
            axes[1].plot(*zip(*pts), style, label=role)
    for rnd in rounds:
        action = (rnd.get("decision") or {}).get("action")
        if action in ("promote", "rollback"):
            axes[0].annotate(action, (rnd["round"], rnd.get("audit_challenger", np.nan)), fontsize=8)
    axes[0].set_title("oracle E[clicks] / request (fixed audit set)")
    if not any("audit_champion" in rnd for rnd in rounds):
        axes[0].text(0.5, 0.5, "no simulated world: no oracle", ha="center", transform=axes[0].transAxes)
    axes[1].set_title("served clicks / greedy request (A/B)")
    for ax in axes:
        ax.set_xlabel("round")
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
