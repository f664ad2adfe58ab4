"""Durable record of served lists and their feedback, exported in the raw-log schema.

Every ``/rerank`` answer is written (request, user, time, arm, model, the candidates with their
raw features in upstream order, the list shown) and every ``/feedback`` post is upserted, each
committed before the HTTP answer -- to a sqlite file (WAL, synchronous=FULL; one Router) or to
PostgreSQL (a ``postgresql://`` URL; several Routers), the same statements on both
(``gref.serving.sql``): a replica restart loses nothing. ``export_logs`` writes Parquet that
``jobs.prepare`` reads like any other logs -- one row per candidate, ``position`` 1..n for the items shown, click/like/long_view 0/1 on them
(a shown item without a feedback event was not clicked), null on the others.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gref.serving import sql
from gref.serving.sql import DuplicateRequest, StoreError  # noqa: F401 -- the store's errors, for its callers
from gref.serving.stats import FEEDBACK_KINDS

SCHEMA = """
CREATE TABLE IF NOT EXISTS served (
    request_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, ts BIGINT NOT NULL, arm TEXT NOT NULL,
    model TEXT NOT NULL, candidates TEXT NOT NULL, shown TEXT NOT NULL, body_sha TEXT, answer TEXT, client TEXT,
    explored INTEGER, log_propensity DOUBLE PRECISION);
CREATE INDEX IF NOT EXISTS served_ts ON served (ts);
CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT NOT NULL, item_id TEXT NOT NULL, click INTEGER NOT NULL, "like" INTEGER NOT NULL,
    long_view INTEGER NOT NULL, ts BIGINT NOT NULL, PRIMARY KEY (request_id, item_id));
