"""One round after another: train a challenger on what was served, A/B it against the champion,
apply the decision, export the round's traffic for the next (the steps of gref.loop's docstring)."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from gref.cli import log
from gref.config import flatten, save_yaml, to_dict
from gref.loop.audit import audit_round, audit_values
from gref.loop.config import ContinuousConfig, ServeApp, check
from gref.loop.report import plot, round_metrics, summary as loop_summary
from gref.loop.state import LoopState, Round
from gref.loop.traffic import TrafficSource, arm_users, arm_values, traffic_source
from gref.serving.promotion import decide, lift_interval
from gref.stats import paired_ratio_lift


# ---------------------------------------------------------------- registry


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


# ---------------------------------------------------------------- serving


def _deploy(cfg: ContinuousConfig, app: ServeApp, arms: dict[str, int], salt: str) -> tuple[str, str]:
    """(Re)deploy the loop's Serve app with these arms (name -> registered version) and user split.
    -> (the URL the looks go to, "direct" | "proxy")"""
    from ray import serve

    args = {"tracking_uri": cfg.tracking.uri, "explore": cfg.explore, "explore_temperature": cfg.explore_temperature,
            **cfg.app, "feedback_db": cfg.feedback_db(),
            "salt": salt,  # the round's salt, as state.json records it
            "arms": {arm: cfg.version_uri(v) for arm, v in arms.items()}}
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


# ---------------------------------------------------------------- data and training


def _prepare_round(cfg: ContinuousConfig, rnd: Round, features: Path) -> dict[str, Any]:
    """Export the round's window of the feedback store and prepare it alone (the fixed spec)."""
    from gref.data import prepare

    root = Path(cfg.out) / "rounds" / str(rnd.round)
    rows = export_round(cfg, rnd, root / "logs" / "served.parquet")
    summary = prepare.run(str(root / "logs"), str(root / "prep"), replace(cfg.dataset, features=str(features)))
    return {"rows": rows, "sequences": summary["sequences"], "quarantined": summary["quarantined"]}


def export_round(cfg: ContinuousConfig, rnd: Round, dest: Path) -> int:
    """The round's window of the store the app writes to (``app.feedback_db``, e.g. PostgreSQL, or
    out/feedback.db) as raw-log Parquet at ``dest``; returns the number of rows."""
    from gref.serving.feedback import FeedbackStore

    return FeedbackStore(cfg.feedback_db()).export_logs(dest, since_ms=rnd.since_ms, until_ms=rnd.until_ms)


def window(cfg: ContinuousConfig, r: int) -> Path:
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


def train_challenger(cfg: ContinuousConfig, r: int, champion: int, data: Path) -> int:
    """Reward model + post-training from the champion on ``data``; the registered version."""
    from gref import tracking
    from gref.recipe import post_train

    storage = str(cfg.training_storage())
    rcfg = replace(cfg.reward, data=str(data), init=cfg.version_uri(champion), tracking=cfg.tracking,
                   eval=replace(cfg.reward.eval, world=""), run=replace(cfg.reward.run, name=f"round{r}-reward",
                                                                        storage=storage))
    dcfg = replace(cfg.dpo, data=str(data), reward="", register=True, tracking=cfg.tracking,
                   eval=replace(cfg.dpo.eval, world=""),  # oracle-free model selection
                   run=replace(cfg.dpo.run, name=f"round{r}-post", storage=storage))
    outcome, _ = post_train(dcfg, tracking.load_reranker_uri(cfg.version_uri(champion)), rcfg)
    version = int(outcome["registered_version"])
    tracking.set_aliases(cfg.tracking.registered_model, {"challenger": version})
    return version



# ---------------------------------------------------------------- one round


