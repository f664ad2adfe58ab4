"""The Ray Serve application over real HTTP on a free loopback port: answers, every bad payload
gets its 4xx (a hand-picked corpus and generated bodies), API keys with scopes, Prometheus
metrics, sticky weighted A/B routing, a weight change without dropped requests, a killed
reranker replica replaced while requests succeed, feedback that survives a router restart."""

from __future__ import annotations

import json
import math
import re
import socket
import threading
import time

import pyarrow.parquet as pq
import pytest
import requests
from helpers import free_ports

from gref.data.schema import DatasetConfig, canonical_schema


@pytest.fixture(scope="module")
def registry(prep_dir, tmp_path_factory):
    """The default arms' models, untrained and tiny: a GenReranker as gref-reranker@champion and
    a NAR4Rec baseline as gref-nar4rec@champion."""
    import mlflow

    from gref import tracking
    from gref.baselines import BaselineConfig
    from gref.model.config import ModelConfig
    from gref.reranker_io import save_reranker
    from gref.train.steps import build_baseline_model, build_model, data_meta

    root = tmp_path_factory.mktemp("serve")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    meta = data_meta(prep_dir)
    gref_dir = save_reranker(root / "gref", build_model(ModelConfig(d_model=32, enc_layers=1, dec_layers=1, omtp_heads=2), meta),
                             prep_dir / "features.json")
    nar_dir = save_reranker(root / "nar4rec", build_baseline_model(BaselineConfig(kind="nar4rec", d_model=32, layers=1), meta),
                            prep_dir / "features.json")
    cfg = tracking.TrackingConfig(uri=uri)
    tracking.setup(cfg)
    mlflow.set_experiment(cfg.experiment)
    with mlflow.start_run(run_name="serve-fixture"):
        for name, model_dir in (("gref-reranker", gref_dir), ("gref-nar4rec", nar_dir)):
            tracking.set_aliases(name, {"champion": tracking.log_reranker(model_dir, name)["version"]})
    return {"uri": uri, "root": root}


@pytest.fixture(scope="module")
def app(ray_cluster, registry):
    from ray import serve

    from gref.serving.auth import KeyFile
    from serve.app import build_app

    keyfile = KeyFile(registry["root"] / "api_keys.json")
    keys = {"tester": keyfile.create("tester", ["rerank", "feedback", "metrics"]),
            "other": keyfile.create("other", ["rerank", "feedback"]),  # another client of the same endpoint
            "reader": keyfile.create("reader", ["rerank"])}
    port = free_ports()[0]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {"tracking_uri": registry["uri"], "feedback_db": str(registry["root"] / "feedback.db"),
            "colocate": False, "replicas": 2, "reranker_cpus": 0.1, "router_cpus": 0.05, "weights": {"gref": 1, "nar4rec": 1},  # the default arms
            "body_timeout_s": 3.0, "store_timeout_s": 1.0, "api_keys": str(keyfile.path)}
    serve.run(build_app(args), name="gref", route_prefix="/", logging_config={"enable_access_log": False})
    yield {"url": f"http://127.0.0.1:{port}", "args": args, "keys": keys, "keyfile": keyfile}
    serve.delete("gref")
    serve.shutdown()


@pytest.fixture(scope="module")
def candidates(prep_dir):
    """Raw candidates of one logged request, under their raw-log column names."""
    from gref.data.features import FeatureSpec

    spec = FeatureSpec.load(prep_dir / "features.json")
    out = []
    for i in range(12):
        c = {"item_id": f"item-{i}", **{col: 0.1 * i for col in spec.num_cols}}
        c.update({col: next(iter(spec.vocab[col])) for col in spec.cat_cols})
        out.append(c)
    out[0][spec.cat_cols[0] if spec.cat_cols else "cat_unused"] = "never-seen-value"  # -> OOV, still fine
    return out


