"""Validation and encoding of ``POST /rerank`` bodies (Ray-free: the Serve router calls it).

Body::

    {"user_id": "u1", "n": 10, "request_id": "optional",
     "candidates": [{"item_id": "i7", "num_item_f0": 0.3, "cat_category": 7, ...}, ...]}

Candidates come in the upstream order (first = top), features under their raw-log column
names, user and context features repeated on every candidate as in the logs. A missing or
null numeric feature is imputed (train mean); an unknown or null categorical value maps to the
out-of-vocabulary id; keys the model does not use are ignored. Everything else that is wrong
raises ``RequestError`` with an HTTP status and a message naming the field.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from gref.data.features import FeatureSpec

MAX_ID_CHARS = 128


class RequestError(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
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


def _reject_constant(name: str) -> float:
    raise RequestError(400, f"body: {name} is not a JSON number (NaN/Infinity are not accepted)")


def parse_json(body: bytes, max_bytes: int) -> Any:
    """Bytes -> JSON value; 413 when too large, 400 when not JSON (NaN/Infinity included)."""
    if len(body) > max_bytes:
        raise RequestError(413, f"body: {len(body)} bytes, the limit is {max_bytes}")
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except RequestError:
        raise
    except (ValueError, UnicodeDecodeError) as err:
        raise RequestError(400, f"body: not valid JSON ({err})") from None


def _id(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RequestError(422, f"{where}: must be a string or an integer, got {type(value).__name__}")
    text = str(value)
    if not text or len(text) > MAX_ID_CHARS:
        raise RequestError(422, f"{where}: must have 1..{MAX_ID_CHARS} characters")
    return text


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
        raise RequestError(422, f"n: must be an integer, got {n!r}")
    if not 1 <= n <= min(len(candidates), max_n):
        raise RequestError(422, f"n: must be in 1..{min(len(candidates), max_n)} "
                                f"(candidates given: {len(candidates)}), got {n}")
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
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise RequestError(422, f"{where}.{key}: must be a finite number or null, got {value!r}")
                row[key] = value
            elif key.startswith("cat_"):
                if isinstance(value, bool) or not isinstance(value, (str, int)):
                    raise RequestError(422, f"{where}.{key}: must be a string, an integer or null, got {value!r}")
                if len(str(value)) > MAX_ID_CHARS:
                    raise RequestError(422, f"{where}.{key}: longer than {MAX_ID_CHARS} characters")
                row[key] = value
        kept.append(row)
    return RerankRequest(user_id, request_id, n, kept)


def encode_candidates(candidates: list[dict[str, Any]], spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    """Validated candidates -> (num [M, F] standardised float32, cat [M, C] int64): a missing
    numeric feature is imputed with the train mean, an unseen or missing category is OOV."""
    M = len(candidates)
    raw = np.array([[c.get(col, np.nan) for col in spec.num_cols] for c in candidates],
                   dtype=np.float32).reshape(M, len(spec.num_cols))
    num = spec.encode_num(raw)
    cat = np.zeros((M, len(spec.cat_cols)), dtype=np.int64)
    for j, col in enumerate(spec.cat_cols):
        cat[:, j] = spec.encode_cat(col, [c.get(col) for c in candidates])
    return num, cat