def _serve_round(cfg: ContinuousConfig, app: ServeApp, state: LoopState, traffic: TrafficSource, r: int) -> None:
    """The round's A/B looks (round 0 / no challenger: one look, nothing to decide)."""
    import mlflow

    rnd, arms = state.round(r), state.round(r).arms
    # the round's export window opens once, resumed or not, where the previous round's closed: what
    # clients were served while the challenger trained is the next partition's, not lost
    if rnd.since_ms is None:
        rnd.since_ms = (state.round(r - 1).until_ms if r else None) or int(time.time() * 1000)
    state.save()
    # each round is a new experiment with its own user split: a verdict never rides on an earlier
    # round's luck of the split (an A/A loop's arms never change, so a hash of them would split alike)
    # a salt of the user's (app.salt) prefixes the round's: every round still splits users anew
    if rnd.salt is None:
        rnd.salt = f"{cfg.app.get('salt') or 'continuous'}-s{cfg.seed}-r{r}"
    url, rnd.ingress = _deploy(cfg, app, arms, rnd.salt)
    if rnd.ab_since_ms is None:  # clients' lists count from the first deploy's end
        rnd.ab_since_ms = int(time.time() * 1000)
    records_dir = Path(cfg.out) / "rounds" / str(r)
    records_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    for look in range(1, len(rnd.looks) + 1):  # looks done before a restart: their records are on disk
        records += json.loads((records_dir / f"look{look}.json").read_text())
    while rnd.decision is None:
        look = len(rnd.looks) + 1
        since_ms = rnd.looks[-1]["until_ms"] if rnd.looks else rnd.ab_since_ms
        new, until_ms = traffic.look(url, r, look, arms, since_ms)
        (records_dir / f"look{look}.json").write_text(json.dumps(new))
        records += new
        clicks = {arm: arm_values(records, arm, "sampled") for arm in arms}
        summary = {"look": look, "requests": len(records), "until_ms": until_ms,
                   **{f"{arm}_clicks": float(v.mean()) for arm, v in clicks.items() if len(v)}}
        if "challenger" not in arms:
            rnd.looks.append(summary)
            rnd.decision = {"action": "none", "why": "no challenger this round"}
            break
        users = arm_users(records, "champion"), arm_users(records, "challenger")
        # the information each look saw, as a share of max_looks full looks (rule obf_spending)
        planned = cfg.requests * cfg.rule.max_looks
        fractions = tuple(min(n / planned, 1.0) for n in [*(s["requests"] for s in rnd.looks), len(records)])
        d = decide(arm_values(records, "champion", "sampled"), arm_values(records, "challenger", "sampled"),
                   look, cfg.rule, *users, fractions=fractions)
        summary.update({"action": d.action, "lift": d.lift, "low": d.low, "high": d.high, "why": d.why})
        audit = ""
        if traffic.audited:  # the simulated users' E[clicks] of the lists served: the oracle audits
            oracle = lift_interval(arm_values(records, "champion", "oracle"),
                                   arm_values(records, "challenger", "oracle"), 1.96,
                                   *(users if cfg.rule.unit == "user" else (None, None)))
            summary.update({"oracle_lift": oracle[0], "oracle_low": oracle[1], "oracle_high": oracle[2]})
            audit = f" (oracle lift {oracle[0]:+.2%} [{oracle[1]:+.2%}, {oracle[2]:+.2%}])"
        rnd.looks.append(summary)
        log("continuous", f"round {r} look {look}: {d.why} -> {d.action}{audit}")
        if d.action != "continue":
            rnd.decision = summary
        state.save()
    rnd.explored = sum(rec["explored"] for rec in records)
    rnd.until_ms = rnd.looks[-1]["until_ms"]  # clients: a list younger than its feedback wait is the next round's
    state.save()
    if mlflow.active_run() is not None:
        mlflow.log_dict({"looks": rnd.looks}, "ab_looks.json")