def call(app, method, path, key="tester", **kwargs):
    """An HTTP call with the client ``key``'s API key (None: without a key)."""
    headers = {**kwargs.pop("headers", {}), **({"Authorization": f"Bearer {app['keys'][key]}"} if key else {})}
    return requests.request(method, f"{app['url']}{path}", headers=headers, timeout=kwargs.pop("timeout", 60),
                            **kwargs)


def rerank(app, user, cands, n=5, key="tester", **extra):
    return call(app, "POST", "/rerank", key, json={"user_id": user, "candidates": cands, "n": n, **extra})


def test_rerank_answers_with_the_arm_and_its_model_version(app, candidates):
    r = rerank(app, "user-1", candidates)
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out["items"]) == 5 and len(set(out["items"])) == 5
    assert set(out["items"]) <= {c["item_id"] for c in candidates}
    assert out["arm"] in ("gref", "nar4rec")
    assert out["model"]["version"] == "1" and out["model"]["kind"] == out["arm"]
    assert out["model"]["name"] == {"gref": "models:/gref-reranker@champion",
                                    "nar4rec": "models:/gref-nar4rec@champion"}[out["arm"]]
    assert out["latency_ms"] > 0
    # where the time went (W3C Server-Timing): every stage, in ms, within the Router's total
    stages = dict(part.strip().split(";", 1) for part in r.headers["Server-Timing"].split(","))
    ms = {k: float(v.removeprefix("dur=")) for k, v in stages.items() if v.startswith("dur=")}
    assert set(ms) == {"parse", "arm", "queue", "encode", "decode", "store", "total"} and min(ms.values()) >= 0
    assert ms["decode"] > 0 and ms["encode"] + ms["decode"] <= ms["arm"] + 0.01 and ms["arm"] <= ms["total"]
    assert ms["parse"] + ms["arm"] + ms["store"] <= ms["total"] + 0.01
    assert int(stages["batch"].removeprefix('desc="').rstrip('"')) >= 1  # the requests decoded together
    assert requests.get(f"{app['url']}/healthz", timeout=10).json()["status"] == "ok"


def _bad_payloads(cands):
    long_id = "u" * 500
    return [
        ("not json", b"{user_id: ", 400),
        ("array", b"[1, 2]", 400),
        ("NaN", b'{"user_id": "u", "candidates": [{"item_id": "a", "num_x": NaN}], "n": 1}', 400),
        ("Infinity", b'{"user_id": "u", "candidates": [{"item_id": "a", "num_x": Infinity}], "n": 1}', 400),
        ("missing user", {"candidates": cands}, 422),
        ("missing candidates", {"user_id": "u"}, 422),
        ("candidates not a list", {"user_id": "u", "candidates": "a,b"}, 422),
        ("wrong feature type", {"user_id": "u", "candidates": [{"item_id": "a", "num_x": "high"}], "n": 1}, 422),
        ("huge number", b'{"user_id": "u", "candidates": [{"item_id": "a", "num_x": 1e999}], "n": 1}', 422),
        ("duplicate ids", {"user_id": "u", "candidates": [cands[0], cands[0]], "n": 1}, 422),
        ("empty candidates", {"user_id": "u", "candidates": [], "n": 1}, 422),
        ("too many candidates", {"user_id": "u", "candidates": [{"item_id": str(i)} for i in range(201)]}, 422),
        ("n < 1", {"user_id": "u", "candidates": cands, "n": 0}, 422),
        ("n > candidates", {"user_id": "u", "candidates": cands[:3], "n": 4}, 422),
        ("n not an int", {"user_id": "u", "candidates": cands, "n": 2.5}, 422),
        ("id too long", {"user_id": long_id, "candidates": cands}, 422),
        ("item id too long", {"user_id": "u", "candidates": [{"item_id": long_id}], "n": 1}, 422),
        ("oversized body", {"user_id": "u", "candidates": cands, "pad": "x" * 1_100_000}, 413),
    ]


