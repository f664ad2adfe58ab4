"""Ray-free training pieces shared by the Ray Train loop, tests and benchmarks:
model construction, one optimisation step per stage, and validation."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from torch import nn

from gref.baselines import BaselineConfig, BaselineReranker, build_baseline
from gref.data.batch import Batch
from gref.data.features import FeatureSpec
from gref.losses import OMTPLoss, RerankDPOLoss, sequence_log_prob
from gref.model.config import ModelConfig
from gref.model.reranker import GenReranker


def data_meta(data_dir: str | Path) -> dict[str, Any]:
    """Feature spec and dataset config of a prepared data dir."""
    data_dir = Path(data_dir)
    spec = FeatureSpec.load(data_dir / "features.json")
    summary = json.loads((data_dir / "summary.json").read_text())
    return {"num_features": len(spec.num_cols), "cat_sizes": spec.cat_sizes, "cat_cols": spec.cat_cols,
            "feedback_weights": summary["config"]["feedback_weights"]}


def build_model(cfg: ModelConfig, meta: dict[str, Any]) -> GenReranker:
    """The model config with the data's feature sizes filled in."""
    return GenReranker(replace(cfg, num_features=meta["num_features"], cat_sizes=list(meta["cat_sizes"])))


def build_baseline_model(cfg: BaselineConfig, meta: dict[str, Any]) -> BaselineReranker:
    """A baseline (gref.baselines) with the data's feature sizes filled in."""
    return build_baseline(replace(cfg, num_features=meta["num_features"], cat_sizes=list(meta["cat_sizes"])))


def unwrap(model: nn.Module) -> nn.Module:
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
    return loss_fn(lp[0], lp[1], ref[0], ref[1], batch.lengths)


def evaluate(model: nn.Module, table: pa.Table, meta: dict[str, Any], batch_size: int = 512,
             world=None, device: str | torch.device = "cpu",
             logged_clicks: float | None = None) -> dict[str, float]:
    """Validation metrics of greedy OMTP decoding (gref.evaluation); with ``logged_clicks`` (the
    logged exposure order's oracle clicks on the same table, a constant the caller computes once),
    also the model's relative lift over it."""
    from gref.evaluation import evaluate_model

    out = evaluate_model(model, table, meta, world, batch_size, device)
    if world is not None and logged_clicks is not None:
        out["oracle_clicks_logged"] = logged_clicks
        out["oracle_click_lift"] = out["oracle_clicks"] / logged_clicks - 1.0
    return out


def selection_metric(cfg_metric: str, has_world: bool) -> str:
    if cfg_metric != "auto":
        return cfg_metric
    return "oracle_clicks" if has_world else "ndcg"
