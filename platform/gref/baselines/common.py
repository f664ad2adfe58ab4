"""Pieces every baseline shares: the candidate input embedding, the pointwise click loss, and
the list -> per-candidate score rule used for AUC.

Shapes: B requests, M candidates (padded), N list positions, F numeric / C categorical
features, d = d_model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gref.baselines.config import BaselineConfig
from gref.data.batch import Batch


class CandidateEmbedding(nn.Module):
    """Sum of a numeric projection, one embedding per categorical column and the upstream-rank
    embedding: num [B, M, F], cat [B, M, C] -> [B, M, d] (the Gen-Reranker's input, §4.1)."""

    def __init__(self, cfg: BaselineConfig):
        super().__init__()
        d = cfg.d_model
        self.num_proj = nn.Linear(cfg.num_features, d) if cfg.num_features else None
        self.cat_emb = nn.ModuleList(nn.Embedding(size, d, padding_idx=0) for size in cfg.cat_sizes)
        self.rank_emb = nn.Embedding(cfg.max_candidates, d)

    def forward(self, num: Tensor, cat: Tensor) -> Tensor:
        M = num.shape[1]
        x = self.rank_emb(torch.arange(M, device=num.device))[None].expand(num.shape[0], -1, -1)
        if self.num_proj is not None:
            x = x + self.num_proj(num)
        for j, emb in enumerate(self.cat_emb):
            x = x + emb(cat[..., j])
        return x


def encoder(cfg: BaselineConfig, layers: int | None = None) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, 4 * cfg.d_model, cfg.dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, layers or cfg.layers, enable_nested_tensor=False)


def exposed_click_bce(logits: Tensor, batch: Batch) -> Tensor:
    """Pointwise click loss: BCE of the candidate logits [B, M] at the exposed slots against
    their logged clicks, mean over exposed items. -> scalar"""
    at = torch.gather(logits, 1, batch.exposure)  # [B, N]
    valid = torch.arange(at.shape[1], device=at.device)[None] < batch.lengths[:, None]
    loss = F.binary_cross_entropy_with_logits(at, batch.click, reduction="none")
    return (loss * valid).sum() / valid.sum().clamp_min(1)


def top_n(scores: Tensor, cand_mask: Tensor, n: int) -> Tensor:
    """Greedy list of a pointwise scorer: the n best candidates by score. [B, M] -> [B, n]
    candidate indices, -1 past a request's candidate count."""
    n_eff = min(n, scores.shape[1])
    order = scores.masked_fill(~cand_mask, float("-inf")).topk(n_eff, dim=1).indices
    out = torch.full((scores.shape[0], n), -1, dtype=torch.long, device=scores.device)
    out[:, :n_eff] = order
    return out.masked_fill(torch.arange(n, device=scores.device)[None] >= cand_mask.sum(1, keepdim=True), -1)


class BaselineReranker(nn.Module):
    """What the platform asks of a baseline: ``forward(batch)`` returns its training losses
    (key "loss" is optimised; forward, so DDP syncs gradients), ``rerank`` places n items,
    ``item_scores`` gives per-candidate scores of a placed list for AUC."""

    def __init__(self, cfg: BaselineConfig):
        super().__init__()
        self.cfg = cfg

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        raise NotImplementedError

    def rerank(self, num: Tensor, cat: Tensor, cand_mask: Tensor, n: int) -> Tensor:
        raise NotImplementedError

    def item_scores(self, num: Tensor, cat: Tensor, cand_mask: Tensor, placed: Tensor) -> Tensor:
        raise NotImplementedError


class PointwiseReranker(BaselineReranker):
    """A model that scores each candidate (``logits`` [B, M]), is trained on the logged clicks
    of exposed items and shows the top n by score (rerank by predicted CTR)."""

    def logits(self, num: Tensor, cat: Tensor, cand_mask: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        loss = exposed_click_bce(self.logits(batch.num, batch.cat, batch.cand_mask), batch)
        return {"loss": loss, "bce": loss}

    @torch.no_grad()
    def rerank(self, num: Tensor, cat: Tensor, cand_mask: Tensor, n: int) -> Tensor:
        return top_n(self.logits(num, cat, cand_mask), cand_mask, n)

    @torch.no_grad()
    def item_scores(self, num: Tensor, cat: Tensor, cand_mask: Tensor, placed: Tensor) -> Tensor:
        from gref.model.decoding import list_scores

        return list_scores(placed, self.logits(num, cat, cand_mask).masked_fill(~cand_mask, 0.0), cand_mask)
