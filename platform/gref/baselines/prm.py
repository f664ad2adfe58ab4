"""PRM (Pei et al., 2019, "Personalized Re-ranking for Recommendation"): a Transformer encoder
over the whole candidate list, so each item's score sees every other candidate, then a score per
item; the list is the top n by score.

Input: the candidates in upstream order with PRM's position embedding of that order (our
upstream-rank embedding) added to the item features. Simplified: no pre-trained personalised
user-item vector (the user features ride on every candidate row, as in the logs), and trained
with the pointwise click loss on exposed items (PRM uses the click labels of the initial list;
here only the shown n of m candidates have labels).
"""

from __future__ import annotations

from torch import Tensor, nn

from gref.baselines.common import CandidateEmbedding, PointwiseReranker, encoder
from gref.baselines.config import BaselineConfig


class PRM(PointwiseReranker):
    def __init__(self, cfg: BaselineConfig):
        super().__init__(cfg)
        self.embed = CandidateEmbedding(cfg)
        self.encoder = encoder(cfg)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.out = nn.Linear(cfg.d_model, 1)

    def logits(self, num: Tensor, cat: Tensor, cand_mask: Tensor) -> Tensor:
        h = self.encoder(self.embed(num, cat), src_key_padding_mask=~cand_mask)
        return self.out(self.norm(h)).squeeze(-1)
