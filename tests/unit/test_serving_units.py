"""Ray-free serving pieces: request validation and encoding, sticky A/B assignment, API keys,
Prometheus counters, the feedback store and its raw-log export -- every store test on sqlite and on
a real PostgreSQL server (pgserver: a pip-installed server started by the session)."""

from __future__ import annotations

import math
import os
import re
import sqlite3
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from gref.data.features import OOV_ID, FeatureSpec
from gref.data.schema import DatasetConfig, canonical_schema
from gref.serving.ab import assign_arm, check_weights, experiment_salt, user_unit
from gref.serving.feedback import DuplicateRequest, FeedbackStore, StoreError, UnknownRequest
from gref.serving.requests import RequestError, encode_candidates, parse_json, parse_rerank

SPEC = FeatureSpec(num_cols=["num_a", "num_b"], cat_cols=["cat_c"], mean=[1.0, 0.0], std=[2.0, 1.0],
                   vocab={"cat_c": {"7": 2, "x": 3}})


def body(**overrides):
    b = {"user_id": "u1", "n": 2, "candidates": [{"item_id": "i1", "num_a": 3.0, "cat_c": 7},
                                                 {"item_id": "i2", "num_b": -1, "cat_c": "x", "other": [1]},
                                                 {"item_id": 3, "cat_c": "never-seen"}]}
    b.update(overrides)
    return b


def test_valid_request_is_encoded_with_imputation_and_oov():
    req = parse_rerank(body(), max_candidates=200, max_n=32)
    assert req.user_id == "u1" and req.n == 2 and req.item_ids == ["i1", "i2", "3"]
    assert "other" not in req.candidates[1]  # fields no model uses are dropped
    num, cat = encode_candidates(req.candidates, SPEC)
    # (3 - 1) / 2 = 1; missing -> 0 (the train mean); (-1 - 0) / 1 = -1
    np.testing.assert_allclose(num, [[1.0, 0.0], [0.0, -1.0], [0.0, 0.0]])
    assert cat[:, 0].tolist() == [2, 3, OOV_ID]


@pytest.mark.parametrize("bad, status, where", [
    ([1, 2], 400, "body"),
    ({"candidates": []}, 422, "user_id"),
    (body(user_id=None), 422, "user_id"),
    (body(user_id="u" * 200), 422, "user_id"),
    (body(candidates="i1,i2"), 422, "candidates"),
    (body(candidates=[]), 422, "candidates"),
    (body(candidates=[{"item_id": f"i{i}"} for i in range(201)]), 422, "candidates"),
    (body(candidates=[{"item_id": "a"}, {"item_id": "a"}]), 422, "duplicate"),
    (body(candidates=[{"num_a": 1.0}, {"item_id": "b"}]), 422, "candidates[0].item_id"),
    (body(candidates=[{"item_id": "a", "num_a": "3"}], n=1), 422, "candidates[0].num_a"),
    (body(candidates=[{"item_id": "a", "num_a": math.inf}], n=1), 422, "candidates[0].num_a"),
    (body(candidates=[{"item_id": "a", "num_a": True}], n=1), 422, "candidates[0].num_a"),
    (body(candidates=[{"item_id": "a", "cat_c": {"v": 1}}], n=1), 422, "candidates[0].cat_c"),
    (body(n=0), 422, "n"),
    (body(n=4), 422, "n"),
    (body(n="2"), 422, "n"),
])
def test_bad_requests_name_the_field(bad, status, where):
    with pytest.raises(RequestError) as err:
        parse_rerank(bad, max_candidates=200, max_n=32)
    assert err.value.status == status and where in str(err.value)


def test_json_parsing_rejects_nan_and_size():
    with pytest.raises(RequestError, match="NaN"):
        parse_json(b'{"user_id": "u", "x": NaN}', 1000)
    with pytest.raises(RequestError, match="not valid JSON"):
        parse_json(b'{"user_id": ', 1000)
    with pytest.raises(RequestError) as err:
        parse_json(b"x" * 2000, 1000)
    assert err.value.status == 413


