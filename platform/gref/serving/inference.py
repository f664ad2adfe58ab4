"""One arm's model behind the serving path, without Ray: load the weights a URI names, and answer a
batch of validated rerank requests (serve/app.py's ``Reranker`` wraps it in ``@serve.batch``).

A batch is decoded in one padded forward per distinct (n, explore): a non-autoregressive model's
list depends on its length, and a sampled list (exploration) is decoded apart from the greedy ones,
with its log-probability under the sampling policy (0 for a greedy list), which the feedback store
keeps as the served list's propensity.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, get_args

import numpy as np
import torch
from torch import nn

from gref.data.features import FeatureSpec
from gref.model.accel import Mode, accelerated_rerank
from gref.serving.requests import encode_batch

DecodeMode = Literal["auto", Mode]  # auto = cuda_graphs on a GPU, else eager
DECODE_MODES: tuple[str, ...] = get_args(DecodeMode)


def serving_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")  # a num_gpus replica may still lack CUDA


@dataclass
class ServedModel:
    """A reranker as one arm serves it. ``served_by``: the name, version, kind and heads of the
    weights, returned with every answer (the Router caches nothing: a replica restarted after the
    registry alias moved serves, and says, the new version)."""

    model: nn.Module
    spec: FeatureSpec
    served_by: dict[str, Any]
    greedy: Callable  # model.rerank's signature, maybe compiled / graphed (gref.model.accel): greedy lists
    device: torch.device
    decode_mode: Mode  # resolved: auto is one of gref.model.accel's modes here
    pinned: str  # the URI loaded: a registry alias resolved to its version
    explore_temperature: float = 1.0  # sampling temperature of explored lists (1 = the model's distribution)
    features: list[str] = field(init=False)  # item_id + the feature columns: what the store keeps of a candidate
    explorable: bool = field(init=False)  # a GReF: lists can be sampled with a known probability

    @classmethod
    def load(cls, model_uri: str, tracking_uri: str = "", decode_mode: str = "auto",
             explore_temperature: float = 1.0, device: torch.device | None = None) -> ServedModel:
        """The reranker at ``model_uri``: a registered version (``models:/name@alias``, resolved once:
        what is loaded is what is reported), a run (``runs:/...``) or a model directory."""
        import mlflow

        from gref import tracking
        from gref.reranker_io import load_reranker

        if decode_mode not in DECODE_MODES:
            raise ValueError(f"decode_mode must be one of {', '.join(DECODE_MODES)}, got '{decode_mode}'")
        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        pinned, version = tracking.pin_version(model_uri)
        directory = tracking.reranker_dir(pinned)
        device = device or serving_device()
        model = load_reranker(directory, device)
        if decode_mode == "auto":
            decode_mode = "cuda_graphs" if device.type == "cuda" else "eager"
        served_by = {"name": model_uri, "version": version, "kind": getattr(model.cfg, "kind", "gref"),
                     "heads": getattr(model, "k", None)}
        return cls(model, FeatureSpec.load(Path(directory) / "features.json"), served_by,
                   accelerated_rerank(model, decode_mode), device, decode_mode, pinned, explore_temperature)

    def __post_init__(self) -> None:
        from gref.model.reranker import GenReranker

        # once per replica, not per request: the candidate fields this model reads (what the
        # feedback store keeps of a candidate), and whether a list can be sampled and its
        # probability known (GReF, not a baseline)
        self.features = ["item_id", *self.spec.num_cols, *self.spec.cat_cols]
        self.explorable = isinstance(self.model, GenReranker)

    def rerank_batch(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each request {"candidates": [...validated...], "n": int, "explore": bool, "sent_at": wall
        time it left the Router (optional)} -> {"order": [candidate indices in display order],
        "model": ``served_by``, "features": ``features``, "explored": whether the list was
        sampled (explore, on a GReF model), "log_propensity": its log-probability under the sampling
        policy (0 for the greedy list), "timing": ms before the batch ran ("queue", from "sent_at")
        and in the batch's "encode" and "decode", and the batch's size} or {"error": message, "timing"}
        for a request this model cannot serve (too many candidates, n past its max_length)."""
        from gref.model.decoding import decode

        started = time.time()
        encode_s = decode_s = 0.0
        limit_m, limit_n = self.model.cfg.max_candidates, self.model.cfg.max_length
        out: list[dict[str, Any]] = [{} for _ in requests]
        ok = []
        for i, r in enumerate(requests):
            if len(r["candidates"]) > limit_m or r["n"] > limit_n:
                out[i] = {"error": f"this model serves at most {limit_m} candidates and n <= {limit_n}"}
            else:
                ok.append(i)
        if ok:
            num, cat, mask = encode_batch([requests[i]["candidates"] for i in ok], self.spec)
            num_t, cat_t, mask_t = (torch.from_numpy(a).to(self.device) for a in (num, cat, mask))
            encode_s = time.time() - started
            ns = np.array([requests[i]["n"] for i in ok])
            explore = np.array([self.explorable and bool(requests[i].get("explore", False)) for i in ok])
            for n, sampled in sorted({(int(n), bool(e)) for n, e in zip(ns, explore)}):
                rows = np.flatnonzero((ns == n) & (explore == sampled))
                sel = torch.from_numpy(rows).to(self.device)
                with torch.no_grad():  # any platform reranker: GReF's OMTP decoding or a baseline's
                    if sampled:
                        placed, log_p = decode(self.model, num_t[sel], cat_t[sel], mask_t[sel], n,
                                               temperature=self.explore_temperature, return_log_prob=True)
                        placed, log_p = placed.cpu().numpy(), log_p.cpu().numpy()
                    else:
                        placed = self.greedy(num_t[sel], cat_t[sel], mask_t[sel], n).cpu().numpy()
                        log_p = np.zeros(len(rows))
                for b, row in enumerate(rows):
                    out[ok[row]] = {"order": [int(j) for j in placed[b] if j >= 0], "model": self.served_by,
                                    "features": self.features, "explored": sampled, "log_propensity": float(log_p[b])}
            decode_s = time.time() - started - encode_s
        for r, o in zip(requests, out):
            o["timing"] = {"queue": 1000.0 * max(started - r.get("sent_at", started), 0.0),
                           "encode": 1000.0 * encode_s, "decode": 1000.0 * decode_s, "batch": len(requests)}
        return out
