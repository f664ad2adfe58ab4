"""A trained reranker on disk: ``model.pt`` (state_dict) + ``model.json`` (ModelConfig) +
``features.json`` (the FeatureSpec serving needs to encode raw candidates). Rebuilds the model
from its config -- a GenReranker, or a baseline when model.json names a ``kind`` -- no pickled
classes."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from gref.model.config import ModelConfig
from gref.model.reranker import GenReranker


def model_from_config(cfg: dict) -> nn.Module:
    """An untrained model from its saved config: a baseline (gref.baselines) when the config has
    a ``kind``, else a GenReranker."""
    if "kind" in cfg:
        from gref.baselines import BaselineConfig, build_baseline

        return build_baseline(BaselineConfig(**cfg))
    return GenReranker(ModelConfig(**cfg))


def save_reranker(directory: str | Path, model: nn.Module, features_json: str | Path | None = None,
                  extra: dict | None = None) -> Path:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / "model.pt")
    (out / "model.json").write_text(json.dumps(asdict(model.cfg), indent=2))
    if features_json is not None:
        shutil.copyfile(features_json, out / "features.json")
    if extra:
        (out / "info.json").write_text(json.dumps(extra, indent=2, default=str))
    return out


def load_reranker(directory: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    src = Path(directory)
    if not (src / "model.json").exists():
        raise FileNotFoundError(f"no reranker at {src} (expected model.json and model.pt)")
    model = model_from_config(json.loads((src / "model.json").read_text()))
    model.load_state_dict(torch.load(src / "model.pt", map_location=device, weights_only=True))
    return model.to(device).eval()
