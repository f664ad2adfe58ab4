"""Offline ranking metrics, as the paper (§5.1.4) and its baselines report them.

 * AUC -- global ROC AUC over (score, label) pairs, ties counted half (Mann-Whitney U).
   auc_click: exposed items, label = click (Avito: item-wise click prediction from list input).
   auc_exposure: all candidates, label = was exposed (Kuaishou: is the item among the shown n).
 * NDCG -- per request, the exposed items re-ranked by the model's score, gain = click,
   discount 1/log2(rank + 2), divided by the ideal DCG; requests without a click are skipped
   (their NDCG is undefined); mean over requests.
"""

from __future__ import annotations

import numpy as np


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    pos, neg = labels.sum(), (~labels).sum()
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    # average ranks over ties, vectorised: each tie group [a, b) gets (a + b + 1) / 2
    boundaries = np.r_[0, np.flatnonzero(s[1:] != s[:-1]) + 1, len(s)]
    group = np.repeat(np.arange(len(boundaries) - 1), np.diff(boundaries))
    ranks = ((boundaries[:-1] + boundaries[1:] + 1) / 2.0)[group]
    r = np.empty_like(ranks)
    r[order] = ranks
    return float((r[labels].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def ndcg(scores: np.ndarray, gains: np.ndarray, valid: np.ndarray) -> float:
    """scores, gains, valid: [R, L] (L = exposed slots). Mean NDCG over requests with a gain."""
    scores = np.where(valid, scores, -np.inf)
    gains = np.where(valid, gains, 0.0)
    L = scores.shape[1]
    discount = 1.0 / np.log2(np.arange(L) + 2.0)
    order = np.argsort(-scores, axis=1, kind="stable")
    dcg = (np.take_along_axis(gains, order, axis=1) * discount).sum(1)
    idcg = (-np.sort(-gains, axis=1) * discount).sum(1)
    has = idcg > 0
    return float((dcg[has] / idcg[has]).mean()) if has.any() else float("nan")
