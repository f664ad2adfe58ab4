"""Pointwise click models (paper Table 1's DNN row, and DCN): each candidate is scored from its
own features alone -- no list context -- and the list is the top n by predicted CTR.

Input per candidate: the F numeric features, one ``emb_dim`` embedding per categorical column
and an ``emb_dim`` embedding of the upstream rank, concatenated (the classic CTR-model input).
Simplified: no user-behaviour sequence features (the logs have none).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gref.baselines.common import PointwiseReranker
from gref.baselines.config import BaselineConfig


class FieldInput(nn.Module):
    """num [B, M, F], cat [B, M, C] -> x0 [B, M, F + (C + 1) * emb_dim]."""

    def __init__(self, cfg: BaselineConfig):
        super().__init__()
        self.cat_emb = nn.ModuleList(nn.Embedding(size, cfg.emb_dim, padding_idx=0) for size in cfg.cat_sizes)
        self.rank_emb = nn.Embedding(cfg.max_candidates, cfg.emb_dim)
        self.width = cfg.num_features + (len(cfg.cat_sizes) + 1) * cfg.emb_dim

    def forward(self, num: Tensor, cat: Tensor) -> Tensor:
        B, M = num.shape[:2]
        rank = self.rank_emb(torch.arange(M, device=num.device))[None].expand(B, -1, -1)
        return torch.cat([num, *(emb(cat[..., j]) for j, emb in enumerate(self.cat_emb)), rank], dim=-1)


def mlp(width: int, hidden: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
        width = h
    return nn.Sequential(*layers)


class DNN(PointwiseReranker):
    """MLP click model: logit = w . MLP(x0) + b."""

    def __init__(self, cfg: BaselineConfig):
        super().__init__(cfg)
        self.input = FieldInput(cfg)
        self.deep = mlp(self.input.width, cfg.hidden, cfg.dropout)
        self.out = nn.Linear(cfg.hidden[-1] if cfg.hidden else self.input.width, 1)

    def logits(self, num: Tensor, cat: Tensor, cand_mask: Tensor) -> Tensor:
        return self.out(self.deep(self.input(num, cat))).squeeze(-1)


class CrossLayer(nn.Module):
    """DCN-V2 cross layer: x_{l+1} = x0 * (W x_l + b) + x_l (explicit bounded-degree feature crosses)."""

    def __init__(self, width: int):
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x0: Tensor, x: Tensor) -> Tensor:
        return x0 * self.linear(x) + x


class DCN(PointwiseReranker):
    """Deep & Cross Network (V2, parallel): cross stack and MLP on the same x0, concatenated, then
    a linear click logit."""

    def __init__(self, cfg: BaselineConfig):
        super().__init__(cfg)
        self.input = FieldInput(cfg)
        self.cross = nn.ModuleList(CrossLayer(self.input.width) for _ in range(cfg.cross_layers))
        self.deep = mlp(self.input.width, cfg.hidden, cfg.dropout)
        self.out = nn.Linear(self.input.width + (cfg.hidden[-1] if cfg.hidden else self.input.width), 1)

    def logits(self, num: Tensor, cat: Tensor, cand_mask: Tensor) -> Tensor:
        x0 = self.input(num, cat)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        return self.out(torch.cat([x, self.deep(x0)], dim=-1)).squeeze(-1)