def _apply(cfg: ContinuousConfig, state: LoopState, r: int) -> None:
    """Move the champion alias on a promotion; tag the challenger version with what happened."""
    from gref import tracking

    rnd = state.round(r)
    if rnd.challenger is None or rnd.applied:
        return
    if rnd.action == "promote" and not cfg.aa:
        tracking.set_aliases(cfg.tracking.registered_model, {"champion": rnd.challenger})
        state.champion = rnd.challenger
    if not cfg.aa:
        _tag(cfg, rnd.challenger, "gref.loop", f"round {r}: {rnd.action} ({rnd.decision['why']})")
    rnd.applied = True
    state.save()


def _challenge(cfg: ContinuousConfig, state: LoopState, r: int) -> None:
    """Round r's challenger: trained from the champion on the window's traffic (A/A: the champion
    itself). One that fails to train leaves the champion serving alone, the error kept."""
    rnd = state.round(r)
    if cfg.aa:
        rnd.challenger = rnd.champion
    else:
        log("continuous", f"round {r}: training a challenger from champion v{rnd.champion}")
        try:
            rnd.challenger = train_challenger(cfg, r, rnd.champion, window(cfg, r))
        except Exception as err:  # noqa: BLE001 -- the champion keeps serving whatever broke
            rnd.train_error = f"{type(err).__name__}: {err}"[:2000]
            log("continuous", f"round {r}: the challenger failed to train ({rnd.train_error}); "
                              "the champion serves alone")
    state.save()


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
    state = LoopState.load(out / "state.json")
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
        if state.champion is None:
            state.champion = state.round0_champion = _start_champion(cfg)
            mlflow.log_params({k: str(v)[:500] for k, v in flatten(to_dict(cfg)).items()})
            state.save()
        features = tracking.reranker_dir(cfg.version_uri(state.round0_champion)) / "features.json"
        for r in range(cfg.rounds + 1):
            rnd = state.round(r)
            if rnd.prepared:
                continue
            (out / "rounds" / str(r)).mkdir(parents=True, exist_ok=True)
            round_run, _ = tracking.resumable_run(out / "rounds" / str(r) / "mlflow_run_id", f"round-{r}", nested=True)
            with round_run:
                if rnd.champion is None:
                    rnd.champion = state.champion
                if r > 0 and rnd.challenger is None and rnd.train_error is None:
                    _challenge(cfg, state, r)
                if rnd.decision is None or rnd.until_ms is None:
                    _serve_round(cfg, app, state, traffic, r)
                _apply(cfg, state, r)
                if audit:
                    audit_round(cfg, world, state, r)
                # the last round's traffic would only train a challenger never decided; A/A trains nothing
                if r < cfg.rounds and not cfg.aa:
                    rnd.data = _prepare_round(cfg, rnd, features)
                rnd.prepared = True
                state.save()
                metrics = {k: v for k, v in round_metrics(rnd).items() if math.isfinite(v)}
                mlflow.log_metrics(metrics)
            mlflow.log_metrics(metrics, step=r, run_id=parent.info.run_id)  # per-round curves on the parent
        summary = loop_summary(cfg, state, time.time() - started, audit)
        if audit:
            summary["final_vs_round0"] = paired_ratio_lift(audit_values(cfg, world, state.round0_champion),
                                                           audit_values(cfg, world, state.champion))
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        mlflow.log_artifact(str(out / "summary.json"))
        mlflow.log_artifact(str(plot(summary, out / "rounds.png")))
        mlflow.log_metrics({"promotions": summary["promotions"], **(
            {"false_or_regressing_promotions": summary["regressions_promoted"]} if audit or cfg.aa else {})})
    if cfg.traffic == "clients":  # the clients' endpoint stays up, with the final champion alone
        url, _ = _deploy(cfg, app, {"champion": state.champion}, f"{state.round(cfg.rounds).salt}-after")
        log("continuous", f"{url} keeps serving champion v{state.champion} (app {cfg.app_name})")
    else:
        serve.delete(cfg.app_name)
    return summary