def test_every_bad_payload_gets_a_4xx_with_a_message(app, candidates):
    for name, payload, status in _bad_payloads(candidates):
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        r = call(app, "POST", "/rerank", data=data, headers={"Content-Type": "application/json"}, timeout=30)
        assert r.status_code == status, f"{name}: {r.status_code} {r.text}"
        assert r.json()["error"], name
    bad_feedback = [({"request_id": "never-served", "feedback": []}, 404), ({"request_id": 3}, 422), (b"[]", 400)]
    for payload, status in bad_feedback:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        assert call(app, "POST", "/feedback", data=data, timeout=30).status_code == status, payload


def _never_a_5xx(r: requests.Response, name: str) -> int:
    assert r.status_code < 500, f"{name}: {r.status_code} {r.text[:300]}"
    if r.status_code >= 400:
        assert r.json()["error"], name
    return r.status_code


def test_hostile_and_generated_bodies_never_get_a_5xx(app, candidates):
    """The fuzz corpus over real HTTP (benchmarks/fuzz.py runs >= 10,000 of these): the hand-picked
    pathological bodies, then bodies generated by hypothesis, each answered within 30 s."""
    from hypothesis import HealthCheck, Phase, given, settings

    from gref.serving.fuzzing import feedback_pathological, pathological, strategies

    statuses = {}
    for name, data, ctype in pathological(candidates[:4]):
        r = call(app, "POST", "/rerank", data=data, headers={"Content-Type": ctype}, timeout=30)
        statuses[name] = _never_a_5xx(r, name)
    assert statuses["deep array"] == 400 and statuses["huge integer feature"] == 422  # 500s before
    assert statuses["lone surrogate id"] == 422 and statuses["text/plain JSON"] == 415
    served = rerank(app, "fuzz-user", candidates, n=3).json()
    for name, data, ctype in feedback_pathological(served["request_id"], served["items"]):
        r = call(app, "POST", "/feedback", data=data, headers={"Content-Type": ctype}, timeout=30)
        assert 400 <= _never_a_5xx(r, name) < 500, name

    @settings(max_examples=150, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategies())
    def one(case):
        data, ctype = case
        for path in ("/rerank", "/feedback"):
            _never_a_5xx(call(app, "POST", path, data=data, headers={"Content-Type": ctype} if ctype else {},
                              timeout=30), data[:80])

    one()


def test_api_keys_scopes_rotation_and_feedback_bound_to_the_client(app, candidates):
    body = {"user_id": "auth-user", "candidates": candidates, "n": 3}
    assert call(app, "POST", "/rerank", key=None, json=body).status_code == 401
    assert requests.post(f"{app['url']}/rerank", json=body, headers={"X-API-Key": "gref_x_wrong"},
                         timeout=30).status_code == 401
    assert requests.post(f"{app['url']}/rerank", json=body, headers={"X-API-Key": app["keys"]["tester"]},
                         timeout=30).status_code == 200  # the other header form
    assert call(app, "GET", "/healthz", key=None).status_code == 200  # open: load balancers probe it
    assert call(app, "GET", "/metrics", key="other").status_code == 403  # no metrics scope
    served = rerank(app, "auth-user", candidates, n=3).json()
    post = {"request_id": served["request_id"], "feedback": [{"item_id": served["items"][0], "click": 1}]}
    assert call(app, "POST", "/feedback", key=None, json=post).status_code == 401
    assert call(app, "POST", "/feedback", key="reader", json=post).status_code == 403  # rerank scope only
    r = call(app, "POST", "/feedback", key="other", json=post)  # a client that was not served this list
    assert r.status_code == 403 and "another client" in r.json()["error"], r.text
    assert call(app, "POST", "/feedback", json=post).status_code == 200
    retried = {**body, "request_id": "auth-retry"}  # an idempotent retry returns the answer to its own client only
    assert call(app, "POST", "/rerank", json=retried).status_code == 200
    assert call(app, "POST", "/rerank", json=retried).status_code == 200
    assert call(app, "POST", "/rerank", key="other", json=retried).status_code == 409
    from gref.serving.feedback import FeedbackStore

    assert FeedbackStore(app["args"]["feedback_db"]).served(served["request_id"])["client"] == "tester"

    old = app["keys"]["other"]  # rotation: the Router re-reads the file, no redeploy
    app["keys"]["other"] = app["keyfile"].rotate("other")
    deadline = time.time() + 30
    while rerank(app, "auth-user", candidates, n=3, key="other").status_code != 200:
        assert time.time() < deadline, "the rotated key was not accepted"
        time.sleep(0.5)
    assert requests.post(f"{app['url']}/rerank", json=body, headers={"Authorization": f"Bearer {old}"},
                         timeout=30).status_code == 401


