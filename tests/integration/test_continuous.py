"""Continuous training end to end on the real local Ray (Serve + Train + Data + MLflow): two rounds
on the small world, the second one killed in the middle of its A/B traffic and resumed by the
same call -- nothing counted twice, the loop's records in the store, the registry and MLflow; and
a round with real clients' traffic (the loop waits for it in the feedback store)."""

from __future__ import annotations

import json

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from helpers import free_ports


@pytest.fixture(scope="module")
def champion(prep_dir, tmp_path_factory):
    """A tiny untrained GReF as a model directory (the loop registers it as round 0's champion)."""
    from gref.model.config import ModelConfig
    from gref.reranker_io import save_reranker
    from gref.train.steps import build_model, data_meta

    root = tmp_path_factory.mktemp("loop-champion")
    model = build_model(ModelConfig(d_model=32, enc_layers=1, dec_layers=1, omtp_heads=2), data_meta(prep_dir))
    return save_reranker(root / "gref", model, prep_dir / "features.json")


class Killed(Exception):
    """Stands for the driver dying mid-look."""


@pytest.fixture(scope="module")
def loop_run(ray_cluster, sim_dir, champion, tmp_path_factory) -> dict:
    """Two rounds on the small world, the driver killed halfway through round 2's first look and the
    same call run again: what the tests below read (the summary, state.json at the kill, the dirs)."""
    from ray import serve

    from gref import loop
    from gref.config import load_config
    from gref.serving import ab_client
    from serve.app import loop_app

    tmp = tmp_path_factory.mktemp("continuous")
    overrides = [f"out={tmp / 'loop'}", f"world={sim_dir / 'world'}", f"champion={champion}", "rounds=2",
                 "requests=120", "concurrency=4", "explore=0.25", "audit_requests=100", "rule.max_looks=2",
                 "rule.min_requests=20", f"port={free_ports()[0]}", f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
                 "app.reranker_cpus=0.1", "app.router_cpus=0.05",
                 *[f"{stage}.{key}" for stage in ("reward", "dpo") for key in (
                     "optim.epochs=1", "optim.batch_size=64", "scaling.num_workers=0", "eval.max_requests=200")]]
    cfg = load_config(loop.ContinuousConfig, "configs/continuous.yaml", overrides)

    real = ab_client.send_traffic

    def dies_in_round_2(url, world, reqs, n, seed, concurrency, api_key, label):
        if label.startswith("round 2"):
            real(url, world, reqs[:50], n, seed, concurrency, api_key, label)  # half of the look is served
            raise Killed(label)
        return real(url, world, reqs, n, seed, concurrency, api_key, label)

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(ab_client, "send_traffic", dies_in_round_2)
            with pytest.raises(Killed):
                loop.run(cfg, loop_app())
        killed = json.loads((tmp / "loop" / "state.json").read_text())
        summary = loop.run(cfg, loop_app())  # the same call: resumes round 2
    finally:
        serve.shutdown()  # later tests start Serve on their own port (http_options apply at start)
    return {"summary": summary, "state_at_kill": killed, "out": tmp / "loop", "tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}"}


def test_a_killed_round_resumes_and_counts_every_request_once(loop_run):
    killed, summary = loop_run["state_at_kill"], loop_run["summary"]
    assert killed["rounds"]["1"]["prepared"] and "decision" not in killed["rounds"]["2"]
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2] and "decision" in rounds[2]
    # the store: every request once, though round 2's first 50 were sent twice
    from gref.serving.feedback import FeedbackStore

    sent = sum(len(r["looks"]) * 120 for r in rounds)
    assert FeedbackStore(loop_run["out"] / "feedback.db").counts()["served"] == sent


def test_every_round_trains_a_challenger_and_decides_the_oracle_auditing(loop_run):
    summary = loop_run["summary"]
    rounds = summary["rounds"]
    assert rounds[0]["decision"]["action"] == "none" and "challenger" not in rounds[0]
    for r in rounds[1:]:
        assert r["challenger"] > summary["round0_champion"]  # trained and registered this round
        assert r["decision"]["action"] in ("promote", "rollback", "keep")
        assert 1 <= len(r["looks"]) <= 2 and "oracle_lift" in r["decision"]
        assert "audit_lift" in r and r["audit_champion"] > 0
        assert r["audit_teacher"] > 0 and "audit_teacher_vs_round0" in r  # the round's reward audited too


