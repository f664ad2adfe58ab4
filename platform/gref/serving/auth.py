"""API keys of the Serve endpoint: stored hashed, each with scopes (Ray-free).

A key is ``gref_<name>_<secret>`` (the secret: 32 random bytes, URL-safe base64); the keys file
(JSON) keeps only its SHA-256 -- a key is a random token, not a password, so a fast hash is the
right one (a leaked file reveals no key). Clients send it as ``Authorization: Bearer <key>`` or
``X-API-Key: <key>``. Scopes: ``rerank`` (POST /rerank), ``feedback`` (POST /feedback, and only for
lists served to the same key), ``metrics`` (GET /metrics, /stats). ``/healthz`` is open.

    python -m jobs.apikey create --name shop-frontend --scopes rerank,feedback   # prints the key once
    python -m jobs.apikey rotate --name shop-frontend    # a new secret; the old key stops working
    python -m jobs.apikey revoke --name shop-frontend
    python -m jobs.apikey list

The Router re-reads the file when it changes (checked at most once per ``RELOAD_EVERY_S``): keys are
created, rotated and revoked without a redeploy.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

SCOPES = ("rerank", "feedback", "metrics")
NAME = re.compile(r"^[A-Za-z0-9-]{1,64}$")  # no "_": the key's parts are split on it
RELOAD_EVERY_S = 1.0


class AuthError(Exception):
    """401 (no or unknown key) or 403 (a key without the scope)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Client:
    name: str
    scopes: frozenset[str]


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(name: str) -> str:
    return f"gref_{name}_{secrets.token_urlsafe(32)}"


def presented_key(headers) -> str | None:
    """The key of a request's headers (``Authorization: Bearer`` or ``X-API-Key``), None if absent."""
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return headers.get("x-api-key") or None


class KeyFile:
    """The keys file: ``{"keys": [{"name", "sha256", "scopes", "created"}]}``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        try:
            keys = json.loads(self.path.read_text())["keys"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{self.path}: not a key file of python -m jobs.apikey ({type(err).__name__}: "
                             f"{err})") from None
        for entry in keys:
            bad = set(entry.get("scopes", [])) - set(SCOPES)
            if bad or not NAME.match(str(entry.get("name", ""))) or len(str(entry.get("sha256", ""))) != 64:
                raise ValueError(f"{self.path}: malformed key entry {entry.get('name')!r}"
                                 + (f" (unknown scopes: {sorted(bad)})" if bad else ""))
        return keys

    def _write(self, keys: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"keys": keys}, indent=2) + "\n")
        os.chmod(tmp, 0o600)
        tmp.replace(self.path)  # atomic: a Router reading it sees the old or the new file, never half

    def create(self, name: str, scopes: list[str]) -> str:
        """Add a client; returns its key (shown once: only its hash is stored)."""
        if not NAME.match(name):
            raise ValueError(f"name: letters, digits and '-' only (1..64), got '{name}'")
        if not scopes or set(scopes) - set(SCOPES):
            raise ValueError(f"scopes: a non-empty subset of {', '.join(SCOPES)}, got {scopes}")
        keys = self.read()
        if any(k["name"] == name for k in keys):
            raise ValueError(f"a key named '{name}' exists: rotate or revoke it")
        key = new_key(name)
        self._write([*keys, {"name": name, "sha256": digest(key), "scopes": sorted(set(scopes)),
                             "created": datetime.now(UTC).isoformat(timespec="seconds")}])
        return key

    def rotate(self, name: str) -> str:
        """A new key for ``name`` (same scopes); the old one stops working at the Router's next reload."""
        keys = self.read()
        entry = next((k for k in keys if k["name"] == name), None)
        if entry is None:
            raise ValueError(f"no key named '{name}'")
        key = new_key(name)
        entry.update(sha256=digest(key), created=datetime.now(UTC).isoformat(timespec="seconds"))
        self._write(keys)
        return key

    def revoke(self, name: str) -> None:
        keys = self.read()
        if not any(k["name"] == name for k in keys):
            raise ValueError(f"no key named '{name}'")
        self._write([k for k in keys if k["name"] != name])


class Authenticator:
    """Checks a request's key and scope against the keys file, re-read when it changes."""

    def __init__(self, path: str | Path):
        self.file = KeyFile(path)
        self._stamp: tuple[float, int] | None = None
        self._checked = 0.0
        self._clients: dict[str, Client] = {}
        self._reload()

    def _reload(self) -> None:
        self._checked = time.monotonic()
        try:
            st = self.file.path.stat()
            stamp = (st.st_mtime, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            self._clients = {k["sha256"]: Client(k["name"], frozenset(k.get("scopes", []))) for k in self.file.read()}
            self._stamp = stamp

    def check(self, key: str | None, scope: str) -> Client:
        """The client of ``key`` when it holds ``scope``; AuthError 401/403 otherwise."""
        if time.monotonic() - self._checked > RELOAD_EVERY_S:
            try:
                self._reload()
            except (OSError, ValueError):  # a file being edited by hand: keep the keys we have
                pass
        if not key:
            raise AuthError(401, "an API key is required (Authorization: Bearer <key> or X-API-Key)")
        client = self._clients.get(digest(key))
        if client is None:
            raise AuthError(401, "unknown API key")
        if scope not in client.scopes:
            raise AuthError(403, f"this key ('{client.name}') lacks the '{scope}' scope")
        return client
