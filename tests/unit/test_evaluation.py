"""Offline evaluation on hand-made requests of mixed list lengths (no Ray): the reference rows and
the AUC labels must not be written through padded exposure slots."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest

from gref.evaluation import evaluate_ranker, logged_ranker, upstream_ranker

META = {"num_features": 1, "cat_sizes": [], "cat_cols": [], "feedback_weights": {"click": 1.0}}


def two_requests() -> pa.Table:
    """A: 3 candidates, all shown in order 0, 1, 2, only candidate 0 clicked.
    B: 3 candidates, only candidate 0 shown (n = 1; its exposure list is padded in a batch)."""
    return pa.table({
        "request_id": [1, 2], "user_id": [10, 11], "m": pa.array([3, 3], pa.int32()),
        "n": pa.array([3, 1], pa.int32()), "item_id": [[5, 6, 7], [8, 9, 4]],
        "num": [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], "cat": pa.array([[], []], pa.list_(pa.int32())),
        "exposure": pa.array([[0, 1, 2], [0]], pa.list_(pa.int32())),
        "click": pa.array([[1.0, 0.0, 0.0], [0.0]], pa.list_(pa.float32())),
    })


def test_logged_order_keeps_candidate_0_on_top_in_a_padded_batch():
    # exposed items: A0 (3, clicked), A1 (2), A2 (1), B0 (3, shown first): AUC = (1 + 1 + 0.5) / 3
    # (the padded slots of B used to overwrite B0's score with -1: AUC 1.0)
    out = evaluate_ranker(logged_ranker, two_requests(), META)
    assert out["auc_click"] == pytest.approx(2.5 / 3)


def test_exposure_labels_ignore_padded_slots():
    # upstream scores 0, -1, -2 per request; exposed: A0, A1, A2, B0; not exposed: B1, B2.
    # By hand (ties count half): A0 2, A1 1.5, A2 0.5, B0 2 -> 6 / 8 (B0 used to be labelled unexposed: 0.5)
    out = evaluate_ranker(upstream_ranker, two_requests(), META)
    assert out["auc_exposure"] == pytest.approx(0.75)


def test_auc_counts_ties_half_as_a_hand_count():
    from gref.metrics import auc

    # positives scored 3, 1, 1; negatives 1, 0. Pairs (pos, neg): (3,1) 1, (3,0) 1, (1,1) 0.5 twice,
    # (1,0) 1 twice -> 5 / 6
    assert auc([3.0, 1.0, 1.0, 1.0, 0.0], [1, 1, 1, 0, 0]) == pytest.approx(5 / 6)
    assert auc([1.0, 1.0], [1, 0]) == pytest.approx(0.5)  # one tie group
    assert auc([0.2, 0.9], [0, 1]) == 1.0 and auc([0.9, 0.2], [0, 1]) == 0.0
    assert math.isnan(auc([0.5, 0.4], [1, 1]))  # no negative: undefined


def test_every_row_says_what_share_of_its_items_the_click_models_never_saw_shown():
    """Requests alternate between two folds, each judged by the click models fitted on the other:
    request 0 (shows items 1, 2) is judged by models that saw request 1 show 1, 2, 3 -> 0 unseen;
    request 1 (upstream order places 1, 2, 3) by models that saw only 1, 2 -> item 3 unseen.
    The upstream row places 2 + 3 items, 1 of them unseen: 20 %."""
    from gref.clickmodel.estimate import ClickEstimator

    table = pa.table({
        "request_id": [1, 2], "user_id": [10, 11], "m": pa.array([3, 3], pa.int32()),
        "n": pa.array([2, 3], pa.int32()), "item_id": [[1, 2, 3], [1, 2, 3]],
        "num": [[0.1, 0.2, 0.3], [0.1, 0.2, 0.3]], "cat": pa.array([[], []], pa.list_(pa.int32())),
        "exposure": pa.array([[0, 1], [0, 1, 2]], pa.list_(pa.int32())),
        "click": pa.array([[1.0, 0.0], [0.0, 1.0, 0.0]], pa.list_(pa.float32())),
    })
    estimator = ClickEstimator(table, META, features=False, iterations=2)
    assert evaluate_ranker(upstream_ranker, table, META, estimator=estimator)["unseen_share"] == pytest.approx(0.2)
    assert evaluate_ranker(logged_ranker, table, META, estimator=estimator)["unseen_share"] == pytest.approx(0.2)
