"""NAR4Rec (Ren et al., KDD 2024): a non-autoregressive generator that scores every
(position, candidate) pair in one pass.

Matching model: a candidates encoder (Transformer over the m candidates) and a position encoder
(n learned position queries; each layer self-attends over the positions and cross-attends to
the candidates) give c_i and p_j; logits[j, i] = p_j . c_i / sqrt(d), and
P(i at j) = softmax over the request's candidates -- an n x m matrix that works for any
candidate set (no fixed item vocabulary).

Training -- sequence-level unlikelihood: a logged list Y is positive when its utility
U(Y) = sum of its items' feedback-weighted relevance is above the ``positive_quantile`` of the
batch; positives push likelihood up, negatives push it down:
    L = mean_Y [ pos(Y) * -sum_j log P(y_j at j) + (1 - pos(Y)) * -sum_j log(1 - P(y_j at j)) ].
Decoding -- contrastive (as in contrastive search): positions are filled in order; among the
``contrastive_topk`` unplaced candidates most probable at position j, take the one maximising
(1 - alpha) * P(i at j) - alpha * max_{k placed} cos(c_i, c_k) -- the penalty models the
dependency between placed items that the parallel matrix cannot.

Simplified: the paper's threshold on real feedback becomes a batch quantile of U(Y); its extra
contrastive training loss (weight omega, margin rho) is left out; NAR4Rec's own evaluator is the
generator-evaluator row (gen_eval), not part of this model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gref.baselines.common import BaselineReranker, CandidateEmbedding, encoder
from gref.baselines.config import BaselineConfig
from gref.data.batch import Batch
from gref.model.config import ModelConfig
from gref.model.reranker import DecoderLayer


class NAR4Rec(BaselineReranker):
    def __init__(self, cfg: BaselineConfig):
        super().__init__(cfg)
        d = cfg.d_model
        self.embed = CandidateEmbedding(cfg)
        self.cand_encoder = encoder(cfg)
        self.cand_norm = nn.LayerNorm(d)
        self.pos_queries = nn.Embedding(cfg.max_length, d)
        layer_cfg = ModelConfig(d_model=d, n_heads=cfg.n_heads, dropout=cfg.dropout)
        self.pos_layers = nn.ModuleList(DecoderLayer(layer_cfg) for _ in range(cfg.layers))
        self.pos_norm = nn.LayerNorm(d)

    def matrix(self, num: Tensor, cat: Tensor, cand_mask: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """-> (logits [B, n, M] of candidate i at position j, pads -inf; c [B, M, d])."""
        if n > self.cfg.max_length:
            raise ValueError(f"n={n} exceeds the model's max_length={self.cfg.max_length}")
        c = self.cand_norm(self.cand_encoder(self.embed(num, cat), src_key_padding_mask=~cand_mask))
        bias = torch.zeros(cand_mask.shape, dtype=c.dtype, device=c.device).masked_fill(~cand_mask, float("-inf"))
        x = self.pos_queries.weight[:n][None].expand(c.shape[0], -1, -1)
        for layer in self.pos_layers:
            x, _ = layer(x, layer.memory(c), bias[:, None, None, :], causal=False)
        logits = torch.einsum("bnd,bmd->bnm", self.pos_norm(x), c) / math.sqrt(c.shape[-1])
        return logits.masked_fill(~cand_mask[:, None], float("-inf")), c

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        N = batch.exposure.shape[1]
        logits, _ = self.matrix(batch.num, batch.cat, batch.cand_mask, N)
        return unlikelihood_loss(logits, batch.exposure, batch.lengths, batch.relevance, self.cfg.positive_quantile)

    @torch.no_grad()
    def rerank(self, num: Tensor, cat: Tensor, cand_mask: Tensor, n: int) -> Tensor:
        logits, c = self.matrix(num, cat, cand_mask, n)
        return contrastive_decode(torch.softmax(logits, -1), c, cand_mask, self.cfg.contrastive_alpha,
                                  self.cfg.contrastive_topk)

    @torch.no_grad()
    def item_scores(self, num: Tensor, cat: Tensor, cand_mask: Tensor, placed: Tensor) -> Tensor:
        from gref.model.decoding import list_scores

        # position 1 of the same n-position pass that made the list (the queries attend to each other)
        first = self.matrix(num, cat, cand_mask, placed.shape[1])[0][:, 0]
        return list_scores(placed, first.masked_fill(~cand_mask, 0.0), cand_mask)


def unlikelihood_loss(logits: Tensor, seq: Tensor, lengths: Tensor, relevance: Tensor,
                      positive_quantile: float) -> dict[str, Tensor]:
    """logits [B, N, M] (position x candidate), seq [B, N] logged lists, lengths [B],
    relevance [B, N] -> {"loss", "positive_fraction"}; loss = mean over lists of the positive
    list's NLL or the negative list's unlikelihood -sum_j log(1 - P(y_j at j))."""
    N = seq.shape[1]
    valid = torch.arange(N, device=seq.device)[None] < lengths[:, None]
    lp = torch.gather(torch.log_softmax(logits, -1), 2, seq[..., None]).squeeze(-1)  # [B, N]
    utility = (relevance * valid).sum(1)
    positive = utility > torch.quantile(utility, positive_quantile)
    nll = -(lp * valid).sum(1)
    # log(1 - p) with p = exp(lp); clamp keeps a certain (p = 1) negative finite
    unlikely = -(torch.log1p(-lp.exp().clamp(max=1 - 1e-6)) * valid).sum(1)
    loss = torch.where(positive, nll, unlikely).mean()
    return {"loss": loss, "positive_fraction": positive.float().mean()}


def contrastive_decode(probs: Tensor, c: Tensor, cand_mask: Tensor, alpha: float, topk: int) -> Tensor:
    """probs [B, n, M] P(i at j), c [B, M, d] candidate encodings -> placed [B, n] (-1 = none).
    Position j takes argmax_i (1 - alpha) P(i at j) - alpha max_{k placed} cos(c_i, c_k)
    over the ``topk`` unplaced candidates most probable at j (no penalty at the first position)."""
    B, n, M = probs.shape
    cn = F.normalize(c, dim=-1)
    sim = cn @ cn.transpose(1, 2)  # [B, M, M]
    rows = torch.arange(B, device=c.device)
    blocked = ~cand_mask
    penalty = torch.zeros(B, M, device=c.device)
    placed = torch.full((B, n), -1, dtype=torch.long, device=c.device)
    for t in range(n):
        p = probs[:, t].masked_fill(blocked, -1.0)
        kth = p.topk(min(topk, M), dim=1).values[:, -1:]  # the topk-th largest probability
        score = ((1 - alpha) * p - (alpha * penalty if t else 0.0)).masked_fill(blocked | (p < kth), float("-inf"))
        item = score.argmax(-1)
        placed[:, t] = torch.where(blocked.all(1), -1, item)
        blocked.scatter_(1, item[:, None], True)
        penalty = sim[rows, item] if t == 0 else torch.maximum(penalty, sim[rows, item])
    return placed
