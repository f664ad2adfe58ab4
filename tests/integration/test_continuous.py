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


def test_two_rounds_learn_decide_and_resume_a_killed_round(ray_cluster, sim_dir, champion, tmp_path, monkeypatch,
                                                           request):
    import mlflow
    from mlflow import MlflowClient
    from ray import serve

    from gref.config import load_config
    from gref.serving.ab import assign_arm
    from gref.serving.feedback import FeedbackStore
    from gref import loop
    from gref.serving import ab_client
    from serve.app import loop_app

    overrides = [f"out={tmp_path / 'loop'}", f"world={sim_dir / 'world'}", f"champion={champion}", "rounds=2",
                 "requests=120", "concurrency=4", "explore=0.25", "audit_requests=100", "rule.max_looks=2",
                 "rule.min_requests=20", f"port={free_ports()[0]}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
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

    request.addfinalizer(serve.shutdown)  # later modules start Serve on their own port (http_options apply at start)
    monkeypatch.setattr(ab_client, "send_traffic", dies_in_round_2)
    with pytest.raises(Killed):
        loop.run(cfg, loop_app())
    state = json.loads((tmp_path / "loop" / "state.json").read_text())
    assert state["rounds"]["1"]["prepared"] and "decision" not in state["rounds"]["2"]
    monkeypatch.setattr(ab_client, "send_traffic", real)
    summary = loop.run(cfg, loop_app())  # the same call: resumes round 2

    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert rounds[0]["decision"]["action"] == "none" and "challenger" not in rounds[0]
    for r in rounds[1:]:
        assert r["challenger"] > summary["round0_champion"]  # trained and registered this round
        assert r["decision"]["action"] in ("promote", "rollback", "keep")
        assert 1 <= len(r["looks"]) <= 2 and "oracle_lift" in r["decision"]
        assert "audit_lift" in r and r["audit_champion"] > 0
        assert r["audit_teacher"] > 0 and "audit_teacher_vs_round0" in r  # the round's reward audited too
    # where the time went, per round: learning (prepare, train, deploy) then serving; round 1 trained
    assert len(summary["learn_minutes"]) == len(summary["serve_minutes"]) == 3
    assert summary["learn_minutes"][1] > summary["learn_minutes"][0] >= 0 and min(summary["serve_minutes"]) > 0
    # the store: every request once, though round 2's first 50 were sent twice
    sent = sum(len(r["looks"]) * 120 for r in rounds)
    counts = FeedbackStore(tmp_path / "loop" / "feedback.db").counts()
    assert counts["served"] == sent
    # each round's partition = its own requests, exploration logged with its propensity
    for r in rounds[:2]:
        table = pq.read_table(tmp_path / "loop" / "rounds" / str(r["round"]) / "logs" / "served.parquet")
        assert len(set(table.column("request_id").to_pylist())) == len(r["looks"]) * 120
        explored = table.filter(table.column("explored")).column("log_propensity").to_pylist()
        greedy = table.filter(pc.invert(table.column("explored"))).column("log_propensity").to_pylist()
        assert explored and max(explored) < 0 and set(greedy) == {0.0}
        assert r["data"]["sequences"]["train"] > 0
    # every round splits users by its own salt, and the Router followed it
    assert len({r["salt"] for r in rounds}) == 3
    # the config asks for direct ingress; the tests' Ray was started without it: the looks went
    # through Serve's proxy (benchmarks/results/continuous-*: "direct" in a Ray the loop starts)
    assert {r["ingress"] for r in rounds} == {"proxy"}
    for r in rounds[1:]:
        records = [rec for k in range(1, len(r["looks"]) + 1) for rec in json.loads(
            (tmp_path / "loop" / "rounds" / str(r["round"]) / f"look{k}.json").read_text())]
        assert {rec["arm"] for rec in records} == {"champion", "challenger"}
        assert all(rec["arm"] == assign_arm(rec["user"], {"champion": 1.0, "challenger": 1.0}, r["salt"])
                   for rec in records)
    # the registry: the champion alias is the final champion, the challenger alias the last one, each
    # challenger version tagged with its decision
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    assert int(client.get_model_version_by_alias("gref-reranker", "champion").version) == summary["final_champion"]
    assert int(client.get_model_version_by_alias("gref-reranker", "challenger").version) == rounds[2]["challenger"]
    for r in rounds[1:]:
        tag = client.get_model_version("gref-reranker", str(r["challenger"])).tags["gref.loop"]
        assert tag.startswith(f"round {r['round']}: {r['decision']['action']}")
    # MLflow: one parent run with a nested run per round, the plot logged
    parent = (tmp_path / "loop" / "mlflow_run_id").read_text().strip()
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


