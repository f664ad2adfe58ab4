"""Learned effects between attribute *values* of two items of a list: items that go together or clash.

The structured list click model (gref.clickmodel.structured) sees one relation between two items:
equality of an attribute (same category: fatigue; same series right above: a bonus). Real lists
also have effects between *different* values -- a phone case after a phone, two horror films in a
row after a comedy -- which no equality can say and which the reward's list context, a small
network over whole-item tokens, did not find in two tries (docs/results.md). Here every
categorical column c gets a low-rank table of value pairs, as in factorised transition models of
sequential recommendation (FPMC: Rendle et al., 2010):

  T_c[a, b] = <U_c[a], V_c[b]>,   effect of an item with value a (placed above) on a candidate with value b,
  effect(i, j) = sum_c T_c[c(i), c(j)]                                        [B, M, M]

one table set for the item right above and one per earlier item. Two models use them: the list
click model of post-training (``BaselineConfig.value_pairs``: the reward's ``pair_adjacency`` and
``pair_redundancy``, entering the structured recursion as matrices over candidates, so its exact
expected clicks and beam search hold unchanged), and Gen-Reranker's list-context logits
(``ModelConfig.value_pairs``, gref.model.list_bias), so the student can say what such a teacher
teaches even between the items one OMTP pass places. V starts at 0, so a model starts as the one
without them; the rank bounds what a rare value can learn; padding (id 0) has no effect.

Shapes: B requests, M candidates, C categorical columns, r rank.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gref.data.features import PAD_ID


class ValuePairs(nn.Module):
    """effect(i, j) = sum_c <U_c[c(i)], V_c[c(j)]> for every pair of candidates of each request."""

    def __init__(self, cat_sizes: list[int], rank: int, init_std: float = 0.1):
        super().__init__()
        self.above = nn.ModuleList(nn.Embedding(size, rank, padding_idx=PAD_ID) for size in cat_sizes)
        self.below = nn.ModuleList(nn.Embedding(size, rank, padding_idx=PAD_ID) for size in cat_sizes)
        for emb in self.above:
            nn.init.normal_(emb.weight, std=init_std)
        for emb in self.below:  # no effect at start
            nn.init.zeros_(emb.weight)
        with torch.no_grad():
            for emb in self.above:
                emb.weight[PAD_ID].zero_()

    def forward(self, cat: Tensor) -> Tensor:
        """cat [B, M, C] encoded categorical ids -> [B, M, M]: entry (i, j) = effect of i above j."""
        dtype = self.above[0].weight.dtype if len(self.above) else torch.get_default_dtype()  # no column: no effect
        out = cat.new_zeros(cat.shape[0], cat.shape[1], cat.shape[1], dtype=dtype)
        for c, (above, below) in enumerate(zip(self.above, self.below)):
            out = out + above(cat[..., c]) @ below(cat[..., c]).transpose(-1, -2)
        return out