"""
ADDED_COLUMNS = {"body_sha": "TEXT", "answer": "TEXT", "client": "TEXT",  # since the first release: older stores get them
                 "explored": "INTEGER", "log_propensity": "DOUBLE PRECISION"}
SERVED_COLUMNS = "request_id, user_id, ts, arm, model, candidates, shown, body_sha, answer, client, explored, log_propensity"
EXPORT_BATCH = 1000  # served lists per Parquet row group: the export streams, whatever the store's size


class UnknownRequest(KeyError):
    pass


class FeedbackStore:
    def __init__(self, location: str | Path, busy_timeout_s: float = 30.0):
        """``location``: a sqlite file path, or a ``postgresql://user:pass@host/db`` URL (several
        Routers). ``busy_timeout_s``: how long a write waits for a lock another writer holds before
        ``StoreError`` (the Router answers 503 then, rather than stalling)."""
        self.db = sql.connect(location, busy_timeout_s)
        self.db.script(SCHEMA)
        have = self.db.columns("served")
        for column, kind in ADDED_COLUMNS.items():
            if column not in have:
                self.db.run(f"ALTER TABLE served ADD COLUMN {column} {kind}")

    def record_served(self, request_id: str, user_id: str, arm: str, model: str,
                      candidates: list[dict[str, Any]], shown: list[str], body_sha: str = "",
                      answer: dict[str, Any] | None = None, client: str = "", explored: bool = False,
                      log_propensity: float = 0.0) -> None:
        """``candidates``: the request's candidate objects (item_id + raw features), upstream order;
        ``body_sha`` / ``answer``: the request's digest and the answer given, so that a retry of the
        same request (same id, same body) gets the same answer (``replay``); ``client``: the API
        key's name that was served (only it may post the list's feedback); ``explored`` /
        ``log_propensity``: whether the list was sampled from the model (exploration) and its
        log-probability under the sampling policy (0 for a greedy list). A request_id stored
        already raises ``DuplicateRequest``."""
        self.db.run(f"INSERT INTO served ({SERVED_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (request_id, user_id, int(time.time() * 1000), arm, model, json.dumps(candidates),
                     json.dumps(shown), body_sha, None if answer is None else json.dumps(answer), client,
                     int(explored), float(log_propensity)))

    def replay(self, request_id: str) -> tuple[str, dict[str, Any] | None] | None:
        """(body digest, answer) of a served request id, None when it was not served here."""
        rows = self.db.query("SELECT body_sha, answer FROM served WHERE request_id = ?", (request_id,))
        return None if not rows else (rows[0][0] or "", None if rows[0][1] is None else json.loads(rows[0][1]))

    def served(self, request_id: str) -> dict[str, Any]:
        rows = self.db.query("SELECT user_id, arm, model, shown, client FROM served WHERE request_id = ?",
                             (request_id,))
        if not rows:
            raise UnknownRequest(request_id)
        row = rows[0]
        return {"user_id": row[0], "arm": row[1], "model": row[2], "shown": json.loads(row[3]), "client": row[4] or ""}

    def record_feedback(self, request_id: str, events: dict[str, dict[str, int]]) -> tuple[bool, dict[str, int]]:
        """``events``: item id -> {click, like, long_view} (0/1); repeated posts keep the max.
        Returns whether this is the list's first feedback and, per kind, how many events are new
        (a value that went 0 -> 1): what a counter of distinct events should add, so that counters
        and the store agree however often a client re-posts."""
        now = int(time.time() * 1000)
        items = list(events)
        g = self.db.greatest
        with self.db.transaction() as tx:  # the read and the upsert see the same rows
            tx.query(f"SELECT 1 FROM served WHERE request_id = ?{self.db.row_lock}", (request_id,))
            before = {row[0]: row[1:] for row in tx.query(
                f'SELECT item_id, click, "like", long_view FROM feedback WHERE request_id = ? '
                f'AND item_id IN ({",".join("?" * len(items))})', (request_id, *items))}
            first = not tx.query("SELECT 1 FROM feedback WHERE request_id = ? LIMIT 1", (request_id,))
            tx.run_many(
                'INSERT INTO feedback VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (request_id, item_id) DO UPDATE SET '
                f'click = {g}(feedback.click, excluded.click), "like" = {g}(feedback."like", excluded."like"), '
                f'long_view = {g}(feedback.long_view, excluded.long_view), ts = excluded.ts',
                [(request_id, item, *(int(e.get(k, 0)) for k in FEEDBACK_KINDS), now) for item, e in events.items()])
        new = dict.fromkeys(FEEDBACK_KINDS, 0)
        for item, e in events.items():
            old = before.get(item, (0,) * len(FEEDBACK_KINDS))
            for k, kind in enumerate(FEEDBACK_KINDS):
                new[kind] += int(int(e.get(kind, 0)) > old[k])
        return first, new

    def prune(self, older_than_ms: int) -> int:
        """Delete the lists served before ``older_than_ms`` (epoch ms) and their feedback; returns
        how many lists went (the Router's ``retention_days``)."""
        with self.db.transaction() as tx:
            tx.run("DELETE FROM feedback WHERE request_id IN (SELECT request_id FROM served WHERE ts < ?)",
                   (older_than_ms,))
            return tx.run("DELETE FROM served WHERE ts < ?", (older_than_ms,))

    def counts(self) -> dict[str, int]:
        served = self.db.query("SELECT count(*) FROM served")[0][0]
        lists, rows = self.db.query("SELECT count(DISTINCT request_id), count(*) FROM feedback")[0]
        return {"served": served, "lists_with_feedback": lists, "feedback_rows": rows}

    def outcomes(self, since_ms: int, until_ms: int) -> list[dict[str, Any]]:
        """Every list served in [since_ms, until_ms) (epoch ms), time order, with its clicks: what an
        A/B decision on served clicks reads -- {"request_id", "user", "arm", "model" ("name#version"
        as the Router stores it), "explored", "ts", "sampled": {kind: events}} (a list without
        feedback: 0 of each)."""
        sums = ", ".join(f'COALESCE(SUM(f."{k}"), 0)' for k in FEEDBACK_KINDS)
        rows = self.db.query(
            f"SELECT s.request_id, s.user_id, s.arm, s.model, s.explored, s.ts, {sums} FROM served s "
            "LEFT JOIN feedback f ON f.request_id = s.request_id WHERE s.ts >= ? AND s.ts < ? "
            "GROUP BY s.request_id, s.user_id, s.arm, s.model, s.explored, s.ts ORDER BY s.ts, s.request_id",
            (since_ms, until_ms))
        return [{"request_id": rid, "user": uid, "arm": arm, "model": model, "explored": bool(explored), "ts": ts,
                 "sampled": {k: int(v) for k, v in zip(FEEDBACK_KINDS, events)}}
                for rid, uid, arm, model, explored, ts, *events in rows]

    def _served_batches(self, since_ms: int = 0, until_ms: int = 2**62):
        """The lists served in [since_ms, until_ms) in time order, EXPORT_BATCH at a time, each with
        its feedback rows (a read snapshot per batch: the export holds no lock while it writes)."""
        last_ts, last_id = since_ms - 1, ""
        while True:
            with self.db.transaction() as tx:
                rows = tx.query(f"SELECT {SERVED_COLUMNS} FROM served WHERE (ts > ? OR (ts = ? AND request_id > ?)) "
                                "AND ts < ? ORDER BY ts, request_id LIMIT ?",
                                (last_ts, last_ts, last_id, until_ms, EXPORT_BATCH))
                if not rows:
                    return
                ids = [r[0] for r in rows]
                feedback = {(r, i): (c, lk, lv) for r, i, c, lk, lv in tx.query(
                    f'SELECT request_id, item_id, click, "like", long_view FROM feedback '
                    f'WHERE request_id IN ({",".join("?" * len(ids))})', tuple(ids))}
            last_ts, last_id = rows[-1][2], rows[-1][0]
            yield rows, feedback

    def export_logs(self, out: str | Path, num_cols: list[str] | None = None,
                    cat_cols: list[str] | None = None, since_ms: int = 0, until_ms: int = 2**62) -> int:
        """Write every list served in [since_ms, until_ms) (epoch ms; default all) as raw-log Parquet
        rows, streaming (one row group per EXPORT_BATCH lists); returns the number of rows. Feature
        columns: the given ones, or every ``num_*`` / ``cat_*`` key the stored candidates carry (the
        Router stores only its models' feature columns). Besides the contract's columns: the arm and
        model that served the list, whether it was explored (sampled) and its log-propensity."""
        window = (since_ms, until_ms)
        if num_cols is None or cat_cols is None:
            keys = {k for rows, _ in self._served_batches(*window) for row in rows for cand in json.loads(row[5])
                    for k in cand}
            num_cols = sorted(k for k in keys if k.startswith("num_")) if num_cols is None else num_cols
            cat_cols = sorted(k for k in keys if k.startswith("cat_")) if cat_cols is None else cat_cols
        types = {"request_id": pa.string(), "user_id": pa.string(), "ts": pa.int64(), "item_id": pa.string(),
                 "upstream_rank": pa.int32(), "position": pa.int32(), "click": pa.int8(), "like": pa.int8(),
                 "long_view": pa.int8(), "arm": pa.string(), "model": pa.string(), "explored": pa.bool_(),
                 "log_propensity": pa.float64(),
                 **{c: pa.float64() for c in num_cols}, **{c: pa.string() for c in cat_cols}}
        schema = pa.schema(list(types.items()))
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        total = 0
        with pq.ParquetWriter(out, schema) as writer:
            for served, feedback in self._served_batches(*window):
                cols: dict[str, list] = {k: [] for k in types}
                for rid, uid, ts, arm, model, cands, shown, _sha, _answer, _client, explored, log_p in served:
                    position = {item: p + 1 for p, item in enumerate(json.loads(shown))}
                    for rank, cand in enumerate(json.loads(cands), start=1):
                        item = str(cand["item_id"])
                        pos = position.get(item)
                        fb = feedback.get((rid, item), (0, 0, 0)) if pos else (None, None, None)
                        for key, value in (("request_id", rid), ("user_id", uid), ("ts", ts), ("item_id", item),
                                           ("upstream_rank", rank), ("position", pos), ("click", fb[0]),
                                           ("like", fb[1]), ("long_view", fb[2]), ("arm", arm), ("model", model),
                                           ("explored", bool(explored)), ("log_propensity", log_p or 0.0)):
                            cols[key].append(value)
                        for c in num_cols:
                            cols[c].append(cand.get(c))
                        for c in cat_cols:
                            value = cand.get(c)
                            cols[c].append(None if value is None else str(value))
                table = pa.table({k: pa.array(v, types[k]) for k, v in cols.items()}, schema=schema)
                writer.write_table(table)
                total += table.num_rows
            if total == 0:
                writer.write_table(schema.empty_table())
        return total


class ReopeningStore:
    """The Router's store: opened at the first call and again after a call found it unopenable
    (an unreachable server, a read-only or missing directory), so that the Router starts anyway and
    answers 503 with the reason until the database is back."""

    def __init__(self, location: str | Path, busy_timeout_s: float):
        self.location, self.busy_timeout_s = location, busy_timeout_s
        self._store: FeedbackStore | None = None
        self.error = ""  # why the last open failed

    def open(self) -> FeedbackStore:
        if self._store is None:
            try:
                self._store = FeedbackStore(self.location, self.busy_timeout_s)
            except StoreError as err:
                self.error = str(err)
                raise
            self.error = ""
        return self._store

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self.open(), method)(*args)