def test_assignment_is_sticky_and_follows_the_weights():
    weights = check_weights({"a": 3, "b": 7}, ["a", "b"])
    assert weights == {"a": 0.3, "b": 0.7}
    users = [f"user-{i}" for i in range(20_000)]
    arms = [assign_arm(u, weights, "s") for u in users]
    assert arms == [assign_arm(u, weights, "s") for u in users]  # sticky
    share = arms.count("a") / len(arms)
    assert abs(share - 0.3) < 4 * math.sqrt(0.3 * 0.7 / len(arms))
    # moving weight from b to a moves only b-users: everyone on a stays on a
    more_a = check_weights({"a": 5, "b": 5}, ["a", "b"])
    assert all(assign_arm(u, more_a, "s") == "a" for u, arm in zip(users, arms) if arm == "a")
    assert user_unit("x", "s1") != user_unit("x", "s2")  # the salt reshuffles
    with pytest.raises(ValueError, match="unknown arm"):
        check_weights({"c": 1}, ["a", "b"])
    with pytest.raises(ValueError, match="weight > 0"):
        check_weights({"a": 0}, ["a", "b"])


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), -1.0, True, "1"])
def test_weights_must_be_finite_numbers(bad):
    # review defect: inf / NaN were accepted and the next request failed in assign_arm for every user
    with pytest.raises(ValueError, match="finite numbers"):
        check_weights({"a": bad, "b": 1.0}, ["a", "b"])
    with pytest.raises(ValueError, match="sum must be finite"):
        check_weights({"a": 1e308, "b": 1e308}, ["a", "b"])


def test_a_weight_change_moves_only_the_users_it_must():
    """Property over random experiments: after one arm's weight changes, the users who move are the
    share the change requires (|new share - old share| of that arm, within sampling error) and
    every mover goes to or comes from that arm; adding an arm moves users only onto it."""
    rng = np.random.default_rng(0)
    users = [f"u{i}" for i in range(6000)]
    tol = 4 * math.sqrt(0.25 / len(users))
    for trial in range(6):
        names = [f"arm{j}" for j in range(int(rng.integers(2, 5)))]
        raw = {a: float(rng.uniform(0.2, 3.0)) for a in names}
        changed = names[int(rng.integers(len(names)))]
        after_raw = {**raw, changed: raw[changed] * float(rng.choice([0.3, 2.5]))}
        before, after = check_weights(raw, names), check_weights(after_raw, names)
        salt = f"exp{trial}"
        moves = [(assign_arm(u, before, salt), assign_arm(u, after, salt)) for u in users]
        moved = [(a, b) for a, b in moves if a != b]
        assert all(changed in (a, b) for a, b in moved)  # users between two unchanged arms stay
        assert abs(len(moved) / len(users) - abs(after[changed] - before[changed])) < tol
    # a new 10 % arm takes 10 % of the users, all from the others, nobody else moves
    two = check_weights({"a": 1, "b": 1}, ["a", "b", "c"])
    three = check_weights({"a": 0.45, "b": 0.45, "c": 0.1}, ["a", "b", "c"])
    moves = [(assign_arm(u, two, "s"), assign_arm(u, three, "s")) for u in users]
    moved = [(a, b) for a, b in moves if a != b]
    assert all(b == "c" for _, b in moved) and abs(len(moved) / len(users) - 0.1) < tol


def test_the_default_salt_is_per_experiment():
    assert experiment_salt({"gref": "models:/g@champion", "b": "x"}) == experiment_salt({"b": "x", "gref": "models:/g@champion"})
    assert experiment_salt({"gref": "models:/g@champion"}) != experiment_salt({"gref": "models:/g@challenger"})


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    import pgserver

    os.environ.setdefault("XDG_RUNTIME_DIR", str(tmp_path_factory.mktemp("xdg")))  # pgserver asks platformdirs
    server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    yield server
    server.cleanup()


