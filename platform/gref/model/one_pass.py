"""A one-pass (non-autoregressive) scorer of the same size as a GenReranker: the latency floor
of Table 2's NAR rows. The same encoder; the decoder layers run once, without a causal mask,
over n learned position queries; scores[t, i] = h_t . z_i (an n x m matrix, as in NAR4Rec);
positions are filled greedily in order with the same duplicate mask."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gref.model.config import ModelConfig
from gref.model.reranker import GenReranker


class OnePassScorer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.body = GenReranker(cfg)  # encoder + decoder stack of identical size
        self.queries = nn.Embedding(cfg.max_length, cfg.d_model)

    @torch.no_grad()
    def decode(self, num: Tensor, cat: Tensor, cand_mask: Tensor, n: int) -> Tensor:
        """[B, M] inputs -> [B, n] candidate indices (-1 when candidates run out)."""
        body = self.body
        z = body.encode(num, cat, cand_mask)
        memory, memory_bias = body.memory(z, cand_mask)
        x = self.queries.weight[:n][None].expand(z.shape[0], -1, -1)
        for i, layer in enumerate(body.decoder):  # bidirectional over the n positions
            x, _ = layer(x, memory[i], memory_bias, causal=False)
        scores = torch.einsum("btd,bmd->btm", body.dec_norm(x), z)  # [B, n, M]
        blocked = ~cand_mask
        out = torch.full((z.shape[0], n), -1, dtype=torch.long, device=z.device)
        rows = torch.arange(z.shape[0], device=z.device)
        for t in range(n):
            choice = scores[:, t].masked_fill(blocked, float("-inf")).argmax(-1)
            out[:, t] = torch.where(blocked.all(1), -1, choice)
            blocked[rows, choice] = True
        return out