def test_prometheus_metrics_agree_with_the_json_view(app, candidates):
    from prometheus_client.parser import text_string_to_metric_families

    for i in range(5):
        assert rerank(app, f"prom-{i}", candidates, n=3).status_code == 200
    r = call(app, "GET", "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.headers
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(r.text) for s in family.samples}
    stats = call(app, "GET", "/stats").json()
    for arm, arm_stats in stats["arms"].items():
        assert samples[("gref_rerank_requests_total", (("arm", arm),))] == arm_stats["requests"]
        assert samples[("gref_rerank_latency_seconds_count", (("arm", arm),))] == arm_stats["requests"]
        assert samples[("gref_feedback_events_total", (("arm", arm), ("kind", "click")))] == arm_stats["clicks"]
        assert samples[("gref_arm_weight", (("arm", arm),))] == pytest.approx(arm_stats["weight"])
    assert sum(arm["requests"] for arm in stats["arms"].values()) >= 5
    assert samples[("gref_store_rows", (("table", "served"),))] >= 5


def _split(app, cands, users):
    arms = {}
    for u in users:
        r = rerank(app, u, cands, n=3)
        assert r.status_code == 200, r.text
        arms[u] = r.json()["arm"]
    return arms


def _redeploy(app, weights):
    from ray import serve

    from serve.app import build_app

    serve.run(build_app({**app["args"], "weights": weights}), name="gref", route_prefix="/",
              logging_config={"enable_access_log": False})


def test_routing_is_sticky_weighted_and_reweighted_without_dropping_requests(app, candidates):
    users = [f"user-{i}" for i in range(160)]
    first = _split(app, candidates, users)
    assert _split(app, candidates, users[:50]) == {u: first[u] for u in users[:50]}  # sticky
    share = sum(a == "gref" for a in first.values()) / len(users)
    assert abs(share - 0.5) < 4 * math.sqrt(0.25 / len(users))

    failures, done = [], threading.Event()

    def traffic():
        i = 0
        while not done.is_set():
            r = rerank(app, f"bg-{i}", candidates, n=3)
            if r.status_code != 200:
                failures.append(r.status_code)
            i += 1

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        _redeploy(app, {"gref": 9, "nar4rec": 1})  # new weights while traffic flows (serve.run rolls the Router)
    finally:
        done.set()
        thread.join()
    assert failures == []
    after = _split(app, candidates, users)
    share = sum(a == "gref" for a in after.values()) / len(users)
    assert abs(share - 0.9) < 4 * math.sqrt(0.09 / len(users))
    assert all(after[u] == "gref" for u in users if first[u] == "gref")  # nobody leaves the growing arm
    metrics = call(app, "GET", "/stats").json()
    assert metrics["arms"]["gref"]["weight"] == pytest.approx(0.9)
    assert metrics["arms"]["gref"]["requests"] > 0 and metrics["arms"]["gref"]["latency_p99_ms"] > 0


def _replicas(deployment: str) -> list:
    import ray

    names = [a for a in ray.util.list_named_actors(all_namespaces=True)
             if a["namespace"] == "serve" and a["name"].startswith(f"SERVE_REPLICA::gref#{deployment}#")]
    return [ray.get_actor(a["name"], namespace="serve") for a in names]


def _running(deployment: str) -> int:
    from ray import serve

    status = serve.status().applications["gref"].deployments[deployment]
    return status.replica_states.get("RUNNING", 0)


