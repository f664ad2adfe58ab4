"""List-context terms of Gen-Reranker's logits (``ModelConfig.list_bias``): the module and its
state while a list is decoded. Shapes: B requests, M candidates, N positions, C categorical columns."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gref.data.batch import same_attribute
from gref.model.value_pairs import ValuePairs


class ListBias(nn.Module):
    """List-context terms added to the logits of Eq. 5 (our addition, ``ModelConfig.list_bias``):
    the logit of candidate j as the item at list position q gets, per categorical column c,
        w_red[c] * #{r < q : same_c(y_r, j)}  +  w_adj[c] * same_c(y_{q-1}, j).
    The decoder could learn such effects through h_t . z_j, but with OMTP a head places its item
    without re-running the decoder on the items the earlier heads of its pass placed; these terms
    read that prefix directly (the ordered mask does the same for duplicates), so a list-level
    effect -- fatigue with repeated categories, affinity for series continuations -- is one weight.
    With ``value_pairs`` = rank r > 0 each term also gets a low-rank table of effects between
    *different* values of a column (gref.model.value_pairs): a complement or a clash.
    Zero-initialised: a fresh model is Eq. 5 exactly."""

    def __init__(self, cat_sizes: list[int], value_pairs: int = 0):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(2, len(cat_sizes)))  # [redundancy, adjacency] x column
        self.pair_redundancy = ValuePairs(cat_sizes, value_pairs) if value_pairs else None
        self.pair_adjacency = ValuePairs(cat_sizes, value_pairs) if value_pairs else None

    def pairwise(self, cat: Tensor) -> tuple[Tensor, Tensor]:
        """cat [B, M, C] -> (redundancy, adjacency) [B, M, M]: entry (i, j) = the term candidate i,
        once placed, adds to candidate j."""
        same = same_attribute(cat).to(self.weight.dtype)  # [B, C, M, M]
        red, adj = torch.einsum("bcij,c->bij", same, self.weight[0]), torch.einsum("bcij,c->bij", same, self.weight[1])
        if self.pair_redundancy is not None:
            red, adj = red + self.pair_redundancy(cat), adj + self.pair_adjacency(cat)
        return red, adj

    def teacher_forced(self, cat: Tensor, seq: Tensor) -> Tensor:
        """cat [B, M, C], seq [B, N] -> bias [B, N, M]: row q is every candidate's term as the item
        at position q after y_0..y_{q-1}."""
        red, adj = self.pairwise(cat)
        idx = seq[..., None].expand(-1, -1, red.shape[-1])  # [B, N, M]
        red_rows, adj_rows = torch.gather(red, 1, idx), torch.gather(adj, 1, idx)  # row r: y_r's terms
        before = torch.cumsum(red_rows, dim=1) - red_rows  # sum over r < q
        prev = torch.cat([torch.zeros_like(adj_rows[:, :1]), adj_rows[:, :-1]], dim=1)  # y_{q-1}
        return before + prev


class ListBiasState:
    """The list-context terms of ``ListBias`` for partial lists being decoded (one per row)."""

    def __init__(self, bias: ListBias, cat: Tensor):
        self.red, self.adj = bias.pairwise(cat)
        self.acc = torch.zeros(self.red.shape[:2], dtype=self.red.dtype, device=cat.device)  # [B, M]
        self.last = None  # [B, M] adjacency row of the last placed item

    def current(self) -> Tensor:
        return self.acc if self.last is None else self.acc + self.last

    def place(self, item: Tensor) -> None:
        """item [B] candidate index placed next."""
        idx = item[:, None, None].expand(-1, 1, self.red.shape[-1])
        self.acc = self.acc + torch.gather(self.red, 1, idx)[:, 0]
        self.last = torch.gather(self.adj, 1, idx)[:, 0]

    def select(self, rows: Tensor) -> None:
        """Keep the states of ``rows`` (beam search reorders its beams)."""
        self.red, self.adj, self.acc = self.red[rows], self.adj[rows], self.acc[rows]
        self.last = None if self.last is None else self.last[rows]
