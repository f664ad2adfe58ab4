"""Validation and encoding of ``POST /rerank`` bodies (Ray-free: the Serve router calls it).

Body::

    {"user_id": "u1", "n": 10, "request_id": "optional",
     "candidates": [{"item_id": "i7", "num_item_f0": 0.3, "cat_category": 7, ...}, ...]}

Candidates come in the upstream order (first = top), features under their raw-log column
names, user and context features repeated on every candidate as in the logs. A missing or
null numeric feature is imputed (train mean); an unknown or null categorical value maps to the
out-of-vocabulary id; keys the model does not use are ignored. Everything else that is wrong
raises ``RequestError`` with an HTTP status and a message naming the field: a body that is not
one JSON document (nested too deeply, a key twice, invalid UTF-8 or lone surrogates, numbers
outside float32), a content type other than JSON (415). tests/unit/test_fuzz.py holds it to that.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from gref.data.features import FeatureSpec
from gref.serving.stats import FEEDBACK_KINDS

MAX_ID_CHARS = 128
FLOAT32_MAX = float(np.finfo(np.float32).max)
CLIP = 1e6  # standardised features are clipped to +-CLIP at serving: arithmetic stays finite
MAX_EVENTS = 1000  # feedback events per post


class RequestError(ValueError):
    def __init__(self, status: int, message: str):
        # a message may quote the client's keys: a lone surrogate in one would make the JSON answer
        # itself fail to encode (a 500), so such characters are written as escapes
        super().__init__(message.encode("utf-8", "backslashreplace").decode("utf-8"))
        self.status = status


@dataclass
class RerankRequest:
    user_id: str
    request_id: str | None
    n: int
    candidates: list[dict[str, Any]]  # item_id (as str) + the num_*/cat_* fields, upstream order

    @property
    def item_ids(self) -> list[str]:
        return [c["item_id"] for c in self.candidates]

    def digest(self, client: str = "") -> str:
        """SHA-256 of what the model sees (user, n, the kept candidate fields) and of the calling
        client: a retry with the same id and digest gets the stored answer -- never another
        client's. Keys no model reads do not change it."""
        seen = {"user_id": self.user_id, "n": self.n, "candidates": self.candidates, "client": client}
        return hashlib.sha256(json.dumps(seen, sort_keys=True).encode()).hexdigest()


@dataclass
class FeedbackPost:
    request_id: str
    events: dict[str, dict[str, int]]  # item id -> {click, like, long_view}; an item named twice: the max

    def check_shown(self, shown: list[str] | set[str]) -> None:
        """422 when an event names an item that was not shown in the request's list."""
        shown = set(shown)
        for item in self.events:
            if item not in shown:
                raise RequestError(422, f"feedback: item_id '{item}' was not shown in this list")


def _reject_constant(name: str) -> float:
    raise RequestError(400, f"body: {name} is not a JSON number (NaN/Infinity are not accepted)")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        dup = next(k for i, (k, _) in enumerate(pairs) if any(k == k2 for k2, _ in pairs[:i]))
        raise RequestError(400, f"body: the key '{dup[:40]}' appears twice in one object")
    return obj


