"""Seq2Slate (Bello et al., 2018): a pointer network that builds the list one item per step.

Encoder: Transformer over the candidates (the paper: LSTM). Decoder: a GRU cell fed the
embedding of the item placed last (a learned "go" vector first); at every step a pointer
attention  s_i = v . tanh(W_e e_i + W_d h_t)  scores the candidates not yet placed.

Training (the paper's weak supervision from click labels): teacher-forced on the logged
exposure order re-sorted by relevance (feedback-weighted, as U_i of Eq. 7; ties keep the logged
order); at step t the loss is the cross entropy between softmax(s) over the remaining
candidates and the remaining labels normalised to sum 1; steps whose remaining labels are all
zero carry no loss. Decoding: greedy, n sequential steps (the step-by-step cost of Table 2).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gref.baselines.common import BaselineReranker, CandidateEmbedding, encoder
from gref.baselines.config import BaselineConfig
from gref.data.batch import Batch


class Seq2Slate(BaselineReranker):
    def __init__(self, cfg: BaselineConfig):
        super().__init__(cfg)
        d = cfg.d_model
        self.embed = CandidateEmbedding(cfg)
        self.encoder = encoder(cfg)
        self.norm = nn.LayerNorm(d)
        self.init_state = nn.Linear(d, d)
        self.go = nn.Parameter(torch.randn(d) * 0.02)
        self.cell = nn.GRUCell(d, d)
        self.w_enc = nn.Linear(d, d, bias=False)
        self.w_dec = nn.Linear(d, d)
        self.v = nn.Linear(d, 1, bias=False)

    def _encode(self, num: Tensor, cat: Tensor, cand_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """-> (e [B, M, d] candidate encodings, keys [B, M, d] = W_e e, h0 [B, d])."""
        e = self.norm(self.encoder(self.embed(num, cat), src_key_padding_mask=~cand_mask))
        pooled = (e * cand_mask[..., None]).sum(1) / cand_mask.sum(1, keepdim=True).clamp_min(1)
        return e, self.w_enc(e), torch.tanh(self.init_state(pooled))

    def _pointer(self, keys: Tensor, h: Tensor, blocked: Tensor) -> Tensor:
        """keys [B, M, d], h [B, d], blocked [B, M] -> pointer logits [B, M] (blocked = -inf)."""
        return self.v(torch.tanh(keys + self.w_dec(h)[:, None])).squeeze(-1).masked_fill(blocked, float("-inf"))

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        B, N = batch.exposure.shape
        rows = torch.arange(B, device=batch.num.device)
        valid = torch.arange(N, device=rows.device)[None] < batch.lengths[:, None]
        rel = batch.relevance * valid
        order = torch.sort(-rel, dim=1, stable=True).indices
        target = torch.gather(batch.exposure, 1, order)  # [B, N]: the teacher order
        labels = torch.zeros(batch.cand_mask.shape, device=rows.device).scatter_add_(1, batch.exposure, rel)
        e, keys, h = self._encode(batch.num, batch.cat, batch.cand_mask)
        blocked = ~batch.cand_mask
        x = self.go.expand(B, -1)
        total = torch.zeros((), device=rows.device)
        for t in range(N):
            h = self.cell(x, h)
            logp = torch.log_softmax(self._pointer(keys, h, blocked), dim=-1)
            remaining = labels.masked_fill(blocked, 0.0)
            z = remaining.sum(1, keepdim=True)
            active = (z[:, 0] > 0) & valid[:, t]
            ce = -torch.where(remaining > 0, remaining / z.clamp_min(1e-9) * logp, 0.0).sum(1)
            total = total + (ce * active).sum()
            item = target[:, t]
            x = e[rows, item]
            blocked = blocked.clone()
            blocked[rows, item] |= valid[:, t]
        loss = total / B
        return {"loss": loss, "pointer_ce": loss}

    @torch.no_grad()
    def _greedy(self, num: Tensor, cat: Tensor, cand_mask: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """-> (placed [B, n], first-step pointer logits [B, M])."""
        B = cand_mask.shape[0]
        rows = torch.arange(B, device=cand_mask.device)
        e, keys, h = self._encode(num, cat, cand_mask)
        blocked = ~cand_mask
        x, first = self.go.expand(B, -1), None
        placed = torch.full((B, n), -1, dtype=torch.long, device=rows.device)
        for t in range(n):
            h = self.cell(x, h)
            logits = self._pointer(keys, h, blocked)
            if first is None:
                first = logits
            item = logits.argmax(-1)
            has = ~blocked.all(1)
            placed[:, t] = torch.where(has, item, -1)
            blocked[rows, item] = True
            x = e[rows, item]
        return placed, first

    def rerank(self, num: Tensor, cat: Tensor, cand_mask: Tensor, n: int) -> Tensor:
        return self._greedy(num, cat, cand_mask, n)[0]

    def item_scores(self, num: Tensor, cat: Tensor, cand_mask: Tensor, placed: Tensor) -> Tensor:
        from gref.model.decoding import list_scores

        first = self._greedy(num, cat, cand_mask, 1)[1]
        return list_scores(placed, first.masked_fill(~cand_mask, 0.0), cand_mask)
