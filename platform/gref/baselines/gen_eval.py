"""Generator-evaluator reranking (DeWu article; the spirit of PIER / Edge-Rerank): a generator
proposes several lists, a list-wise evaluator trained on logged feedback picks one.

Generator: a PRM-style scorer (Transformer over the candidates, a score per item) trained on
clicks of exposed items; it proposes the greedy top-n list and ``num_lists - 1`` Plackett-Luce
samples (Gumbel top-n of score / temperature) -- the article's "random perturbations".
Evaluator: a causal Transformer over a list in display order (item encoding + display-position
embedding) predicting the click at every position from the items above it (so it can learn
fatigue and series effects); trained on the logged exposure lists and their clicks. A list's
value is its predicted expected clicks, sum_p sigmoid(logit_p); the best list is shown.
Both parts train jointly in one job (loss = generator BCE + evaluator BCE).

Simplified: a separate click-only evaluator (no like / long-view heads) and sampling instead of
beam search; the evaluator only ever saw logged (production-policy) lists, the known weakness
of the paradigm the GReF paper argues against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gref.baselines.common import BaselineReranker, CandidateEmbedding, encoder, exposed_click_bce, top_n
from gref.baselines.config import BaselineConfig
from gref.data.batch import Batch


class GeneratorEvaluator(BaselineReranker):
    def __init__(self, cfg: BaselineConfig):
        super().__init__(cfg)
        d = cfg.d_model
        self.gen_embed, self.gen_encoder = CandidateEmbedding(cfg), encoder(cfg)
        self.gen_out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 1))
        self.ev_embed, self.ev_encoder = CandidateEmbedding(cfg), encoder(cfg)
        self.ev_pos = nn.Embedding(cfg.max_length, d)
        self.ev_out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 1))

    def generator_logits(self, num: Tensor, cat: Tensor, cand_mask: Tensor) -> Tensor:
        """-> per-candidate click logits [B, M]."""
        h = self.gen_encoder(self.gen_embed(num, cat), src_key_padding_mask=~cand_mask)
        return self.gen_out(h).squeeze(-1)

    def evaluator_logits(self, num: Tensor, cat: Tensor, lists: Tensor) -> Tensor:
        """lists [B, G, N] candidate indices in display order (-1 = none) -> click logits [B, G, N]
        of each position given the items above it."""
        B, G, N = lists.shape
        e = self.ev_embed(num, cat)  # [B, M, d]
        idx = lists.clamp_min(0).reshape(B, G * N)
        x = torch.gather(e, 1, idx[..., None].expand(-1, -1, e.shape[-1])).view(B * G, N, -1)
        x = x + self.ev_pos.weight[:N][None]
        causal = torch.ones(N, N, dtype=torch.bool, device=x.device).triu(1)  # True = may not attend
        return self.ev_out(self.ev_encoder(x, mask=causal, is_causal=True)).view(B, G, N)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        gen = exposed_click_bce(self.generator_logits(batch.num, batch.cat, batch.cand_mask), batch)
        ev_logits = self.evaluator_logits(batch.num, batch.cat, batch.exposure[:, None])[:, 0]
        valid = torch.arange(ev_logits.shape[1], device=ev_logits.device)[None] < batch.lengths[:, None]
        ev = (F.binary_cross_entropy_with_logits(ev_logits, batch.click, reduction="none") * valid).sum() / valid.sum()
        return {"loss": gen + ev, "generator_bce": gen, "evaluator_bce": ev}

    @torch.no_grad()
    def propose(self, num: Tensor, cat: Tensor, cand_mask: Tensor, n: int) -> Tensor:
        """The generator's lists [B, G, n]: greedy first, then Plackett-Luce samples."""
        scores = self.generator_logits(num, cat, cand_mask)
        lists = [top_n(scores, cand_mask, n)]
        for _ in range(self.cfg.num_lists - 1):
            gumbel = -torch.log(-torch.log(torch.rand_like(scores).clamp(1e-9, 1 - 1e-9)))
            lists.append(top_n(scores / self.cfg.temperature + gumbel, cand_mask, n))
        return torch.stack(lists, dim=1)

    @torch.no_grad()
    def rerank(self, num: Tensor, cat: Tensor, cand_mask: Tensor, n: int) -> Tensor:
        lists = self.propose(num, cat, cand_mask, n)
        value = (torch.sigmoid(self.evaluator_logits(num, cat, lists)) * (lists >= 0)).sum(-1)  # [B, G]
        best = value.argmax(1)
        return lists[torch.arange(lists.shape[0], device=lists.device), best]

    @torch.no_grad()
    def item_scores(self, num: Tensor, cat: Tensor, cand_mask: Tensor, placed: Tensor) -> Tensor:
        from gref.model.decoding import list_scores

        logits = self.generator_logits(num, cat, cand_mask)
        return list_scores(placed, logits.masked_fill(~cand_mask, 0.0), cand_mask)
