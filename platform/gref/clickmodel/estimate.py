"""The oracle-free offline estimate: expected clicks of any list under click models fitted by EM
(gref.clickmodel.em) on the evaluated split's own logged lists, cross-fitted so that no request
is judged by a model that saw its clicks, with bootstrap 95 % CIs.

Three click models: PBM and DBN with one attractiveness per document -- a candidate's ``item_id``,
or the pair (context, item_id) when the dataset names a request-level ``context`` column (a
query: the same url is not equally good for every query) -- and ``pbm_features``, the PBM whose
attractiveness is a function of the candidate's features (regression EM: it judges documents
the logs never showed, and relevance that depends on the user). The feature model is also the
prior of the other two: each document is shrunk towards its attractiveness (by the pseudo-count
its marginal likelihood picks), and a document the fitting fold never showed is judged by it
(issue 34: production shows its best candidates, so the never-shown ones are not average). Requests alternate between two
folds; each fold's lists are scored by the models fitted on the other fold.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from gref.clickmodel.em import CLICK_MODELS, FeaturePBM
from gref.data.batch import collate
from gref.data.pairs import padded

FOLDS = 2
BOOTSTRAP = 1000  # resamples of the requests for every CI


def document_codes(table: pa.Table, cat_cols: list[str], context: str = "") -> np.ndarray:
    """[R, M] document code of every candidate (1..V; 0 = padding)."""
    items = table.column("item_id").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    lengths = np.asarray(table.column("m").to_numpy(), dtype=np.int64)
    valid = np.arange(int(lengths.max(initial=0)))[None] < lengths[:, None]  # row-major = item order
    key = pd.factorize(items)[0].astype(np.int64)
    if context:
        if context not in cat_cols:
            raise ValueError(f"click-model context '{context}' is not a categorical feature ({cat_cols})")
        cat = padded(table.column("cat"), 0).astype(np.int64)  # [R, M * C], encoded
        ctx = cat[:, cat_cols.index(context)]  # the first candidate's value: one per request
        key = np.repeat(ctx, lengths) * (int(key.max(initial=0)) + 1) + key
    codes = np.zeros(valid.shape, dtype=np.int64)
    codes[valid] = pd.factorize(key)[0] + 1
    return codes


def _gather(x: torch.Tensor, index: np.ndarray) -> torch.Tensor:
    """x [B, M, D], index [B, N] (>= 0) -> [B, N, D]."""
    idx = torch.from_numpy(index).long()[..., None].expand(-1, -1, x.shape[-1])
    return torch.gather(x, 1, idx)


class ClickEstimator:
    """Cross-fitted PBM, DBN and feature PBM of one split (its rows in table order)."""

    def __init__(self, table: pa.Table, meta: dict, context: str = "", iterations: int = 50,
                 features: bool = True, feature_prior: bool = True):
        """``features``: also the feature PBM (slower to fit: validation during training skips it);
        ``feature_prior``: the feature PBM is the PBM's and DBN's prior (False: the shown documents'
        mean; benchmarks.unseen_prior measures both)."""
        self.feature_prior = features and feature_prior
        cat_cols = meta["cat_cols"]
        self.codes = document_codes(table, cat_cols, context)  # [R, M]
        R = table.num_rows
        self.fold = np.arange(R) % FOLDS
        exposure = padded(table.column("exposure"), 0).astype(np.int64)
        clicks = padded(table.column("click"), 0.0)
        lengths = np.asarray(table.column("n").to_numpy(), dtype=np.int64)
        docs = np.take_along_axis(self.codes, exposure, axis=1)
        self.models: dict[str, list] = {}
        priors: list[np.ndarray | None] = [None] * FOLDS
        if features:  # first: its attractiveness is the PBM's and DBN's prior for every document
            b = collate(table, meta["num_features"], len(meta["cat_sizes"]), meta["feedback_weights"])
            num, cat = _gather(b.num, exposure), _gather(b.cat, exposure)
            self.models["pbm_features"] = [
                FeaturePBM(meta["num_features"], list(meta["cat_sizes"]), seed=f).fit(
                    num[torch.from_numpy(self.fold != f)], cat[torch.from_numpy(self.fold != f)],
                    clicks[self.fold != f], lengths[self.fold != f]) for f in range(FOLDS)]
            if self.feature_prior:
                priors = [model.attractiveness(num[torch.from_numpy(self.fold != f)], cat[torch.from_numpy(self.fold != f)])
                          for f, model in enumerate(self.models["pbm_features"])]
        for kind, cls in CLICK_MODELS.items():
            self.models[kind] = [cls(iterations).fit(docs[self.fold != f], clicks[self.fold != f],
                                                     lengths[self.fold != f], priors[f]) for f in range(FOLDS)]

    def expected_clicks(self, rows: np.ndarray, placed: np.ndarray, lengths: np.ndarray,
                        num: torch.Tensor, cat: torch.Tensor) -> dict[str, np.ndarray]:
        """{model kind: [B] E[clicks]} of lists ``placed`` [B, N] (candidate indices, -1 = none)
        for the split's requests ``rows`` [B] with candidate features ``num`` [B, M, F] and
        ``cat`` [B, M, C], each request judged by the models of the other fold."""
        keep = (placed >= 0) & (np.arange(placed.shape[1])[None] < lengths[:, None])
        index = np.clip(placed, 0, None)
        docs = np.where(keep, np.take_along_axis(self.codes[rows], index, axis=1), 0)
        shown = keep.sum(1)
        placed_num, placed_cat = _gather(num.cpu(), index), _gather(cat.cpu(), index)
        out = {}
        for kind, per_fold in self.models.items():
            est = np.zeros(len(rows))
            for f, model in enumerate(per_fold):
                sel = self.fold[rows] == f
                if not sel.any():
                    continue
                t = torch.from_numpy(sel)
                if kind == "pbm_features":
                    est[sel] = model.expected_clicks(placed_num[t], placed_cat[t], shown[sel])
                else:  # documents never shown in fitting: the feature model's attractiveness of the candidate
                    prior = (self.models["pbm_features"][f].attractiveness(placed_num[t], placed_cat[t])
                              if self.feature_prior else None)
                    est[sel] = model.expected_clicks(docs[sel], shown[sel], prior)
            out[kind] = est
        return out

    def feature_slot_clicks(self, rows: np.ndarray, placed: np.ndarray, lengths: np.ndarray,
                            num: torch.Tensor, cat: torch.Tensor) -> np.ndarray:
        """The feature PBM's P(click on slot k) [B, N] of lists ``placed`` [B, N] for the split's
        requests ``rows`` [B] (each judged by the other fold's model; inputs as expected_clicks):
        the direct part of a doubly-robust off-policy estimate (gref.offpolicy)."""
        keep = (placed >= 0) & (np.arange(placed.shape[1])[None] < lengths[:, None])
        index = np.clip(placed, 0, None)
        placed_num, placed_cat = _gather(num.cpu(), index), _gather(cat.cpu(), index)
        out = np.zeros(placed.shape)
        for f, model in enumerate(self.models["pbm_features"]):
            sel = self.fold[rows] == f
            if sel.any():
                t = torch.from_numpy(sel)
                out[sel] = model.slot_clicks(placed_num[t], placed_cat[t], keep[sel].sum(1)) * keep[sel]
        return out

    def unseen(self, rows: np.ndarray, placed: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """How many of the items placed in each list ``placed`` [B, N] the PBM judging it never saw
        shown (their appeal is the shown documents' mean: an extrapolation) -> (unseen [B], placed [B])."""
        keep = (placed >= 0) & (np.arange(placed.shape[1])[None] < lengths[:, None])
        docs = np.take_along_axis(self.codes[rows], np.clip(placed, 0, None), axis=1)
        unseen = np.zeros(len(rows))
        for f, model in enumerate(self.models["pbm"]):
            sel = self.fold[rows] == f
            seen = model.seen[np.clip(docs[sel], 0, len(model.seen) - 1)] & (docs[sel] < len(model.seen))
            unseen[sel] = (keep[sel] & ~seen).sum(1)
        return unseen, keep.sum(1)


def bootstrap_summary(values: np.ndarray, baseline: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Mean of per-request ``values`` [R] with a 95 % CI, and the paired lift over ``baseline``
    [R] (the same requests) with its CI, from one set of bootstrap resamples of the requests.
    -> {mean, mean_lo, mean_hi, lift, lift_lo, lift_hi}."""
    rng = np.random.default_rng(seed)
    R = len(values)
    means, lifts = [], []
    for start in range(0, BOOTSTRAP, 100):  # 100 resamples at a time: bounded memory
        idx = rng.integers(R, size=(min(100, BOOTSTRAP - start), R))
        m, base = values[idx].mean(1), baseline[idx].mean(1)
        means.append(m)
        lifts.append(m / base - 1.0)
    means, lifts = np.concatenate(means), np.concatenate(lifts)
    return {"mean": float(values.mean()), "mean_lo": float(np.quantile(means, 0.025)),
            "mean_hi": float(np.quantile(means, 0.975)), "lift": float(values.mean() / baseline.mean() - 1.0),
            "lift_lo": float(np.quantile(lifts, 0.025)), "lift_hi": float(np.quantile(lifts, 0.975))}
