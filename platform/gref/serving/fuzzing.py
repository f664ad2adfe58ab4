"""Hostile inputs for the Serve endpoint: a hand-picked corpus and hypothesis strategies.

Used by tests/unit/test_fuzz.py (Ray-free: the request parser; and over real HTTP: a bounded corpus
in CI) and by ``benchmarks/fuzz.py`` (>= 10,000 cases against a running app). The contract they
check: every body gets a 2xx or a 4xx with a message -- never a 5xx, never a hang.
"""

from __future__ import annotations

import json
from typing import Any

JSON = "application/json"


def pathological(candidates: list[dict[str, Any]]) -> list[tuple[str, bytes, str]]:
    """(name, body, content type) of bodies that broke or could break a JSON endpoint;
    ``candidates``: a few valid candidates to embed where a valid shape is needed."""

    def body(**fields: Any) -> bytes:
        return json.dumps({"user_id": "u", "candidates": candidates, "n": 2, **fields}).encode()

    one = json.dumps(candidates[0])[:-1]  # '{"item_id": ...' without its closing brace
    return [
        ("deep array", b"[" * 100_000 + b"]" * 100_000, JSON),
        ("deep object", b'{"a":' * 50_000 + b"1" + b"}" * 50_000, JSON),
        ("deep inside a valid body", body(extra=json.loads("[" * 500 + "]" * 500)), JSON),
        ("deeper inside a valid body", body()[:-1] + b', "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", JSON),
        ("huge integer feature", ('{"user_id": "u", "n": 1, "candidates": [' + one + ', "num_x": '
                                  + "9" * 400 + "}]}").encode(), JSON),
        ("integer past the digit limit", b'{"user_id": ' + b"9" * 5000 + b', "candidates": [], "n": 1}', JSON),
        ("float past float32", ('{"user_id": "u", "n": 1, "candidates": [' + one + ', "num_x": 1e300}]}').encode(), JSON),
        ("negative zero and tiny floats", ('{"user_id": "u", "n": 1, "candidates": [' + one
                                           + ', "num_x": -0.0, "num_y": 5e-324}]}').encode(), JSON),
        ("huge n", body(n=10 ** 4000), JSON),
        ("huge string", body(user_id="x" * 900_000), JSON),
        ("invalid UTF-8", b'{"user_id": "\xff\xfe\xfa", "candidates": [], "n": 1}', JSON),
        ("lone surrogate id", b'{"user_id": "\\ud800", "candidates": ' + json.dumps(candidates).encode()
         + b', "n": 1}', JSON),
        ("lone surrogate item", b'{"user_id": "u", "n": 1, "candidates": [{"item_id": "\\udfff"}]}', JSON),
        ("lone surrogate category", ('{"user_id": "u", "n": 1, "candidates": [' + one
                                     + ', "cat_x": "\\ud800"}]}').encode(), JSON),
        ("lone surrogate in a duplicate key", b'{"\\ud800": 1, "\\ud800": 2}', JSON),
        ("lone surrogate in a feature key", ('{"user_id": "u", "n": 1, "candidates": [' + one
                                             + ', "num_\\ud800": "x"}]}').encode(), JSON),
        ("NUL in an id", body(user_id="a\u0000b"), JSON),
        ("duplicate keys", b'{"user_id": "u", "user_id": "v", "candidates": '
         + json.dumps(candidates).encode() + b', "n": 1}', JSON),
        ("BOM", b"\xef\xbb\xbf" + body(), JSON),
        ("UTF-16", body().decode().encode("utf-16"), JSON),
        ("empty body", b"", JSON),
        ("whitespace", b"   \n\t ", JSON),
        ("bare string", b'"rerank"', JSON),
        ("null", b"null", JSON),
        ("truncated", body()[: len(body()) // 2], JSON),
        ("trailing garbage", body() + b"}}}", JSON),
        ("two documents", body() + body(), JSON),
        ("form encoding", b"user_id=u&n=1", "application/x-www-form-urlencoded"),
        ("multipart", b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--x--\r\n",
         "multipart/form-data; boundary=x"),
        ("text/plain JSON", body(), "text/plain"),
        ("xml", b"<rerank><user_id>u</user_id></rerank>", "application/xml"),
        ("candidates as an object", body(candidates={"0": candidates[0]}), JSON),
        ("candidate a list", body(candidates=[[1, 2]]), JSON),
        ("item_id an object", body(candidates=[{"item_id": {"$ne": None}}], n=1), JSON),
        ("item_id a float", body(candidates=[{"item_id": 1.5}], n=1), JSON),
        ("item_id empty", body(candidates=[{"item_id": ""}], n=1), JSON),
        ("feature a list", body(candidates=[{"item_id": "a", "num_x": [1]}], n=1), JSON),
        ("category an object", body(candidates=[{"item_id": "a", "cat_x": {}}], n=1), JSON),
        ("n a string", body(n="2"), JSON),
        ("n negative", body(n=-1), JSON),
        ("n boolean", body(n=True), JSON),
        ("request_id an object", body(request_id={"a": 1}), JSON),
        ("10k tiny candidates", body(candidates=[{"item_id": str(i)} for i in range(10_000)]), JSON),
        ("many keys per candidate", body(candidates=[{"item_id": "a", **{f"num_{k}": k for k in range(5000)}}],
                                         n=1), JSON),
    ]


def feedback_pathological(request_id: str, shown: list[str]) -> list[tuple[str, bytes, str]]:
    """Hostile ``/feedback`` bodies for a request served as ``request_id`` with items ``shown``."""

    def body(**fields: Any) -> bytes:
        return json.dumps({"request_id": request_id, "feedback": [{"item_id": shown[0], "click": 1}],
                           **fields}).encode()

    return [
        ("deep", b"[" * 100_000 + b"]" * 100_000, JSON),
        ("lone surrogate request_id", b'{"request_id": "\\ud800", "feedback": []}', JSON),
        ("request_id a float", body(request_id=1.5), JSON),
        ("request_id huge", body(request_id="r" * 500_000), JSON),
        ("feedback an object", body(feedback={"item_id": shown[0]}), JSON),
        ("event a list", body(feedback=[[shown[0], 1]]), JSON),
        ("click 2", body(feedback=[{"item_id": shown[0], "click": 2}]), JSON),
        ("click a float", body(feedback=[{"item_id": shown[0], "click": 0.5}]), JSON),
        ("click huge", body(feedback=[{"item_id": shown[0], "click": 10 ** 4000}]), JSON),
        ("click a list", body(feedback=[{"item_id": shown[0], "click": [1]}]), JSON),
        ("item not shown", body(feedback=[{"item_id": "never-shown", "click": 1}]), JSON),
        ("item_id an object", body(feedback=[{"item_id": {"a": 1}, "click": 1}]), JSON),
        ("100k events", body(feedback=[{"item_id": shown[0], "click": 1}] * 100_000), JSON),
        ("text/plain", body(), "text/plain"),
        ("invalid UTF-8", b'{"request_id": "\xff", "feedback": []}', JSON),
    ]


def strategies():
    """Hypothesis strategies: (body bytes, content type) -- mostly rerank-shaped JSON with wrong
    types, sizes and values in every field, plus arbitrary JSON and arbitrary bytes."""
    from hypothesis import strategies as st

    scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-10 ** 30, max_value=10 ** 30)
               | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40))
    anything = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                            | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
    ident = st.text(min_size=1, max_size=12) | st.integers(min_value=0, max_value=10 ** 6)

    def mostly(good, bad=anything):  # 3 of 4 draws well-formed: deeper paths (encoding, decoding) get reached
        return st.sampled_from((good, good, good, bad)).flatmap(lambda chosen: chosen)

    feature_key = st.sampled_from(["num_item_f0", "num_user_f0", "cat_category", "cat_user_segment", "num_x",
                                   "cat_x", "other"])
    feature_value = mostly(st.floats(allow_nan=False, allow_infinity=False, width=32) | st.integers(-100, 100))
    candidate = st.tuples(mostly(ident), st.dictionaries(feature_key, feature_value, max_size=4)).map(
        lambda t: {**t[1], "item_id": t[0]})
    candidates = st.lists(candidate, min_size=1, max_size=12, unique_by=lambda c: str(c["item_id"]))
    rerank = st.fixed_dictionaries(
        {"user_id": mostly(ident), "candidates": mostly(candidates)},
        optional={"n": mostly(st.integers(1, 3), st.integers(-2, 14) | anything), "request_id": mostly(ident),
                  "noise": anything})
    as_json = mostly(rerank).map(lambda v: json.dumps(v, allow_nan=True).encode())
    mutated = st.tuples(as_json, st.integers(0, 200), st.binary(max_size=4)).map(
        lambda t: t[0][:t[1]] + t[2] + t[0][t[1]:])  # a few bytes spliced in
    content_type = st.sampled_from([JSON, JSON, JSON, JSON, "application/json; charset=utf-8", "text/plain", ""])
    return st.tuples(mostly(as_json, mutated | st.binary(max_size=64)), content_type)