def test_each_rounds_time_is_split_into_learning_and_serving(loop_run):
    summary = loop_run["summary"]
    assert len(summary["learn_minutes"]) == len(summary["serve_minutes"]) == 3
    assert summary["learn_minutes"][1] > summary["learn_minutes"][0] >= 0 and min(summary["serve_minutes"]) > 0


def test_each_round_exports_its_own_requests_with_the_propensities_of_exploration(loop_run):
    for r in loop_run["summary"]["rounds"][:2]:
        table = pq.read_table(loop_run["out"] / "rounds" / str(r["round"]) / "logs" / "served.parquet")
        assert len(set(table.column("request_id").to_pylist())) == len(r["looks"]) * 120
        explored = table.filter(table.column("explored")).column("log_propensity").to_pylist()
        greedy = table.filter(pc.invert(table.column("explored"))).column("log_propensity").to_pylist()
        assert explored and max(explored) < 0 and set(greedy) == {0.0}
        assert r["data"]["sequences"]["train"] > 0


def test_every_round_splits_users_by_its_own_salt(loop_run):
    from gref.serving.ab import assign_arm

    rounds = loop_run["summary"]["rounds"]
    assert len({r["salt"] for r in rounds}) == 3
    # the config asks for direct ingress; the tests' Ray was started without it: the looks went
    # through Serve's proxy (benchmarks/results/continuous-*: "direct" in a Ray the loop starts)
    assert {r["ingress"] for r in rounds} == {"proxy"}
    for r in rounds[1:]:  # the Router followed the round's salt
        records = [rec for k in range(1, len(r["looks"]) + 1) for rec in json.loads(
            (loop_run["out"] / "rounds" / str(r["round"]) / f"look{k}.json").read_text())]
        assert {rec["arm"] for rec in records} == {"champion", "challenger"}
        assert all(rec["arm"] == assign_arm(rec["user"], {"champion": 1.0, "challenger": 1.0}, r["salt"])
                   for rec in records)


def test_the_registry_holds_the_champion_the_last_challenger_and_every_decision(loop_run):
    from mlflow import MlflowClient

    summary = loop_run["summary"]
    rounds = summary["rounds"]
    client = MlflowClient(loop_run["tracking_uri"], registry_uri=loop_run["tracking_uri"])
    assert int(client.get_model_version_by_alias("gref-reranker", "champion").version) == summary["final_champion"]
    assert int(client.get_model_version_by_alias("gref-reranker", "challenger").version) == rounds[2]["challenger"]
    for r in rounds[1:]:
        tag = client.get_model_version("gref-reranker", str(r["challenger"])).tags["gref.loop"]
        assert tag.startswith(f"round {r['round']}: {r['decision']['action']}")


