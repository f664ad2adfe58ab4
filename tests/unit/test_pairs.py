"""Rerank-DPO pair construction (Eq. 7) on hand-made examples."""

import numpy as np
import pyarrow as pa

from gref.data.pairs import add_pairs, winner_order

W = {"click": 1.0, "like": 1.5, "long_view": 0.8}


def order_of(click, like=None, long_view=None, alpha=1.0, gamma=1.0, weights=W):
    n = len(click)
    fb = {"click": np.array([click], float),
          "like": np.array([like or [0] * n], float),
          "long_view": np.array([long_view or [0] * n], float)}
    order, has_pair = winner_order(fb, np.array([n]), alpha, gamma, weights)
    return order[0].tolist(), bool(has_pair[0])


def test_paper_example_clicks_on_y2_and_y5():
    # S = 1/P + click: y2 -> 1.5, y5 -> 1.2, y1 -> 1.0, y3 -> .33, y4 -> .25, ...
    order, has = order_of([0, 1, 0, 0, 1, 0, 0, 0, 0, 0])
    assert order == [1, 4, 0, 2, 3, 5, 6, 7, 8, 9] and has


def test_no_feedback_means_no_pair():
    order, has = order_of([0] * 10)
    assert order == list(range(10)) and not has


def test_click_on_first_item_means_no_pair():
    assert order_of([1, 0, 0, 0])[1] is False


def test_tie_keeps_exposure_order():
    # alpha=1, gamma=0.5: y1 -> 1/1 + 0 = 1.0, y2 -> 1/2 + 0.5 * 1 = 1.0 -> tie, stable: no pair
    order, has = order_of([0, 1, 0], gamma=0.5)
    assert order == [0, 1, 2] and not has


def test_feedback_weights_sum():
    # y3 liked (1 + 1.5 = 2.5 + 1/3) beats y2 clicked (1 + 1/2) beats y1 (1)
    order, has = order_of([0, 1, 1], like=[0, 0, 1])
    assert order == [2, 1, 0] and has
    # long view only weighs 0.8: y2 with a long view (0.5 + 0.8 = 1.3) beats y1 (1.0)
    assert order_of([0, 0], long_view=[0, 1])[0] == [1, 0]


def test_alpha_dominates_when_large():
    order, has = order_of([0, 0, 1], alpha=10.0)  # 10/3 + 1 < 10/2
    assert order == [0, 1, 2] and not has


def test_add_pairs_on_variable_lengths():
    table = pa.table({
        "n": pa.array([3, 2, 4], pa.int32()),
        "exposure": pa.array([[5, 2, 9], [1, 0], [3, 4, 0, 1]], pa.list_(pa.int32())),
        "click": pa.array([[0, 0, 1], [1, 0], [0, 0, 0, 0]], pa.list_(pa.float32())),
        "like": pa.array([[0, 0, 0], [0, 0], [0, 0, 0, 0]], pa.list_(pa.float32())),
        "long_view": pa.array([[0, 0, 0], [0, 0], [0, 0, 0, 0]], pa.list_(pa.float32())),
    })
    out = add_pairs(table, 1.0, 1.0, W)
    assert out.num_rows == 1  # only the first request changes order
    assert out.column("winner").to_pylist() == [[9, 5, 2]]
    assert out.column("loser").to_pylist() == [[5, 2, 9]]


def test_eq7_pretraining_targets_by_hand():
    """Pre-training target=eq7: the exposure re-sorted by S_i = alpha / P_i + gamma * U_i, as
    Eq. 7's winner of jobs.prepare, each slot's relevance moving with its item."""
    import torch

    from gref.data.batch import Batch
    from gref.train.objectives import eq7_targets

    # request 0: S = [1, 1/2 + 1, 1/3] -> slots 1, 0, 2; request 1 (n = 2, one padded slot):
    # S = [1 + 1, 1/2] -> unchanged, the padded slot stays last
    b = Batch(num=torch.zeros(2, 3, 0), cat=torch.zeros(2, 3, 0, dtype=torch.long),
              cand_mask=torch.ones(2, 3, dtype=torch.bool), exposure=torch.tensor([[2, 0, 1], [1, 2, 0]]),
              lengths=torch.tensor([3, 2]), relevance=torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]),
              click=torch.zeros(2, 3))
    out = eq7_targets(b, alpha=1.0, gamma=1.0)
    assert out.exposure.tolist() == [[0, 2, 1], [1, 2, 0]]
    assert out.relevance.tolist() == [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
    assert b.exposure.tolist() == [[2, 0, 1], [1, 2, 0]]  # the input batch is left alone
