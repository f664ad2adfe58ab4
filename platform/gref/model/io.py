"""A trained reranker on disk: ``model.pt`` (state_dict) + ``model.json`` (ModelConfig) +
``features.json`` (the FeatureSpec serving needs to encode raw candidates). Rebuilds as
GenReranker with its decode methods -- no pickled classes."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from gref.model.config import ModelConfig
from gref.model.reranker import GenReranker


def save_reranker(directory: str | Path, model: GenReranker, features_json: str | Path | None = None,
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


def load_reranker(directory: str | Path, device: str | torch.device = "cpu") -> GenReranker:
    src = Path(directory)
    if not (src / "model.json").exists():
        raise FileNotFoundError(f"no reranker at {src} (expected model.json and model.pt)")
    cfg = ModelConfig(**json.loads((src / "model.json").read_text()))
    model = GenReranker(cfg)
    model.load_state_dict(torch.load(src / "model.pt", map_location=device, weights_only=True))
    return model.to(device).eval()
