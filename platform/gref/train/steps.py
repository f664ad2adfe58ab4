"""Ray-free training pieces shared by the Ray Train loop, tests and benchmarks: model
construction, validation, and the model-selection metric (gref.train.objectives: the losses)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from torch import nn

from gref.baselines import BaselineConfig, BaselineReranker, build_baseline
from gref.data.features import FeatureSpec
from gref.model.config import ModelConfig
from gref.model.reranker import GenReranker


def data_meta(data_dir: str | Path) -> dict[str, Any]:
    """Feature spec and dataset config of a prepared data dir."""
    data_dir = Path(data_dir)
    spec = FeatureSpec.load(data_dir / "features.json")
    summary = json.loads((data_dir / "summary.json").read_text())
    profile = summary.get("profile", {})
    return {"num_features": len(spec.num_cols), "cat_sizes": spec.cat_sizes, "cat_cols": spec.cat_cols,
            "num_cols": spec.num_cols,
            "feedback_weights": summary["config"]["feedback_weights"],
            "click_model_context": summary["config"].get("click_model_context", ""),
            "alpha": summary["config"].get("alpha", 1.0), "gamma": summary["config"].get("gamma", 1.0),
            # longest candidate / shown list in the data (0: data prepared before profiles existed)
            "m_max": profile.get("m", {}).get("max", 0), "n_max": profile.get("n", {}).get("max", 0)}


def _data_shaped(cfg, meta: dict[str, Any]):
    """``cfg`` with the data's feature sizes, and lengths grown to the data's longest lists (a
    real log may show more items than the default ``max_length``: never an index error)."""
    return replace(cfg, num_features=meta["num_features"], cat_sizes=list(meta["cat_sizes"]),
                   max_length=max(cfg.max_length, meta.get("n_max", 0)),  # hand-made metas lack them
                   max_candidates=max(cfg.max_candidates, meta.get("m_max", 0)))


def build_model(cfg: ModelConfig, meta: dict[str, Any]) -> GenReranker:
    """The model config shaped by the data (``_data_shaped``)."""
    return GenReranker(_data_shaped(cfg, meta))


def build_baseline_model(cfg: BaselineConfig, meta: dict[str, Any]) -> BaselineReranker:
    """A baseline (gref.baselines) shaped by the data (``_data_shaped``)."""
    return build_baseline(_data_shaped(cfg, meta))


def evaluate(model: nn.Module, table: pa.Table, meta: dict[str, Any], batch_size: int = 512,
             world=None, device: str | torch.device = "cpu",
             logged_clicks: float | None = None, estimator=None) -> dict[str, float]:
    """Validation metrics of greedy OMTP decoding (gref.evaluation); with ``logged_clicks`` (the
    logged exposure order's oracle clicks on the same table, a constant the caller computes once),
    also the model's relative lift over it; with a click-model ``estimator`` (fitted on ``table``,
    gref.clickmodel.estimate), its estimated E[clicks] per model kind (``est_clicks_<kind>``)."""
    from gref.evaluation import evaluate_model

    out = evaluate_model(model, table, meta, world, batch_size, device, estimator)
    for key in [k for k in out if k.startswith("_est_")]:
        out[f"est_clicks_{key[len('_est_'):]}"] = float(out.pop(key).mean())
    for key in [k for k in out if k.startswith("_")]:  # per-request arrays for a report (the bucket's IPS values)
        del out[key]
    if isinstance(model, BaselineReranker):  # its own training loss on validation
        out["val_loss"] = baseline_loss(model, table, meta, batch_size, device)
    if world is not None and logged_clicks is not None:
        out["oracle_clicks_logged"] = logged_clicks
        out["oracle_click_lift"] = out["oracle_clicks"] / logged_clicks - 1.0
    return out


@torch.no_grad()
def baseline_loss(model: BaselineReranker, table: pa.Table, meta: dict[str, Any], batch_size: int = 512,
                  device: str | torch.device = "cpu") -> float:
    """A baseline's ``forward`` loss on a table, averaged over requests."""
    from gref.data.batch import collate, iter_tables

    total, n = 0.0, 0
    for part in iter_tables(table, batch_size, shuffle=False):
        b = collate(part, meta["num_features"], len(meta["cat_sizes"]), meta["feedback_weights"]).to(device)
        total += float(model(b)["loss"]) * b.size
        n += b.size
    return total / max(n, 1)


def lr_schedule(opt: torch.optim.Optimizer, optim, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """constant, or linear warm-up then cosine decay to 0 over all epochs' steps."""
    total = max(1, optim.epochs * steps_per_epoch)
    warm = max(1, int(optim.warmup * total))

    def factor(step: int) -> float:
        if optim.schedule != "cosine":
            return 1.0
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def selection_metric(cfg_metric: str, has_world: bool) -> str:
    if cfg_metric != "auto":
        return cfg_metric
    return "oracle_clicks" if has_world else "est_clicks_dbn"  # no oracle: the click-model estimate


def metric_mode(name: str) -> str:
    """"min" for losses and negative log-likelihoods, "max" for every other validation metric."""
    return "min" if name.endswith(("_loss", "_nll", "val_kl")) else "max"


def better(value: float, best: float | None, name: str) -> bool:
    """Is ``value`` of metric ``name`` an improvement on ``best`` (None = nothing yet)?"""
    if best is None:
        return True
    return value < best if metric_mode(name) == "min" else value > best


def validation_metrics(stage: str, gref_model: bool, has_world: bool, post: dict | None = None) -> set[str]:
    """The metrics the validation of ``stage`` produces, any of which may select the best epoch.
    ``post``: the post-training config (objective, pairs) when stage == "dpo"."""
    names = {"ndcg", "auc_click", "auc_exposure", "diversity"}
    names |= {"val_nll"} if gref_model else {"val_loss"}
    if has_world:
        names |= {"oracle_clicks", "oracle_likes", "oracle_long_views", "oracle_click_lift"}
    else:
        names |= {"est_clicks_pbm", "est_clicks_dbn"}
    if stage == "dpo":
        names |= {"val_kl"}
        if post and (post.get("objective") == "distill" or post.get("pairs") == "onpolicy"):
            names |= {"reward_clicks"}  # the post-training reward's value of the greedy lists
        names |= {"val_distill_nll"} if post and post.get("objective") == "distill" else {
            "val_dpo_loss", "val_reward_margin", "val_reward_accuracy", "val_chosen_logp", "val_rejected_logp"}
    return names
