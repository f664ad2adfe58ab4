"""Fuzzing the request path without Ray: whatever the bytes, the parser answers a request it can
serve (whose encoding is finite) or a RequestError with a 4xx -- never another exception, which
the Router would turn into a 500. The same bodies go over real HTTP in tests/integration/test_serve.py."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, given, settings

from gref.data.features import FeatureSpec
from gref.serving.fuzzing import feedback_pathological, pathological, strategies
from gref.serving.requests import (
    RequestError,
    check_content_type,
    encode_candidates,
    parse_feedback,
    parse_json,
    parse_rerank,
)

SPEC = FeatureSpec(num_cols=["num_item_f0", "num_x"], cat_cols=["cat_category", "cat_x"], mean=[0.0, 1.0],
                   std=[1.0, 2.0], vocab={"cat_category": {"7": 2}, "cat_x": {"a": 2}})
CANDIDATES = [{"item_id": f"i{i}", "num_item_f0": 0.5 * i, "cat_category": 7} for i in range(4)]
LIMIT = 1_000_000


def _outcome(data: bytes, content_type: str) -> int:
    """200 or the RequestError's status; any other exception fails the test."""
    try:
        check_content_type(content_type)
        req = parse_rerank(parse_json(data, LIMIT), max_candidates=200, max_n=32)
    except RequestError as err:
        assert 400 <= err.status < 500 and str(err), (err.status, str(err))
        json.dumps({"error": str(err)}, ensure_ascii=False).encode("utf-8")  # as the Router's JSON answer is
        return err.status
    num, cat = encode_candidates(req.candidates, SPEC)
    assert np.isfinite(num).all() and num.dtype == np.float32 and cat.min(initial=0) >= 0
    assert 1 <= req.n <= len(req.candidates)
    return 200


def test_hand_picked_pathological_bodies_get_a_4xx_or_are_served():
    outcomes = {name: _outcome(data, ctype) for name, data, ctype in pathological(CANDIDATES)}
    # the ones that broke the parser before (500s): now a 4xx naming the problem
    for name in ("deep array", "deep object", "deeper inside a valid body", "huge integer feature",
                 "float past float32", "lone surrogate id", "lone surrogate item", "lone surrogate category",
                 "duplicate keys", "text/plain JSON", "form encoding", "two documents", "empty body",
                 "lone surrogate in a duplicate key", "lone surrogate in a feature key"):
        assert 400 <= outcomes[name] < 500, (name, outcomes[name])
    assert outcomes["deep inside a valid body"] == 200  # 500 levels in a key no model reads: ignored
    assert outcomes["many keys per candidate"] == 200 and outcomes["negative zero and tiny floats"] == 200


def test_hand_picked_feedback_bodies_get_a_4xx():
    for name, data, ctype in feedback_pathological("r1", ["i0", "i1"]):
        try:
            check_content_type(ctype)
            parse_feedback(parse_json(data, LIMIT)).check_shown({"i0", "i1"})
        except RequestError as err:
            assert 400 <= err.status < 500, name
        else:
            raise AssertionError(f"{name}: accepted")


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(strategies())
def test_any_body_gets_a_4xx_or_is_served(case):
    _outcome(*case)