def test_mlflow_holds_a_parent_run_a_nested_run_per_round_and_the_plot(loop_run):
    from mlflow import MlflowClient

    client = MlflowClient(loop_run["tracking_uri"])
    parent = (loop_run["out"] / "mlflow_run_id").read_text().strip()
    nested = client.search_runs([client.get_run(parent).info.experiment_id],
                                filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert {"round-0", "round-1", "round-2"} <= {run.info.run_name for run in nested}
    assert "rounds.png" in {a.path for a in client.list_artifacts(parent)}
    assert len(client.get_metric_history(parent, "audit_champion")) == 3


def test_real_clients_mode_decides_on_the_stores_served_clicks(ray_cluster, sim_dir, champion, tmp_path, request):
    """``traffic=clients``: the loop sends nothing; clients of the endpoint (here a thread of
    simulated users, which the loop knows nothing of: no world, no oracle) call it all along, and
    each look waits for the store to hold the round's lists. The decision's records are exactly the
    lists the clients were served by the round's arms, with the clicks the clients posted; the
    rounds' export windows follow one another (what was served while the challenger trained is
    round 1's, not lost)."""
    import threading

    import requests as http
    from ray import serve

    from gref.config import load_config
    from gref.serving.ab import assign_arm
    from gref.sim.world import World
    from gref import loop
    from gref.serving import ab_client
    from serve.app import loop_app

    port = free_ports()[0]
    overrides = [f"out={tmp_path / 'loop'}", "world=", "traffic=clients", f"champion={champion}", "rounds=1",
                 "requests=60", "feedback_wait_s=0.5", "look_timeout_s=240", "explore=0.25", "rule.max_looks=2",
                 "rule.min_requests=10", f"port={port}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                 "app.reranker_cpus=0.1", "app.router_cpus=0.05",
                 *[f"{stage}.{key}" for stage in ("reward", "dpo") for key in (
                     "optim.epochs=1", "optim.batch_size=64", "scaling.num_workers=0", "eval.max_requests=200")]]
    cfg = load_config(loop.ContinuousConfig, "configs/continuous.yaml", overrides)
    world, stop, served = World.load(sim_dir / "world"), threading.Event(), []

    def clients() -> None:  # 16 requests at a time, every answer's clicks posted back, until the loop ends
        batch = 0
        while not stop.is_set():
            reqs = ab_client.simulated_requests(world, 16, 10_000 + batch)
            for i, req in enumerate(reqs):
                req["request_id"] = f"client-{batch}-{i}"
            try:
                served.extend(ab_client.send_traffic(f"http://127.0.0.1:{port}", world, reqs, 10, batch, 4, "",
                                                   "clients")[0])
            except http.ConnectionError:  # the app is not up yet
                pass
            batch += 1
            stop.wait(0.2)

    request.addfinalizer(serve.shutdown)
    thread = threading.Thread(target=clients, daemon=True)
    thread.start()
    try:
        summary = loop.run(cfg, loop_app())
    finally:
        stop.set()
        thread.join(60)

    r0, r1 = summary["rounds"]
    assert r1["challenger"] > summary["round0_champion"] and r1["decision"]["action"] in ("promote", "rollback", "keep")
    assert "oracle_lift" not in r1["decision"] and "audit_lift" not in r1 and summary["regressions_promoted"] is None
    assert r1["since_ms"] == r0["until_ms"]  # one partition after the other
    posted = {rec["request_id"]: rec for rec in served}
    for rnd in (r0, r1):
        records = [rec for k in range(1, len(rnd["looks"]) + 1) for rec in json.loads(
            (tmp_path / "loop" / "rounds" / str(rnd["round"]) / f"look{k}.json").read_text())]
        assert len(records) >= 60 * len(rnd["looks"]) and len({rec["request_id"] for rec in records}) == len(records)
        arms = {"champion": rnd["champion"], **({"challenger": rnd["challenger"]} if "challenger" in rnd else {})}
        weights = dict.fromkeys(arms, 1.0)
        for rec in records:  # the round's arms, the Router's split, the clicks the client posted
            assert rec["model"].endswith(f"#{arms[rec['arm']]}") and rec["arm"] == assign_arm(rec["user"], weights,
                                                                                              rnd["salt"])
            assert rec["sampled"]["click"] == posted[rec["request_id"]]["sampled"]["click"]
            assert rnd["ab_since_ms"] <= rec["ts"] < rnd["until_ms"]
    assert {rec["arm"] for k in (1, 2) if (tmp_path / "loop/rounds/1" / f"look{k}.json").exists()
            for rec in json.loads((tmp_path / "loop/rounds/1" / f"look{k}.json").read_text())} == {"champion",
                                                                                                  "challenger"}
    assert r0["data"]["sequences"]["train"] > 0  # round 0's partition trained round 1's challenger
    # the clients' endpoint is left serving the final champion alone
    req = ab_client.simulated_requests(world, 1, 1)[0]
    after = http.post(f"http://127.0.0.1:{port}/rerank", json={"user_id": "u-after", "candidates": req["candidates"],
                                                              "n": 4}, timeout=60).json()
    assert (after["arm"], str(after["model"]["version"])) == ("champion", str(summary["final_champion"]))