def test_a_killed_replica_is_replaced_while_requests_keep_succeeding(app, registry, candidates, prep_dir):
    """...and, the champion alias having moved meanwhile (review defect: answers and stored rows
    kept saying version 1 for the new weights), every answer names the weights that ran."""
    import mlflow
    import ray

    from gref import tracking
    from gref.model.config import ModelConfig
    from gref.reranker_io import save_reranker
    from gref.serving.feedback import FeedbackStore
    from gref.train.steps import build_model, data_meta

    champion_users = [u for u, arm in _split(app, candidates, [f"k-{i}" for i in range(40)]).items()
                      if arm == "gref"]
    assert _running("reranker-gref") == 2
    # version 2 has 4 heads (version 1: 2); the live replicas keep version 1 until replaced
    v2_dir = save_reranker(registry["root"] / "gref-v2", build_model(
        ModelConfig(d_model=32, enc_layers=1, dec_layers=1, omtp_heads=4), data_meta(prep_dir)), prep_dir / "features.json")
    tracking.setup(tracking.TrackingConfig(uri=registry["uri"]))
    with mlflow.start_run(run_name="serve-v2"):
        tracking.set_aliases("gref-reranker", {"champion": tracking.log_reranker(v2_dir, "gref-reranker")["version"]})
    victim = _replicas("reranker-gref")[0]
    codes, answers, done = [], [], threading.Event()

    def traffic():
        i = 0
        while not done.is_set():
            r = rerank(app, champion_users[i % len(champion_users)], candidates, n=3)
            codes.append(r.status_code)
            answers.append(r.json())
            i += 1

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        time.sleep(0.5)
        ray.kill(victim, no_restart=True)
        deadline = time.time() + 90
        time.sleep(2)
        while _running("reranker-gref") < 2:
            assert time.time() < deadline, "the killed replica was not replaced"
            time.sleep(1)
        time.sleep(1)
    finally:
        done.set()
        thread.join()
    assert len(codes) > 10 and set(codes) == {200}, codes
    deadline, i = time.time() + 90, 0  # both replicas now: the survivor (version 1) and its replacement
    while ("2", 4) not in {(a["model"]["version"], a["model"]["heads"]) for a in answers}:
        assert time.time() < deadline, "no answer from the replacement replica (version 2)"
        answers.append(rerank(app, champion_users[i % len(champion_users)], candidates, n=3).json())
        i += 1
    ran = {(a["model"]["version"], a["model"]["heads"]) for a in answers}
    assert ran == {("1", 2), ("2", 4)}, ran  # the version each answer names is the one that decoded it
    stored = FeedbackStore(app["args"]["feedback_db"]).served(answers[-1]["request_id"])
    assert stored["model"] == f"models:/gref-reranker@champion#{answers[-1]['model']['version']}"


