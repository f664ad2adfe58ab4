"""Durable record of served lists and their feedback, exported in the raw-log schema.

Every ``/rerank`` answer is written (request, user, time, arm, model, the candidates with their
raw features in upstream order, the list shown) and every ``/feedback`` post is upserted, each
committed to a sqlite file (WAL, synchronous=FULL) before the HTTP answer: a replica restart
loses nothing. ``export_logs`` writes Parquet that ``jobs.prepare`` reads like any other logs --
one row per candidate, ``position`` 1..n for the items shown, click/like/long_view 0/1 on them
(a shown item without a feedback event was not clicked), null on the others.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gref.serving.stats import FEEDBACK_KINDS

SCHEMA = """
CREATE TABLE IF NOT EXISTS served (
    request_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, ts INTEGER NOT NULL, arm TEXT NOT NULL,
    model TEXT NOT NULL, candidates TEXT NOT NULL, shown TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT NOT NULL, item_id TEXT NOT NULL, click INTEGER NOT NULL, "like" INTEGER NOT NULL,
    long_view INTEGER NOT NULL, ts INTEGER NOT NULL, PRIMARY KEY (request_id, item_id));
"""


class UnknownRequest(KeyError):
    pass


class FeedbackStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self.lock = threading.Lock()  # one connection, used from the replica's threads

    def record_served(self, request_id: str, user_id: str, arm: str, model: str,
                      candidates: list[dict[str, Any]], shown: list[str]) -> None:
        """``candidates``: the request's candidate objects (item_id + raw features), upstream order."""
        with self.lock:
            self.db.execute("INSERT INTO served VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (request_id, user_id, int(time.time() * 1000), arm, model,
                             json.dumps(candidates), json.dumps(shown)))

    def served(self, request_id: str) -> dict[str, Any]:
        with self.lock:
            row = self.db.execute("SELECT user_id, arm, model, shown FROM served WHERE request_id = ?",
                                  (request_id,)).fetchone()
        if row is None:
            raise UnknownRequest(request_id)
        return {"user_id": row[0], "arm": row[1], "model": row[2], "shown": json.loads(row[3])}

    def record_feedback(self, request_id: str, events: dict[str, dict[str, int]]) -> bool:
        """``events``: item id -> {click, like, long_view} (0/1); repeated posts keep the max.
        Returns whether this is the list's first feedback."""
        now = int(time.time() * 1000)
        with self.lock:
            first = self.db.execute("SELECT 1 FROM feedback WHERE request_id = ? LIMIT 1",
                                    (request_id,)).fetchone() is None
            self._upsert(request_id, events, now)
        return first

    def _upsert(self, request_id: str, events: dict[str, dict[str, int]], now: int) -> None:
        self.db.executemany(
            'INSERT INTO feedback VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (request_id, item_id) DO UPDATE SET '
            'click = max(click, excluded.click), "like" = max("like", excluded."like"), '
            'long_view = max(long_view, excluded.long_view), ts = excluded.ts',
            [(request_id, item, *(int(e.get(k, 0)) for k in FEEDBACK_KINDS), now) for item, e in events.items()])

    def counts(self) -> dict[str, int]:
        served = self.db.execute("SELECT count(*) FROM served").fetchone()[0]
        fb = self.db.execute("SELECT count(DISTINCT request_id), count(*) FROM feedback").fetchone()
        return {"served": served, "lists_with_feedback": fb[0], "feedback_rows": fb[1]}

    def export_logs(self, out: str | Path, num_cols: list[str] | None = None,
                    cat_cols: list[str] | None = None) -> int:
        """Write every served list as raw-log Parquet rows; returns the number of rows.
        Feature columns: the given ones, or every ``num_*`` / ``cat_*`` key the requests carried."""
        with self.lock:
            served = self.db.execute("SELECT * FROM served ORDER BY ts").fetchall()
            feedback: dict[tuple[str, str], tuple[int, int, int]] = {
                (r, i): (c, lk, lv) for r, i, c, lk, lv in
                self.db.execute('SELECT request_id, item_id, click, "like", long_view FROM feedback')}
        if num_cols is None or cat_cols is None:
            keys = {k for row in served for cand in json.loads(row[5]) for k in cand}
            num_cols = sorted(k for k in keys if k.startswith("num_")) if num_cols is None else num_cols
            cat_cols = sorted(k for k in keys if k.startswith("cat_")) if cat_cols is None else cat_cols
        cols: dict[str, list] = {k: [] for k in ("request_id", "user_id", "ts", "item_id", "upstream_rank",
                                                 "position", "click", "like", "long_view", "arm", "model",
                                                 *num_cols, *cat_cols)}
        for rid, uid, ts, arm, model, cands, shown in served:
            position = {item: p + 1 for p, item in enumerate(json.loads(shown))}
            for rank, cand in enumerate(json.loads(cands), start=1):
                item = str(cand["item_id"])
                pos = position.get(item)
                fb = feedback.get((rid, item), (0, 0, 0)) if pos else (None, None, None)
                for key, value in (("request_id", rid), ("user_id", uid), ("ts", ts), ("item_id", item),
                                   ("upstream_rank", rank), ("position", pos), ("click", fb[0]),
                                   ("like", fb[1]), ("long_view", fb[2]), ("arm", arm), ("model", model)):
                    cols[key].append(value)
                for c in num_cols:
                    cols[c].append(cand.get(c))
                for c in cat_cols:
                    value = cand.get(c)
                    cols[c].append(None if value is None else str(value))
        types = {"ts": pa.int64(), "upstream_rank": pa.int32(), "position": pa.int32(), "click": pa.int8(),
                 "like": pa.int8(), "long_view": pa.int8(), **{c: pa.float64() for c in num_cols},
                 **{c: pa.string() for c in cat_cols}}
        table = pa.table({k: pa.array(v, types.get(k, pa.string())) for k, v in cols.items()})
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out)
        return table.num_rows
