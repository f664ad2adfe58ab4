"""A click model of whole lists with attribute-based list effects, and its exact expected clicks.

Used three ways: as the simulated world's oracle in a searchable form (gref.sim.reference), as
the "features-only" reference fitted on logs, and as the platform's learned list-wise reward
(gref.baselines.clickmodel). One family, so one search (gref.clickmodel.search) serves all three.

For a list y_1..y_L of candidates of one request, with categorical attribute columns c = 1..C
(e.g. category, series, creator; ids equal = same value):
  base_p = a(y_p) + sum_c red_c * #{q < p : same_c(y_q, y_p)}      (redundancy: fatigue if < 0)
                  + sum_c adj_c * same_c(y_{p-1}, y_p)              (adjacency)
  b_p    = sum_c cadj_c * same_c(y_{p-1}, y_p)                      (adjacency after a click)
optionally plus learned effects between attribute *values* (``pair_redundancy`` / ``pair_adjacency``:
any [M, M] effect of a placed item on a candidate, e.g. gref.model.value_pairs' tables)
  q_p    = P(click p | examined p) = s(base_p) + q_{p-1} * (s(base_p + b_p) - s(base_p))
  E[clicks] = sum_p e_p q_p,   e_p = P(examine position p), independent of clicks.
The q recursion is exact when the click-conditioned bonus b_p applies only if y_{p-1} was
clicked (the simulator's series effect): P(y_{p-1} clicked | examined) = q_{p-1}.

Shapes: B requests, M candidates (padded), C attribute columns, L list positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class ListEffects:
    """The parameters of one batch of requests under the list click model."""

    logit: Tensor  # [B, M] a(i): the item's click logit before list effects
    same: Tensor  # [B, C, M, M] bool: candidates i and j share attribute c (diagonal included)
    redundancy: Tensor  # [C] logit per earlier item sharing attribute c
    adjacency: Tensor  # [C] logit when the item right above shares attribute c
    click_adjacency: Tensor  # [C] logit when the item right above shares c and was clicked
    examination: Tensor  # [L_max] P(examine position p)
    cand_mask: Tensor  # [B, M] True = real candidate
    pair_redundancy: Tensor | None = None  # [B, M, M] logit on j per earlier item i, beyond attribute equality
    pair_adjacency: Tensor | None = None  # [B, M, M] logit on j when i is right above it, beyond equality

    def pairwise(self) -> tuple[Tensor, Tensor, Tensor]:
        """[B, M, M] matrices: entry (i, j) = effect of placed item i on candidate j."""
        s = self.same.to(self.logit.dtype)
        red = torch.einsum("bcij,c->bij", s, self.redundancy)
        adj = torch.einsum("bcij,c->bij", s, self.adjacency)
        cadj = torch.einsum("bcij,c->bij", s, self.click_adjacency)
        if self.pair_redundancy is not None:
            red = red + self.pair_redundancy
        if self.pair_adjacency is not None:
            adj = adj + self.pair_adjacency
        return red, adj, cadj

    def to(self, device) -> ListEffects:
        return ListEffects(**{k: (None if v is None else v.to(device)) for k, v in self.__dict__.items()})


class ListState:
    """Incremental state of W partial lists per request (for expected clicks and beam search):
    the redundancy logit each candidate would get, the last placed item and its q."""

    def __init__(self, fx: ListEffects, width: int):
        B, M = fx.logit.shape
        self.fx = fx
        self.red, self.adj, self.cadj = fx.pairwise()
        self.width = width
        self.red_logit = fx.logit.new_zeros(B, width, M)
        self.prev = torch.full((B, width), -1, dtype=torch.long, device=fx.logit.device)
        self.q_prev = fx.logit.new_zeros(B, width)
        self.rows = torch.arange(B, device=fx.logit.device)[:, None]

    def q(self) -> Tensor:
        """q_p of every candidate if placed next, [B, W, M]."""
        base = self.fx.logit[:, None, :] + self.red_logit
        has_prev = (self.prev >= 0)[..., None]
        prev = self.prev.clamp_min(0)
        base = base + torch.where(has_prev, self.adj[self.rows, prev], 0.0)
        bonus = torch.where(has_prev, self.cadj[self.rows, prev], 0.0)
        s = torch.sigmoid(base)
        return s + self.q_prev[..., None] * (torch.sigmoid(base + bonus) - s)

    def place(self, src: Tensor, item: Tensor, q_item: Tensor) -> None:
        """Beams ``src`` [B, W] (indices into the current beams) extended by ``item`` [B, W]
        (-1 = nothing placed) whose q was ``q_item`` [B, W]."""
        self.red_logit = torch.gather(self.red_logit, 1, src[..., None].expand_as(self.red_logit))
        placed = item >= 0
        it = item.clamp_min(0)
        self.red_logit = self.red_logit + torch.where(placed[..., None], self.red[self.rows, it], 0.0)
        self.prev = torch.where(placed, item, -1)
        self.q_prev = torch.where(placed, q_item, 0.0)


def expected_clicks(fx: ListEffects, lists: Tensor) -> tuple[Tensor, Tensor]:
    """Exact E[clicks] of given lists. lists [B, L] candidate indices (-1 = none; a -1 ends the
    list for the adjacency terms). Returns (total [B], click_at [B, L] = e_p q_p)."""
    B, L = lists.shape
    state = ListState(fx, 1)
    click_at = fx.logit.new_zeros(B, L)
    keep = torch.zeros(B, 1, dtype=torch.long, device=lists.device)
    for p in range(L):
        item = lists[:, p: p + 1]  # [B, 1]
        q = torch.gather(state.q(), 2, item.clamp_min(0)[..., None]).squeeze(-1)  # [B, 1]
        q = torch.where(item >= 0, q, 0.0)
        click_at[:, p] = fx.examination[p] * q[:, 0]
        state.place(keep, item, q)
    return click_at.sum(1), click_at