def test_feedback_is_durable_across_a_router_restart(app, candidates, prep_dir, tmp_path):
    import ray

    from gref.data.features import FeatureSpec
    from gref.serving.feedback import FeedbackStore

    junk = [{**c, **{f"num_junk_{k}": 1.0 for k in range(20)}} for c in candidates]  # keys no model uses
    ignored_before = _arm_metrics(app)
    served = rerank(app, "fb-user", junk, n=4, request_id="req-fb-1").json()
    arm = served["arm"]
    assert _arm_metrics(app)[arm]["ignored_feature_values"] - ignored_before[arm]["ignored_feature_values"] == 20 * len(junk)
    clicked = served["items"][1]
    before = _arm_metrics(app)[arm]
    for _ in range(3):  # review defect: re-posts were counted every time; the store keeps one event
        r = call(app, "POST", "/feedback", timeout=30, json={
            "request_id": "req-fb-1", "feedback": [{"item_id": clicked, "click": 1}, {"item_id": clicked, "like": 1}]})
        assert r.status_code == 200, r.text
    after = _arm_metrics(app)[arm]
    assert (after["clicks"] - before["clicks"], after["likes"] - before["likes"]) == (1, 1)
    assert after["feedback_lists"] - before["feedback_lists"] == 1
    assert call(app, "POST", "/feedback", timeout=30, json={
        "request_id": "req-fb-1", "feedback": [{"item_id": "not-shown", "click": 1}]}).status_code == 422
    # a retry of the same request (a client timed out) gets the stored answer; another body, a 409
    retry = rerank(app, "fb-user", junk, n=4, request_id="req-fb-1")
    assert retry.status_code == 200 and retry.json() == served
    assert rerank(app, "fb-user", junk, n=3, request_id="req-fb-1").status_code == 409

    (router,) = _replicas("Router")
    ray.kill(router, no_restart=True)  # Serve starts a new router process
    deadline = time.time() + 90
    while True:
        try:
            if requests.get(f"{app['url']}/healthz", timeout=5).status_code == 200 and _running("Router") == 1:
                break
        except requests.RequestException:
            pass
        assert time.time() < deadline, "the router did not come back"
        time.sleep(1)
    r = call(app, "POST", "/feedback", timeout=30, json={
        "request_id": "req-fb-1", "feedback": [{"item_id": served["items"][0], "long_view": 1}]})
    assert r.status_code == 200, r.text  # the new router finds the list served before the restart

    spec = FeatureSpec.load(prep_dir / "features.json")
    store = FeedbackStore(app["args"]["feedback_db"])
    store.export_logs(tmp_path / "served.parquet", spec.num_cols, spec.cat_cols)
    table = pq.read_table(tmp_path / "served.parquet")
    assert canonical_schema(table.schema, DatasetConfig())
    rows = {r["item_id"]: r for r in table.to_pylist() if r["request_id"] == "req-fb-1"}
    assert len(rows) == len(candidates)
    store.export_logs(tmp_path / "auto.parquet")  # feature columns: every one the store holds
    assert not [c for c in pq.read_schema(tmp_path / "auto.parquet").names if c.startswith("num_junk")]
    assert (rows[clicked]["click"], rows[clicked]["like"], rows[clicked]["position"]) == (1, 1, 2)
    assert rows[served["items"][0]]["long_view"] == 1 and rows[served["items"][0]]["click"] == 0


def _arm_metrics(app) -> dict:
    return call(app, "GET", "/stats").json()["arms"]


def test_a_locked_store_gets_a_fast_503_and_a_trickling_body_a_408(app, candidates):
    """Review defects: a locked feedback DB held /rerank 30 s then answered 500, and a client
    sending a byte every few seconds held a Router slot for minutes."""
    import sqlite3

    lock = sqlite3.connect(app["args"]["feedback_db"], isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        started = time.time()
        r = rerank(app, "lock-user", candidates, n=3)
        assert r.status_code == 503 and "feedback store unavailable" in r.json()["error"], r.text
        assert time.time() - started < 15  # store_timeout_s = 1, not sqlite's 30 s
        assert requests.get(f"{app['url']}/healthz", timeout=5).status_code == 200  # the loop is not blocked
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert rerank(app, "lock-user", candidates, n=3).status_code == 200

    host, port = app["url"].removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Authorization: Bearer {app['keys']['tester']}\r\n".encode()
                     + b"Content-Length: 1000\r\n\r\n{")
        started = time.time()
        time.sleep(1)
        sock.sendall(b" ")  # a trickle, as a slow client would send it
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            assert chunk, "the connection closed without an answer"
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert time.time() - started < 20  # body_timeout_s = 3