@pytest.fixture(params=["sqlite", "postgres"])
def db(request, tmp_path):
    """Where a store lives: a sqlite file, or a fresh database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "fb.db")
    server = request.getfixturevalue("postgres")
    name = f"t{time.time_ns()}"
    server.psql(f"CREATE DATABASE {name};")
    return server.get_uri(name)


def test_feedback_store_survives_reopen_and_exports_raw_logs(db, tmp_path):
    store = FeedbackStore(db)
    cands = [{"item_id": "i1", "num_a": 3.0, "cat_c": 7}, {"item_id": "i2"}, {"item_id": "i3", "num_b": 1.5}]
    store.record_served("r1", "u1", "champion", "models:/m@champion#1", cands, ["i3", "i1"])
    assert store.record_feedback("r1", {"i1": {"click": 1, "like": 1, "long_view": 0}}) == \
        (True, {"click": 1, "like": 1, "long_view": 0})
    # max is kept; only the long view is a new event
    assert store.record_feedback("r1", {"i1": {"click": 0, "like": 0, "long_view": 1}}) == \
        (False, {"click": 0, "like": 0, "long_view": 1})
    with pytest.raises(UnknownRequest):
        store.served("nope")
    del store
    reopened = FeedbackStore(db)  # a new replica process sees everything committed
    assert reopened.counts() == {"served": 1, "lists_with_feedback": 1, "feedback_rows": 1}
    rows = reopened.export_logs(tmp_path / "served.parquet", ["num_a", "num_b"], ["cat_c"])
    table = pq.read_table(tmp_path / "served.parquet")
    assert rows == 3 and canonical_schema(table.schema, DatasetConfig())  # jobs.prepare accepts it
    got = {r["item_id"]: r for r in table.to_pylist()}
    assert [got[i]["upstream_rank"] for i in ("i1", "i2", "i3")] == [1, 2, 3]
    assert (got["i3"]["position"], got["i1"]["position"], got["i2"]["position"]) == (1, 2, None)
    assert (got["i1"]["click"], got["i1"]["like"], got["i1"]["long_view"]) == (1, 1, 1)
    assert (got["i3"]["click"], got["i2"]["click"]) == (0, None)  # shown and not clicked / not shown
    assert got["i1"]["cat_c"] == "7" and got["i3"]["num_b"] == 1.5 and got["i2"]["num_a"] is None
    reopened.export_logs(tmp_path / "auto.parquet")  # feature columns taken from the requests
    assert {"num_a", "num_b", "cat_c"} <= set(pq.read_schema(tmp_path / "auto.parquet").names)


def test_a_round_exports_the_store_the_app_writes_to(db, tmp_path):
    """Review defect (issue 35): each round exported out/feedback.db while the app wrote to
    ``app.feedback_db``: with PostgreSQL every round trained on an empty export."""
    from gref.loop import ContinuousConfig, Round, export_round

    store = FeedbackStore(db)
    store.record_served("r1", "u1", "champion", "m#1", [{"item_id": "i1"}, {"item_id": "i2"}], ["i2", "i1"])
    cfg = ContinuousConfig(out=str(tmp_path / "loop"), app={"feedback_db": db})
    assert export_round(cfg, Round(1, since_ms=0, until_ms=2**62), tmp_path / "served.parquet") == 2
    assert pq.read_table(tmp_path / "served.parquet").column("item_id").to_pylist() == ["i1", "i2"]


def test_reposted_feedback_counts_once(db):
    """Review defect: /metrics added every post while the store kept the max (the same post 3x:
    metrics 3 clicks, store 1). The store now says which events are new; posting again adds none."""
    store = FeedbackStore(db)
    store.record_served("r1", "u1", "a", "m#1", [{"item_id": "i1"}, {"item_id": "i2"}], ["i1", "i2"])
    event = {"i1": {"click": 1, "like": 0, "long_view": 0}}
    news = [store.record_feedback("r1", event)[1]["click"] for _ in range(3)]
    assert news == [1, 0, 0]
    assert store.counts()["feedback_rows"] == 1


def test_a_retried_request_id_replays_its_answer(db):
    store = FeedbackStore(db)
    answer = {"request_id": "r1", "items": ["i2"], "arm": "a", "model": {"version": "3"}, "latency_ms": 1.0}
    store.record_served("r1", "u1", "a", "m#3", [{"item_id": "i2"}], ["i2"], "digest-1", answer)
    assert store.replay("r1") == ("digest-1", answer)
    assert store.replay("never") is None
    with pytest.raises(DuplicateRequest):  # the id stays unique: the Router replays or answers 409
        store.record_served("r1", "u1", "a", "m#3", [{"item_id": "i2"}], ["i2"], "digest-2", answer)


def test_a_store_of_the_first_release_is_migrated(tmp_path):
    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.executescript("""CREATE TABLE served (request_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, ts INTEGER NOT NULL,
        arm TEXT NOT NULL, model TEXT NOT NULL, candidates TEXT NOT NULL, shown TEXT NOT NULL);
        INSERT INTO served VALUES ('old', 'u', 5, 'a', 'm#1', '[{"item_id": "i1", "num_a": 1.0}]', '["i1"]');""")
    con.commit()
    con.close()
    store = FeedbackStore(db)
    assert store.replay("old") == ("", None)  # served before answers were kept: a retry gets a 409
    assert store.export_logs(tmp_path / "old.parquet") == 1


def test_locked_store_fails_fast_and_retention_prunes(db):
    store = FeedbackStore(db, busy_timeout_s=0.2)
    store.record_served("old", "u", "a", "m#1", [{"item_id": "i1"}], ["i1"])
    store.record_feedback("old", {"i1": {"click": 1}})
    store.record_served("new", "u", "a", "m#1", [{"item_id": "i1"}], ["i1"])
    store.db.run("UPDATE served SET ts = 1000 WHERE request_id = 'old'")
    assert store.prune(older_than_ms=2000) == 1
    assert store.counts() == {"served": 1, "lists_with_feedback": 0, "feedback_rows": 0}

    if db.startswith("postgresql://"):
        import psycopg

        other = psycopg.connect(db)  # another Router holds a lock on the table
        other.execute("LOCK TABLE served IN ACCESS EXCLUSIVE MODE")
    else:
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    started = time.perf_counter()
    with pytest.raises(StoreError, match="unavailable.*(locked|lock timeout)"):
        store.record_served("blocked", "u", "a", "m#1", [{"item_id": "i1"}], ["i1"])
    assert time.perf_counter() - started < 5  # bounded by busy_timeout_s, not 30 s
    other.close()  # its transaction ends, the lock with it
    store.record_served("blocked", "u", "a", "m#1", [{"item_id": "i1"}], ["i1"])


def test_export_streams_in_row_groups(db, tmp_path, monkeypatch):
    from gref.serving import feedback

    monkeypatch.setattr(feedback, "EXPORT_BATCH", 2)
    store = FeedbackStore(db)
    for r in range(5):
        store.record_served(f"r{r}", "u", "a", "m#1", [{"item_id": "i1", "num_a": r}, {"item_id": "i2"}], ["i2"])
    store.record_feedback("r4", {"i2": {"click": 1}})
    assert store.export_logs(tmp_path / "out.parquet") == 10
    parquet = pq.ParquetFile(tmp_path / "out.parquet")
    assert parquet.metadata.num_row_groups == 3  # 2 + 2 + 1 lists
    rows = parquet.read().to_pylist()
    assert [r["request_id"] for r in rows[::2]] == [f"r{r}" for r in range(5)]
    assert [(r["request_id"], r["click"]) for r in rows if r["item_id"] == "i2"][-1] == ("r4", 1)
    assert store.export_logs(tmp_path / "empty.parquet", ["num_a"], []) == 10


def test_export_carries_exploration_and_exports_a_time_window(db, tmp_path):
    """An explored list keeps its log-propensity through the export; a [since, until) window of
    served times exports exactly the lists served in it (continuous training's round partitions)."""
    import time

    store = FeedbackStore(db)
    store.record_served("greedy", "u", "a", "m#1", [{"item_id": "i1"}, {"item_id": "i2"}], ["i2", "i1"])
    store.record_served("sampled", "u", "a", "m#1", [{"item_id": "i1"}, {"item_id": "i2"}], ["i1", "i2"],
                        explored=True, log_propensity=-0.6931)
    time.sleep(0.01)
    middle = int(time.time() * 1000)
    time.sleep(0.01)
    store.record_served("later", "u", "a", "m#1", [{"item_id": "i1"}], ["i1"])
    assert store.export_logs(tmp_path / "all.parquet") == 5
    flags = {(r["request_id"], r["explored"], r["log_propensity"]) for r in pq.read_table(tmp_path / "all.parquet").to_pylist()}
    assert flags == {("greedy", False, 0.0), ("sampled", True, -0.6931), ("later", False, 0.0)}
    assert store.export_logs(tmp_path / "before.parquet", until_ms=middle) == 4
    assert store.export_logs(tmp_path / "after.parquet", since_ms=middle) == 1
    assert set(pq.read_table(tmp_path / "after.parquet").column("request_id").to_pylist()) == {"later"}


def test_outcomes_sum_each_lists_feedback_in_a_window(db):
    """What continuous training decides on with real clients: every list served in the window
    once, its clicks summed over its items (none posted: 0), arm / model / exploration kept."""
    import time

    store = FeedbackStore(db)
    cands = [{"item_id": f"i{k}"} for k in range(3)]
    store.record_served("r1", "u1", "champion", "m#1", cands, ["i0", "i1", "i2"])
    store.record_served("r2", "u2", "challenger", "m#2", cands, ["i2", "i0", "i1"], explored=True,
                        log_propensity=-1.5)
    store.record_feedback("r1", {"i0": {"click": 1, "like": 1}, "i2": {"click": 1, "long_view": 1}})
    store.record_feedback("r1", {"i0": {"click": 1}})  # a re-post: the store keeps the max, counted once
    time.sleep(0.01)
    middle = int(time.time() * 1000)
    time.sleep(0.01)
    store.record_served("r3", "u1", "champion", "m#1", cands, ["i1", "i0", "i2"])
    got = store.outcomes(0, 2**62)
    assert [o["request_id"] for o in got] == ["r1", "r2", "r3"]
    assert got[0] == {"request_id": "r1", "user": "u1", "arm": "champion", "model": "m#1", "explored": False,
                      "ts": got[0]["ts"], "sampled": {"click": 2, "like": 1, "long_view": 1}}
    assert got[1]["explored"] and got[1]["arm"] == "challenger" and got[1]["sampled"]["click"] == 0
    assert [o["request_id"] for o in store.outcomes(middle, 2**62)] == ["r3"]
    assert [o["request_id"] for o in store.outcomes(0, middle)] == ["r1", "r2"]


def test_api_keys_are_stored_hashed_and_checked_with_scopes(tmp_path, monkeypatch):
    from gref.serving import auth

    keys = auth.KeyFile(tmp_path / "keys.json")
    frontend = keys.create("shop-frontend", ["rerank", "feedback"])
    scraper = keys.create("prom", ["metrics"])
    text = (tmp_path / "keys.json").read_text()
    assert frontend not in text and auth.digest(frontend) in text  # only the hash is kept
    assert (tmp_path / "keys.json").stat().st_mode & 0o777 == 0o600
    check = auth.Authenticator(tmp_path / "keys.json")
    assert check.check(frontend, "rerank").name == "shop-frontend"
    for key, scope, status in [(None, "rerank", 401), ("gref_x_y", "rerank", 401), (frontend, "metrics", 403),
                               (scraper, "feedback", 403)]:
        with pytest.raises(auth.AuthError) as err:
            check.check(key, scope)
        assert err.value.status == status
    assert auth.presented_key({"authorization": f"Bearer {frontend}"}) == frontend
    assert auth.presented_key({"x-api-key": scraper}) == scraper and auth.presented_key({}) is None
    rotated = keys.rotate("shop-frontend")
    keys.revoke("prom")
    monkeypatch.setattr(auth, "RELOAD_EVERY_S", 0.0)  # the Router re-reads at most once a second
    assert check.check(rotated, "feedback").name == "shop-frontend"
    for old in (frontend, scraper):
        with pytest.raises(auth.AuthError):
            check.check(old, "rerank")
    with pytest.raises(ValueError, match="exists"):
        keys.create("shop-frontend", ["rerank"])
    with pytest.raises(ValueError, match="scopes"):
        keys.create("new", ["admin"])
    with pytest.raises(ValueError, match="name"):
        keys.create("has_underscore", ["rerank"])


def test_router_stats_in_prometheus_text_format():
    from prometheus_client.parser import text_string_to_metric_families

    from gref.serving.stats import RouterStats

    stats = RouterStats(["a", "b"])
    stats.served("a", 4.0, ignored_feature_values=3)
    stats.served("a", 30.0, ignored_feature_values=0)
    stats.error("b")
    stats.feedback("a", True, {"click": 2, "like": 0, "long_view": 1})
    stats.feedback("gone", True, {"click": 1, "like": 0, "long_view": 0})  # an arm no longer deployed: ignored
    text = stats.prometheus({"a": 0.25, "b": 0.75}, {"served": 2}).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    a = (("arm", "a"),)
    assert samples[("gref_rerank_requests_total", a)] == 2
    assert samples[("gref_rerank_requests_total", (("arm", "b"),))] == 0  # present before any traffic
    assert samples[("gref_rerank_errors_total", (("arm", "b"),))] == 1
    # 4 ms falls in the 5 ms bucket, 30 ms in the 35 ms one; sum in seconds
    assert samples[("gref_rerank_latency_seconds_bucket", (("arm", "a"), ("le", "0.005")))] == 1
    assert samples[("gref_rerank_latency_seconds_bucket", (("arm", "a"), ("le", "0.035")))] == 2
    assert samples[("gref_rerank_latency_seconds_sum", a)] == pytest.approx(0.034)
    assert samples[("gref_feedback_events_total", (("arm", "a"), ("kind", "click")))] == 2
    assert samples[("gref_ignored_feature_values_total", a)] == 3
    assert samples[("gref_arm_weight", (("arm", "b"),))] == 0.75
    assert samples[("gref_store_rows", (("table", "served"),))] == 2
    assert stats.snapshot({"a": 0.25})["a"]["latency_p50_ms"] == pytest.approx(17.0)


def test_feedback_posts_are_validated_and_merged():
    from gref.serving.requests import parse_feedback

    post = parse_feedback({"request_id": "r1", "feedback": [{"item_id": "a", "click": 1}, {"item_id": "a", "like": 1},
                                                            {"item_id": 7, "long_view": 0}]})
    assert post.events == {"a": {"click": 1, "like": 1, "long_view": 0}, "7": {"click": 0, "like": 0, "long_view": 0}}
    post.check_shown({"a", "7", "b"})
    with pytest.raises(RequestError, match="not shown"):
        post.check_shown({"a"})
    for bad in ({"request_id": "r1", "feedback": [{"item_id": "a", "click": 1.0}]},
                {"request_id": "r1", "feedback": [{"item_id": "a", "click": True}]},
                {"request_id": "\ud800", "feedback": []}, {"request_id": "r1", "feedback": {}},
                {"request_id": "r1", "feedback": [{"click": 1}]}):
        with pytest.raises(RequestError) as err:
            parse_feedback(bad)
        assert 400 <= err.value.status < 500


def test_an_unopenable_store_is_a_store_error_and_reopens_when_it_can(tmp_path):
    """Review defect: a read-only feedback directory failed the Router's start. The Router's store
    now raises StoreError (-> 503 with the reason) at each call until the database opens."""
    from gref.serving.feedback import ReopeningStore

    blocker = tmp_path / "serve"
    blocker.write_text("a file where the store's directory should be")
    store = ReopeningStore(blocker / "feedback.db", busy_timeout_s=0.2)
    with pytest.raises(StoreError, match="cannot create"):
        store.call("counts")
    assert "cannot create" in store.error
    blocker.unlink()  # the disk is fixed: the next call opens the store
    assert store.call("counts") == {"served": 0, "lists_with_feedback": 0, "feedback_rows": 0}
    assert store.error == ""
    with pytest.raises(StoreError, match="unavailable"):
        ReopeningStore("postgresql://nobody@127.0.0.1:1/none", busy_timeout_s=0.5).call("counts")


def test_a_served_model_answers_a_batch_per_length_and_exploration(tmp_path):
    """gref.serving.inference without Serve: one batch of mixed requests -> each decoded with the
    others of its (n, explore), greedy lists equal to the model's own, a sampled list with its
    log-probability, an error for what the model cannot serve, and every answer's timing."""
    import torch

    from gref.model.config import ModelConfig
    from gref.model.reranker import GenReranker
    from gref.reranker_io import save_reranker
    from gref.serving.inference import ServedModel
    from gref.serving.requests import encode_batch

    torch.manual_seed(0)
    model = GenReranker(ModelConfig(num_features=2, cat_sizes=SPEC.cat_sizes, max_candidates=5, max_length=4,
                                    d_model=16, enc_layers=1, dec_layers=1, omtp_heads=2))
    SPEC.save(tmp_path / "features.json")
    directory = save_reranker(tmp_path / "model", model, tmp_path / "features.json")
    served = ServedModel.load(str(directory), device=torch.device("cpu"))
    assert served.served_by == {"name": str(directory), "version": "", "kind": "gref", "heads": 2}
    assert served.features == ["item_id", "num_a", "num_b", "cat_c"] and served.explorable

    cands = parse_rerank(body(), max_candidates=200, max_n=32).candidates  # 3 candidates
    six = [{"item_id": f"x{i}", "num_a": float(i)} for i in range(6)]  # more than max_candidates = 5
    sent = time.time() - 0.05  # left the Router 50 ms ago
    requests = [{"candidates": cands, "n": 2, "explore": False, "sent_at": sent},
                {"candidates": cands[:2], "n": 2, "explore": False},
                {"candidates": cands, "n": 3, "explore": False},
                {"candidates": cands, "n": 3, "explore": True},
                {"candidates": cands, "n": 5, "explore": False},  # n past max_length = 4
                {"candidates": six, "n": 2, "explore": False}]
    out = served.rerank_batch(requests)

    for r, o in zip(requests[:3], out[:3]):
        num, cat, mask = (torch.from_numpy(a) for a in encode_batch([r["candidates"]], SPEC))
        alone = [int(j) for j in model.rerank(num, cat, mask, r["n"])[0] if j >= 0]
        assert o["order"] == alone and not o["explored"] and o["log_propensity"] == 0.0
    assert len(out[0]["order"]) == 2 and len(out[2]["order"]) == 3
    assert out[3]["explored"] and sorted(out[3]["order"]) == [0, 1, 2]
    # the propensity is the sampled list's probability: over 1,200 samples of one request each of
    # the 3! orders comes up at the rate its log_propensity says (4 standard errors)
    samples = served.rerank_batch([{"candidates": cands, "n": 3, "explore": True}] * 1200)
    by_order: dict[tuple, list[float]] = {}
    for o in samples:
        by_order.setdefault(tuple(o["order"]), []).append(o["log_propensity"])
    for log_ps in by_order.values():
        p = math.exp(log_ps[0])
        assert np.allclose(log_ps, log_ps[0], atol=1e-5)  # one order, one probability
        assert abs(len(log_ps) / 1200 - p) <= 4 * math.sqrt(p * (1 - p) / 1200) + 1e-3
    assert sum(math.exp(v[0]) for v in by_order.values()) <= 1 + 1e-5
    for o in out[4:]:
        assert o["error"] == "this model serves at most 5 candidates and n <= 4"
    assert all(o["timing"]["batch"] == 6 for o in out)
    assert out[0]["timing"]["queue"] >= 50 and out[1]["timing"]["queue"] == 0.0
    assert all(o["model"] == served.served_by and o["features"] == served.features for o in out[:4])


def test_the_serve_config_is_checked_and_resolved_before_deploying(tmp_path, monkeypatch):
    from gref.config import ConfigError
    from gref.serving.config import serve_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GREF_API_KEYS_FILE", raising=False)
    cfg = serve_config({"tracking_uri": "sqlite:///x.db"})
    assert cfg.colocate and cfg.feedback_db == str(tmp_path / "runs/serve/feedback.db") and cfg.api_keys == ""
    assert serve_config({"feedback_db": "postgresql://u@h/db"}).feedback_db == "postgresql://u@h/db"
    with pytest.raises(ConfigError, match=re.escape("'decode_mode' must be one of auto | eager | compile")):
        serve_config({"decode_mode": "fast"})
    with pytest.raises(ValueError, match="explore must be in"):
        serve_config({"explore": 1.5})
    with pytest.raises(ValueError, match="api_keys: no file at"):
        serve_config({"api_keys": "keys.json"})
    (tmp_path / "keys.json").write_text("not json")
    monkeypatch.setenv("GREF_API_KEYS_FILE", "keys.json")  # the environment's file, checked alike
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'keys.json'}: not a key file")):
        serve_config({})
    monkeypatch.delenv("GREF_API_KEYS_FILE")
    with pytest.raises(ValueError, match="weight"):
        serve_config({"weights": {"gref": 1.0, "other": 1.0}})
