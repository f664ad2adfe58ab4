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

Optionally (``coverage``) examination depends on the page shown so far, as in intent-aware user
models (a user with several intents reads on while the page serves them; ERR-IA, alpha-nDCG):
  e_p = e_{p-1} * s(theta_p + sum_c w_c * cov_c(y_1..y_{p-1})),
  cov_c = sum over the distinct values v of column c shown so far of max s(a(y_q)) over the items
          y_q shown with value v      (the page's appeal-weighted coverage of c's values).
With ``intent_scale`` (tau_c) a value counts once, at its intent weight instead: the user came for
the values of her most appealing candidates,
  pi_c(v) = exp(tau_c m_v) / sum_u exp(tau_c m_u)   over the values u among the request's candidates,
  m_v = the best a(j) among the candidates with value v, and cov_c = sum of pi_c(v) over the values shown
(intent-aware coverage: in [0, 1], saturating once her intents are on the page).
A function of the list alone, so E[clicks] stays exact; w = 0 is the position-only examination.
cov_c enters centred on its mean over the logged lists after as many items (``coverage_center``), so
that theta_p carries the position's examination and w only what the page adds to it: uncentred, the
two move together (coverage grows with every item) and a fit of a few hundred steps does not part them.

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
    # examination that depends on the page (both or neither): theta_p [L_max] (theta_1 unused) and w_c [C]
    continuation: Tensor | None = None  # [L_max] logit of moving on from p-1 to p
    coverage: Tensor | None = None  # [C] logit on moving on per unit of the page's coverage of column c
    coverage_center: Tensor | None = None  # [L_max, C] coverage subtracted after p items (the logs' mean; 0 if None)
    intent_scale: Tensor | None = None  # [C] tau_c: coverage by intent weights (None: appeal-weighted values)

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
    the redundancy logit each candidate would get, the last placed item and its q, the position;
    with page-dependent examination, each list's coverage and P(examine the next position)."""

    def __init__(self, fx: ListEffects, width: int):
        B, M = fx.logit.shape
        self.fx = fx
        self.red, self.adj, self.cadj = fx.pairwise()
        self.width = width
        self.red_logit = fx.logit.new_zeros(B, width, M)
        self.prev = torch.full((B, width), -1, dtype=torch.long, device=fx.logit.device)
        self.q_prev = fx.logit.new_zeros(B, width)
        self.rows = torch.arange(B, device=fx.logit.device)[:, None]
        self.p = 0  # the position the next item goes to (0-based)
        if fx.coverage is not None:
            C = fx.same.shape[1]
            self.appeal = torch.sigmoid(fx.logit).masked_fill(~fx.cand_mask, 0.0)  # [B, M] s(a(i))
            # max appeal shown among items sharing c with j; by intents: 1 once j's value was shown
            self.best = fx.logit.new_zeros(B, width, C, M)
            self.cover = fx.logit.new_zeros(B, width, C)  # cov_c of each list so far
            self.exam = fx.logit.new_ones(B, width)  # e of the next position
            if fx.intent_scale is not None:
                self.same_value, self.intent = intent_weights(fx)

    def examination(self) -> Tensor:
        """P(examine the next position) of each partial list, [B, W]."""
        if self.fx.coverage is None:
            e = self.fx.examination
            return e[min(self.p, len(e) - 1)].expand(self.red_logit.shape[:2])
        return self.exam

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
        if self.fx.coverage is not None:
            self._cover(src, placed, it)
        self.p += 1

    def _cover(self, src: Tensor, placed: Tensor, it: Tensor) -> None:
        """Coverage and the next position's examination after placing ``it`` [B, W] on beams ``src``."""
        beam = lambda x: torch.gather(x, 1, src.view(*src.shape, *[1] * (x.dim() - 2)).expand_as(x))  # noqa: E731
        best, exam = beam(self.best), beam(self.exam)
        seen = torch.gather(best, 3, it[:, :, None, None].expand(-1, -1, best.shape[2], 1)).squeeze(-1)  # [B, W, C]
        if self.fx.intent_scale is None:
            a = torch.where(placed, self.appeal[self.rows, it], 0.0)  # [B, W]
            self.cover = beam(self.cover) + (a[..., None] - seen).clamp_min(0.0)  # a new value, or a better item of one
            self.best = torch.maximum(best, a[..., None, None] * self.fx.same[self.rows, :, it].to(a.dtype))  # [B, W, C, M]
        else:  # a value not shown yet adds its intent weight
            new = self.intent[self.rows, :, it] * (1.0 - seen) * placed[..., None]  # [B, W, C]
            self.cover = beam(self.cover) + new
            self.best = torch.maximum(best, self.same_value[self.rows, :, it] * placed[..., None, None])
        step = min(self.p + 1, len(self.fx.continuation) - 1)
        centred = self.cover if self.fx.coverage_center is None else self.cover - self.fx.coverage_center[step]
        self.exam = exam * torch.sigmoid(self.fx.continuation[step] + centred @ self.fx.coverage)


def intent_weights(fx: ListEffects) -> tuple[Tensor, Tensor]:
    """(same value [B, C, M, M] float: equality with every candidate its own value's holder -- an
    out-of-vocabulary value is its own --, pi [B, C, M]: each candidate's value's intent weight)."""
    B, C, M, _ = fx.same.shape
    own = torch.eye(M, dtype=torch.bool, device=fx.same.device) & fx.cand_mask[:, None, :, None]  # [B, 1, M, M]
    same = fx.same | own  # [B, C, M, M]
    a = fx.logit.masked_fill(~fx.cand_mask, float("-inf"))
    best = a[:, None, :, None].expand(B, C, M, M).masked_fill(~same, float("-inf")).amax(2)  # [B, C, M] m of j's value
    best = best.masked_fill(~fx.cand_mask[:, None], 0.0)  # padding: no -inf for tau's gradient to meet
    holders = same.sum(2).clamp_min(1)  # [B, C, M] candidates with j's value
    z = (fx.intent_scale[None, :, None] * best).masked_fill(~fx.cand_mask[:, None], float("-inf"))
    e = torch.exp(z - z.amax(-1, keepdim=True).clamp_min(-1e30))  # 0 for padding
    return same.to(fx.logit.dtype), e / (e / holders).sum(-1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def coverage_path(fx: ListEffects, lists: Tensor) -> Tensor:
    """cov_c after each position of lists [B, L] (-1 = none: unchanged), uncentred: [B, L, C]."""
    B, L = lists.shape
    state = ListState(fx, 1)
    keep = torch.zeros(B, 1, dtype=torch.long, device=lists.device)
    path = []
    for p in range(L):
        state.place(keep, lists[:, p: p + 1], fx.logit.new_zeros(B, 1))
        path.append(state.cover[:, 0])
    return torch.stack(path, 1)


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
        click_at[:, p] = state.examination()[:, 0] * q[:, 0]
        state.place(keep, item, q)
    return click_at.sum(1), click_at