def check_content_type(content_type: str | None) -> None:
    """415 unless the body is declared JSON (or not declared at all)."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media and media != "application/json" and not media.endswith("+json"):
        raise RequestError(415, f"content type '{media[:60]}': send application/json")


def parse_json(body: bytes, max_bytes: int) -> Any:
    """Bytes -> JSON value; 413 when too large, 400 when not one JSON document (NaN/Infinity,
    a key twice in an object, nesting deeper than the parser's recursion limit, bad UTF-8)."""
    if len(body) > max_bytes:
        raise RequestError(413, f"body: {len(body)} bytes, the limit is {max_bytes}")
    try:
        return json.loads(body, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except RequestError:
        raise
    except RecursionError:
        raise RequestError(400, "body: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise RequestError(400, f"body: not valid JSON ({str(err)[:200]})") from None


def _text(value: str, where: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(422, f"{where}: not valid Unicode (a lone surrogate)") from None
    return value


def _id(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RequestError(422, f"{where}: must be a string or an integer, got {type(value).__name__}")
    if isinstance(value, int) and abs(value) >= 10 ** MAX_ID_CHARS:
        raise RequestError(422, f"{where}: must have 1..{MAX_ID_CHARS} characters")
    text = str(value)
    if not text or len(text) > MAX_ID_CHARS:
        raise RequestError(422, f"{where}: must have 1..{MAX_ID_CHARS} characters")
    return _text(text, where)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(422, f"{where}: must be a finite number or null, got {type(value).__name__}")
    try:
        x = float(value)
    except OverflowError:
        x = math.inf
    if not math.isfinite(x) or abs(x) > FLOAT32_MAX:
        raise RequestError(422, f"{where}: must be a finite number within float32 range")
    return x


def parse_rerank(body: Any, max_candidates: int, max_n: int) -> RerankRequest:
    """Validate a parsed body (types, finite numbers, unique ids, sizes); keeps only the fields a
    model can use (``item_id``, ``num_*``, ``cat_*``). The model's spec encodes them later."""
    if not isinstance(body, dict):
        raise RequestError(400, f"body: must be a JSON object, got {type(body).__name__}")
    for key in ("user_id", "candidates"):
        if key not in body:
            raise RequestError(422, f"{key}: missing")
    user_id = _id(body["user_id"], "user_id")
    request_id = _id(body["request_id"], "request_id") if body.get("request_id") is not None else None
    candidates = body["candidates"]
    if not isinstance(candidates, list):
        raise RequestError(422, f"candidates: must be a list, got {type(candidates).__name__}")
    if not 1 <= len(candidates) <= max_candidates:
        raise RequestError(422, f"candidates: {len(candidates)} given, 1..{max_candidates} accepted")
    n = body.get("n", min(10, len(candidates), max_n))
    if isinstance(n, bool) or not isinstance(n, int):
        raise RequestError(422, f"n: must be an integer, got {type(n).__name__}")
    if not 1 <= n <= min(len(candidates), max_n):
        shown = n if abs(n) < 10 ** 9 else "a larger number"
        raise RequestError(422, f"n: must be in 1..{min(len(candidates), max_n)} "
                                f"(candidates given: {len(candidates)}), got {shown}")
    kept, seen = [], set()
    for i, cand in enumerate(candidates):
        where = f"candidates[{i}]"
        if not isinstance(cand, dict):
            raise RequestError(422, f"{where}: must be an object, got {type(cand).__name__}")
        if "item_id" not in cand:
            raise RequestError(422, f"{where}.item_id: missing")
        item = _id(cand["item_id"], f"{where}.item_id")
        if item in seen:
            raise RequestError(422, f"{where}.item_id: duplicate item id '{item}'")
        seen.add(item)
        row: dict[str, Any] = {"item_id": item}
        for key, value in cand.items():
            if value is None:
                continue
            if key.startswith("num_"):
                row[key] = _number(value, f"{where}.{key}")
            elif key.startswith("cat_"):
                if isinstance(value, bool) or not isinstance(value, (str, int)):
                    raise RequestError(422, f"{where}.{key}: must be a string, an integer or null, "
                                            f"got {type(value).__name__}")
                row[key] = _id(value, f"{where}.{key}") if value != "" else value
        kept.append(row)
    return RerankRequest(user_id, request_id, n, kept)


def parse_feedback(body: Any) -> FeedbackPost:
    """``{"request_id": "...", "feedback": [{"item_id": "...", "click": 0|1, "like": 0|1, "long_view": 0|1}]}``
    validated (types, 0/1 values, at most MAX_EVENTS events); an item named twice gets the max."""
    if not isinstance(body, dict):
        raise RequestError(400, f"body: must be a JSON object, got {type(body).__name__}")
    if "request_id" not in body or not isinstance(body.get("feedback"), list):
        raise RequestError(422, "request_id (string) and feedback (list) are required")
    request_id = _id(body["request_id"], "request_id")
    if len(body["feedback"]) > MAX_EVENTS:
        raise RequestError(422, f"feedback: {len(body['feedback'])} events, at most {MAX_EVENTS} per post")
    events: dict[str, dict[str, int]] = {}
    for i, event in enumerate(body["feedback"]):
        where = f"feedback[{i}]"
        if not isinstance(event, dict) or "item_id" not in event:
            raise RequestError(422, f"{where}: must be an object with an item_id")
        item = _id(event["item_id"], f"{where}.item_id")
        merged = events.setdefault(item, dict.fromkeys(FEEDBACK_KINDS, 0))
        for kind in FEEDBACK_KINDS:
            value = event.get(kind, 0)
            if isinstance(value, bool) or value not in (0, 1) or not isinstance(value, int):
                raise RequestError(422, f"{where}.{kind}: must be 0 or 1")
            merged[kind] = max(merged[kind], value)
    return FeedbackPost(request_id, events)


def encode_candidates(candidates: list[dict[str, Any]], spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    """Validated candidates -> (num [M, F] standardised float32, cat [M, C] int64): a missing
    numeric feature is imputed with the train mean, an unseen or missing category is OOV, a
    standardised value beyond +-CLIP is clipped (a value far outside training cannot overflow)."""
    M = len(candidates)
    raw = np.array([[c.get(col, np.nan) for col in spec.num_cols] for c in candidates],
                   dtype=np.float32).reshape(M, len(spec.num_cols))
    num = np.clip(spec.encode_num(raw), -CLIP, CLIP)
    cat = np.zeros((M, len(spec.cat_cols)), dtype=np.int64)
    for j, col in enumerate(spec.cat_cols):
        cat[:, j] = spec.encode_cat(col, [c.get(col) for c in candidates])
    return num, cat


def encode_batch(candidate_lists: list[list[dict[str, Any]]], spec: FeatureSpec
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """B requests' candidates -> (num [B, M, F], cat [B, M, C], mask [B, M]) padded to the longest
    (M = its length; padding: zeros, masked out)."""
    encoded = [encode_candidates(cands, spec) for cands in candidate_lists]
    M = max(x.shape[0] for x, _ in encoded)
    num = np.zeros((len(encoded), M, len(spec.num_cols)), np.float32)
    cat = np.zeros((len(encoded), M, len(spec.cat_cols)), np.int64)
    mask = np.zeros((len(encoded), M), bool)
    for b, (x, c) in enumerate(encoded):
        num[b, :len(x)], cat[b, :len(c)], mask[b, :len(x)] = x, c, True
    return num, cat, mask
