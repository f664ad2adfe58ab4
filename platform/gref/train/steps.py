"""Ray-free training pieces shared by the Ray Train loop, tests and benchmarks:
model construction, one optimisation step per stage, and validation."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from gref.data.batch import Batch, collate, iter_tables
from gref.data.features import FeatureSpec
from gref.losses import OMTPLoss, RerankDPOLoss, multi_token_loss, sequence_log_prob
from gref.metrics import auc, ndcg
from gref.model.config import ModelConfig
from gref.model.decoding import decode, score_items
from gref.model.reranker import GenReranker


def data_meta(data_dir: str | Path) -> dict[str, Any]:
    """Feature spec and dataset config of a prepared data dir."""
    data_dir = Path(data_dir)
    spec = FeatureSpec.load(data_dir / "features.json")
    summary = json.loads((data_dir / "summary.json").read_text())
    return {"num_features": len(spec.num_cols), "cat_sizes": spec.cat_sizes,
            "feedback_weights": summary["config"]["feedback_weights"]}


def build_model(cfg: ModelConfig, meta: dict[str, Any]) -> GenReranker:
    """The model config with the data's feature sizes filled in."""
    return GenReranker(replace(cfg, num_features=meta["num_features"], cat_sizes=list(meta["cat_sizes"])))


def unwrap(model: nn.Module) -> GenReranker:
    return model.module if hasattr(model, "module") else model


def pretrain_loss(model: nn.Module, loss_fn: OMTPLoss, batch: Batch) -> dict[str, torch.Tensor]:
    logits = model(batch.num, batch.cat, batch.cand_mask, batch.exposure[:, None])[:, 0]
    return loss_fn(logits, batch.exposure, batch.lengths, batch.relevance)


def dpo_loss(policy: nn.Module, reference: GenReranker, loss_fn: RerankDPOLoss, batch: Batch,
             heads: int) -> dict[str, torch.Tensor]:
    """Winner and loser through one batched forward (encoder runs once per request)."""
    seqs = torch.stack([batch.winner, batch.loser], dim=1)  # [B, 2, N]
    logits = policy(batch.num, batch.cat, batch.cand_mask, seqs)  # [B, 2, k, N, M]
    with torch.no_grad():
        ref_logits = reference(batch.num, batch.cat, batch.cand_mask, seqs)
    lp = [sequence_log_prob(logits[:, s], seqs[:, s], batch.lengths, heads) for s in (0, 1)]
    ref = [sequence_log_prob(ref_logits[:, s], seqs[:, s], batch.lengths, heads) for s in (0, 1)]
    return loss_fn(lp[0], lp[1], ref[0], ref[1])


@torch.no_grad()
def evaluate(model: GenReranker, table: pa.Table, meta: dict[str, Any], batch_size: int = 512,
             world=None, device: str | torch.device = "cpu") -> dict[str, float]:
    """Validation/test metrics of greedy OMTP decoding (see gref.metrics for the protocol).

    val_nll: L_n per request (teacher forced, exposure order); ndcg / auc_click / auc_exposure;
    with a simulated ``world``: oracle expected clicks/likes/long views of the generated lists
    and of the logged exposure order, and the relative lift in clicks.
    """
    from gref.sim.user_model import expected_feedback

    model.eval()
    nll, n_req = 0.0, 0
    click_scores, click_labels, exp_scores, exp_labels = [], [], [], []
    ndcg_scores, ndcg_gains, ndcg_valid = [], [], []
    oracle = {"model": [], "logged": []}
    L = 0
    for part in iter_tables(table, batch_size, shuffle=False):
        b = collate(part, meta["num_features"], len(meta["cat_sizes"]), meta["feedback_weights"]).to(device)
        logits = model(b.num, b.cat, b.cand_mask, b.exposure[:, None])[:, 0]
        nll += float(multi_token_loss(logits, b.exposure, b.lengths)) * b.size
        n_req += b.size
        N = int(b.lengths.max())
        placed = decode(model, b.num, b.cat, b.cand_mask, N)
        scores = score_items(model, b.num, b.cat, b.cand_mask, placed).cpu().numpy()
        exposure, lengths = b.exposure.cpu().numpy(), b.lengths.cpu().numpy()
        slot_valid = np.arange(exposure.shape[1])[None, :] < lengths[:, None]
        exp_item_scores = np.take_along_axis(scores, exposure, axis=1)
        click = b.click.cpu().numpy()
        click_scores.append(exp_item_scores[slot_valid]); click_labels.append(click[slot_valid])
        mask = b.cand_mask.cpu().numpy()
        exposed = np.zeros_like(mask)
        np.put_along_axis(exposed, exposure, slot_valid, axis=1)
        exp_scores.append(scores[mask]); exp_labels.append(exposed[mask])
        L = max(L, exposure.shape[1])
        ndcg_scores.append(exp_item_scores); ndcg_gains.append(click); ndcg_valid.append(slot_valid)
        if world is not None:
            items = _item_matrix(part)
            users = np.asarray(part.column("user_id").to_numpy(), dtype=np.int64)
            gen = placed.cpu().numpy()
            gen = np.where((np.arange(gen.shape[1])[None, :] < lengths[:, None]) & (gen >= 0), gen, -1)
            oracle["model"].append(expected_feedback(world, users, _ids(items, gen)))
            logged = np.where(slot_valid, exposure, -1)
            oracle["logged"].append(expected_feedback(world, users, _ids(items, logged)))
    pad = lambda arrs, v: np.concatenate([np.pad(a, ((0, 0), (0, L - a.shape[1])), constant_values=v) for a in arrs])
    out = {
        "val_nll": nll / max(n_req, 1),
        "ndcg": ndcg(pad(ndcg_scores, 0.0), pad(ndcg_gains, 0.0), pad(ndcg_valid, False)),
        "auc_click": auc(np.concatenate(click_scores), np.concatenate(click_labels)),
        "auc_exposure": auc(np.concatenate(exp_scores), np.concatenate(exp_labels)),
        "requests": n_req,
    }
    if world is not None:
        for who in ("model", "logged"):
            for fb in ("click", "like", "long_view"):
                out[f"oracle_{fb}s" + ("" if who == "model" else "_logged")] = float(
                    np.concatenate([o[fb] for o in oracle[who]]).mean())
        out["oracle_click_lift"] = out["oracle_clicks"] / out["oracle_clicks_logged"] - 1.0
    return out


def _item_matrix(table: pa.Table) -> np.ndarray:
    from gref.data.pairs import padded

    return padded(table.column("item_id"), -1).astype(np.int64)


def _ids(items: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Candidate indices [B, L] (-1 = none) -> item ids [B, L] (-1 = none)."""
    return np.where(idx >= 0, np.take_along_axis(items, np.clip(idx, 0, None), axis=1), -1)


def selection_metric(cfg_metric: str, has_world: bool) -> str:
    if cfg_metric != "auto":
        return cfg_metric
    return "oracle_clicks" if has_world else "ndcg"
