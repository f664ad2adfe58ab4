"""The two databases the feedback store runs on, behind one small interface (Ray-free).

- ``SqliteDB``: a file (WAL, synchronous=FULL); one writer process -- the laptop and the
  single-Router deployment.
- ``PostgresDB``: a ``postgresql://`` URL (psycopg 3, an optional dependency: the ``postgres``
  extra); many Routers on many nodes write one database.

Statements are written once with ``?`` placeholders and the few dialect differences are
attributes (``greatest``, ``row_lock``). Every backend error leaves as ``StoreError`` (locked, full,
read-only, unreachable: the Router answers 503) or ``DuplicateRequest`` (a primary key taken).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class StoreError(RuntimeError):
    """The database cannot take the call now (locked, full, read-only, unreachable)."""


class DuplicateRequest(ValueError):
    """A served request_id that is stored already."""


class SqliteDB:
    greatest = "max"  # sqlite's two-argument max() is SQL's GREATEST
    row_lock = ""  # BEGIN IMMEDIATE locks the whole database

    def __init__(self, path: str | Path, timeout_s: float):
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"feedback store unavailable: cannot create {path.parent} ({err})") from None
        with self.errors():
            self.con = sqlite3.connect(path, timeout=timeout_s, check_same_thread=False, isolation_level=None)
            self.con.execute("PRAGMA journal_mode=WAL")
            self.con.execute("PRAGMA synchronous=FULL")
        self.lock = threading.Lock()  # one connection, used from the Router's threads

    def script(self, sql: str) -> None:
        with self.errors():
            self.con.executescript(sql)

    def columns(self, table: str) -> set[str]:
        return {row[1] for row in self.con.execute(f"PRAGMA table_info({table})")}

    @contextmanager
    def errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.IntegrityError as err:
            raise DuplicateRequest(str(err)) from None
        except sqlite3.OperationalError as err:
            raise StoreError(f"feedback store unavailable: {err}") from None

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self.lock, self.errors():
            return self.con.execute(sql, params).fetchall()

    def run(self, sql: str, params: tuple = ()) -> int:
        """One statement in its own transaction; returns the rows it changed."""
        with self.lock, self.errors():
            return self.con.execute(sql, params).rowcount

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """``with db.transaction() as tx: tx.query(...); tx.run(...)`` -- committed together."""
        with self.lock, self.errors():
            self.con.execute("BEGIN IMMEDIATE")
            try:
                yield _Tx(self.con.execute, self.con.executemany)
            except BaseException:
                self.con.execute("ROLLBACK")
                raise
            self.con.execute("COMMIT")


class PostgresDB:
    greatest = "GREATEST"
    row_lock = " FOR UPDATE"  # serialises the feedback of one request across Routers

    def __init__(self, url: str, timeout_s: float):
        try:
            import psycopg
        except ImportError:
            raise ImportError("a postgresql:// feedback store needs psycopg: pip install -e '.[postgres]'") from None
        self.psycopg, self.url = psycopg, url
        self.timeout_ms = max(1, int(timeout_s * 1000))
        self.lock = threading.Lock()
        self.con = None
        with self.errors():
            self._connect()

    def _connect(self):
        # lock_timeout: a row or table lock waits at most this long (then 503), as sqlite's busy timeout
        self.con = self.psycopg.connect(self.url, autocommit=True, connect_timeout=max(1, self.timeout_ms // 1000),
                                        options=f"-c lock_timeout={self.timeout_ms} "
                                                f"-c statement_timeout={10 * self.timeout_ms}")
        return self.con

    def script(self, sql: str) -> None:
        with self.lock, self.errors():
            self.con.execute(sql)

    def columns(self, table: str) -> set[str]:
        return {r[0] for r in self.query("SELECT column_name FROM information_schema.columns WHERE table_name = ?",
                                         (table,))}

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("%", "%%").replace("?", "%s")

    @contextmanager
    def errors(self) -> Iterator[None]:
        errors = self.psycopg.errors
        try:
            yield
        except errors.UniqueViolation as err:
            raise DuplicateRequest(str(err)) from None
        except self.psycopg.Error as err:
            if self.con is not None and self.con.closed:  # the server went away: reconnect on the next call
                self.con = None
            raise StoreError(f"feedback store unavailable: {str(err).strip()[:300]}") from None

    def _con(self):
        return self.con if self.con is not None else self._connect()

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self.lock, self.errors():
            return self._con().execute(self._sql(sql), params).fetchall()

    def run(self, sql: str, params: tuple = ()) -> int:
        with self.lock, self.errors():
            return self._con().execute(self._sql(sql), params).rowcount

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        with self.lock, self.errors():
            con = self._con()
            with con.transaction(), con.cursor() as cur:
                yield _Tx(lambda sql, params=(): cur.execute(self._sql(sql), params),
                          lambda sql, rows: cur.executemany(self._sql(sql), rows))


class _Tx:
    """The statements of one transaction (the backend's cursor behind it)."""

    def __init__(self, execute, executemany):
        self._execute, self._executemany = execute, executemany

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        return self._execute(sql, params).fetchall()

    def run(self, sql: str, params: tuple = ()) -> int:
        return self._execute(sql, params).rowcount

    def run_many(self, sql: str, rows: list[tuple]) -> None:
        self._executemany(sql, rows)


def connect(location: str | Path, timeout_s: float) -> SqliteDB | PostgresDB:
    """A ``postgresql://`` (or ``postgres://``) URL -> PostgresDB; anything else is a sqlite file path."""
    text = str(location)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresDB(text, timeout_s)
    return SqliteDB(text, timeout_s)