def test_the_default_colocated_router_serves_the_arms_itself(app, registry, candidates, tmp_path):
    """``colocate: true``, the default: one deployment, the Router decoding the arms in its own process (one hop
    less), with the same answers, batching, timing header and feedback store -- and each arm's
    requests batched apart: concurrent requests of two arms are each decoded by their arm's model
    (with @serve.batch on the method, Ray keeps one queue per class and ran a batch of both arms
    on the first request's model)."""
    from concurrent.futures import ThreadPoolExecutor

    from ray import serve

    from serve.app import build_app

    arms = {"gref": "models:/gref-reranker@champion", "nar4rec": "models:/gref-nar4rec@champion"}
    args = {"tracking_uri": registry["uri"], "feedback_db": str(tmp_path / "colocated.db"),  # colocate: the default
            "arms": arms, "router_cpus": 0.05, "reranker_cpus": 0.1}
    serve.run(build_app(args), name="colocated", route_prefix="/colocated",
              logging_config={"enable_access_log": False})
    try:
        assert set(serve.status().applications["colocated"].deployments) == {"Router"}  # no reranker deployment
        url = f"{app['url']}/colocated"
        r = requests.post(f"{url}/rerank", json={"user_id": "u-1", "candidates": candidates, "n": 4}, timeout=60)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["arm"] == "gref" and out["model"]["name"] == "models:/gref-reranker@champion"
        assert len(set(out["items"])) == 4 and set(out["items"]) <= {c["item_id"] for c in candidates}
        assert "decode;dur=" in r.headers["Server-Timing"]
        bad = requests.post(f"{url}/rerank", json={"user_id": "u-1", "candidates": candidates, "n": 0}, timeout=60)
        assert bad.status_code == 422
        fb = requests.post(f"{url}/feedback", timeout=60, json={
            "request_id": out["request_id"], "feedback": [{"item_id": out["items"][0], "click": 1}]})
        assert fb.status_code == 200, fb.text

        def rerank(user: int) -> tuple[dict, int]:
            r = requests.post(f"{url}/rerank", json={"user_id": f"u-{user}", "candidates": candidates, "n": 4},
                              timeout=60)
            return r.json(), int(re.search(r'batch;desc="(\d+)"', r.headers["Server-Timing"]).group(1))

        for _ in range(3):  # rounds of 48 requests in flight: batches fill with both arms' requests
            with ThreadPoolExecutor(48) as pool:
                answers, batches = zip(*pool.map(rerank, range(48)))
            assert {a["arm"] for a in answers} == set(arms)
            assert [a["model"]["name"] for a in answers] == [arms[a["arm"]] for a in answers]
            assert max(batches) > 1  # they were batched
    finally:
        serve.delete("colocated")


def test_serves_through_direct_ingress_and_the_proxy(registry, candidates, tmp_path):
    """Serve's high-throughput mode (a Ray cluster of its own, in a child process: the mode is
    read when Ray starts): ``direct_urls`` and ``python -m serve.targets`` find the Router
    replica's own port, and through it
    the same answers as through the HTTP proxy -- the same sticky arm per user, a 4xx with its
    message on a bad body, feedback accepted, every list stored."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from gref.serving.feedback import FeedbackStore

    repo = Path(__file__).resolve().parents[2]
    child = subprocess.run(
        [sys.executable, str(repo / "tests/integration/serve_direct_child.py"), str(registry["root"] / "gref"),
         str(tmp_path / "direct.db"), json.dumps(candidates), str(free_ports()[0])],
        capture_output=True, text=True, timeout=300, cwd=repo,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))})
    assert child.returncode == 0, child.stderr[-3000:]
    seen = json.loads(child.stdout.strip().splitlines()[-1])
    (url,) = seen["urls"]
    assert seen["cli"] == [url]  # python -m serve.targets prints the same
    assert url.startswith("http://127.0.0.1:") and int(url.rsplit(":", 1)[1]) >= 30000  # Serve's replica ports
    for via in ("direct", "proxy"):
        got = seen[via]
        assert got["status"] == [200] * 6, via
        assert all(len(set(items)) == 4 and set(items) <= {c["item_id"] for c in candidates} for items in got["items"])
        assert got["bad"][0] == 422 and "n" in got["bad"][1]
        assert got["feedback"] == 200 and "decode;dur=" in got["timing"]
    assert seen["direct"]["arms"] == seen["proxy"]["arms"] and set(seen["direct"]["arms"]) <= {"a", "b"}
    assert seen["direct"]["items"] == seen["proxy"]["items"]  # same model, same candidates: same lists
    counts = FeedbackStore(tmp_path / "direct.db").counts()
    assert counts["served"] == 12 and counts["lists_with_feedback"] == 2
