"""A neural list context for the list click model: click effects nobody wrote down.

The structured model (gref.clickmodel.structured) knows one kind of list effect: equality of an
attribute. Real users also react to how an item's numbers compare with the items above it, to
pairs of *different* categories that go together or clash, to whether the page has covered what
they came for, and they stop after a satisfying click. Rather than a formula per effect, a small
network reads the list above each slot and corrects the structured model's click probability:

  P(click at p | list) = sigmoid( logit(e_p q_p) + r(y_p, p, y_<p) )

with e_p q_p the structured model's marginal click probability and r a residual (0 at start, so
training begins at the structured fit). Only marginals are modelled: E[clicks] = sum_p P(click at
p), so a model of marginals is all a list's value needs -- click-dependent examination included,
since the residual sees the items above (and what they make the user do) without conditioning on
clicks it could not know at serving time.

r reads, for the item j placed at position p:
  * j's own token: its features (numeric + categorical embeddings) and the structured logit;
  * the position p;
  * the running mean of the tokens above (whole-page effects: coverage, fatigue, satisfaction);
  * attention over the ``window`` items right above, each with its distance (local effects:
    contrast with the neighbours, complements and clashes of the item right above);
  * optionally (``pairs``) a sum of pairwise terms with each of those items,
      sum_i g_dist_i <P_q t_j + b_q, P_k (t_i + dist_i) + b_k> / sqrt(d),
    a factorisation machine over the list: the softmax above averages its neighbours and so cannot
    add up one effect per pair (a complement *and* a clash above), nor count (how many of the
    items above were of a kind the user came for); the sum can. g (one gate per distance, from 1)
    lets an effect of the item right above alone leave the rest of the window out. P_q, b_q start at 0.
  * optionally (``prefix``) the items above as they stand in the list: each placed item's token
    becomes t_i + O(sum_k sigmoid(<Q t_i, K (t_k + dist_k)> / sqrt(d)) V t_k) over the ``window``
    items above *it* -- one causal attention layer with gates instead of a softmax, so an item can
    tell that its kind was already shown (once, twice); the running mean and the window above then
    read these tokens. A page that has covered what the user came for is a property of the items
    above *together*, which no sum of single items or of (candidate, item) pairs can see. O starts
    at 0.
A bounded window keeps a step O(window) however long the list (news logs: 200 items).

``members`` such networks form a bootstrap ensemble: each member's loss weighs every request by
its own Poisson(1) draw (fixed by the request id), so the members disagree where the logs say
little -- on lists unlike the logged ones. The list value a search maximises is then pessimistic:
mean - ``pessimism`` * std over members (a lower confidence bound), so a list the data cannot
vouch for is not chosen for its optimism.

Shapes: B requests, M candidates, L list positions, K members, d width.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

EPS = 1e-6


class ContextNet(nn.Module):
    """One member: r(j, p, y_<p) for every candidate j at every position p of given prefixes."""

    def __init__(self, num_features: int, cat_sizes: list[int], d: int = 32, window: int = 8,
                 max_length: int = 32, cat_dim: int = 8, pairs: bool = False, prefix: bool = False):
        super().__init__()
        self.window = window
        self.cat_emb = nn.ModuleList(nn.Embedding(size, cat_dim, padding_idx=0) for size in cat_sizes)
        self.token = nn.Sequential(nn.Linear(num_features + cat_dim * len(cat_sizes) + 1, d), nn.GELU(),
                                   nn.Linear(d, d))
        self.pos = nn.Embedding(max_length, d)
        self.dist = nn.Embedding(window + 1, d)  # 1..window items above (0 unused)
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.out = nn.Sequential(nn.Linear(4 * d, 2 * d), nn.GELU(), nn.Linear(2 * d, 1))
        nn.init.zeros_(self.out[-1].weight)  # r = 0 at start: the structured model as it was fitted
        nn.init.zeros_(self.out[-1].bias)
        self.pair_q = nn.Linear(d, d) if pairs else None
        self.pair_k = nn.Linear(d, d) if pairs else None
        self.pair_dist = nn.Embedding(window + 1, d) if pairs else None
        self.pair_gate = nn.Parameter(torch.ones(window)) if pairs else None
        if pairs:  # the pairwise sum is 0 at start too
            nn.init.zeros_(self.pair_q.weight)
            nn.init.zeros_(self.pair_q.bias)
        self.prefix = nn.ModuleDict({n: nn.Linear(d, d) for n in ("q", "k", "v", "out")}) if prefix else None
        self.prefix_dist = nn.Embedding(window + 1, d) if prefix else None
        if prefix:  # tokens start as they are
            nn.init.zeros_(self.prefix["out"].weight)
            nn.init.zeros_(self.prefix["out"].bias)

    def tokens(self, num: Tensor, cat: Tensor, struct_logit: Tensor) -> Tensor:
        """Each candidate's token [B, M, d] from its features and its structured logit [B, M]."""
        parts = [num] + [emb(cat[..., c]) for c, emb in enumerate(self.cat_emb)] + [struct_logit[..., None]]
        return self.token(torch.cat(parts, dim=-1))

    def in_context(self, tok: Tensor, above: Tensor, above_mask: Tensor) -> Tensor:
        """The token of an item placed below others: tok [..., d], above [..., w, d] the plain tokens of
        the w items right above it (nearest first), above_mask [..., w] -> [..., d] (tok itself
        without ``prefix``)."""
        if self.prefix is None:
            return tok
        w = above.shape[-2]
        keys = self.prefix["k"](above + self.prefix_dist.weight[1: w + 1])
        gate = torch.sigmoid((keys @ self.prefix["q"](tok)[..., None]).squeeze(-1) / tok.shape[-1] ** 0.5) * above_mask
        return tok + self.prefix["out"]((gate[..., None] * self.prefix["v"](above)).sum(-2))

    def residual(self, cand: Tensor, p: Tensor, mean_above: Tensor, above: Tensor, above_mask: Tensor) -> Tensor:
        """cand [..., d] tokens of the items placed; p [...] their positions (long); mean_above
        [..., d]; above [..., w, d] the w items right above (nearest first) and above_mask [..., w].
        -> r [...]."""
        w = above.shape[-2]
        keys = self.key(above + self.dist.weight[1: w + 1])
        q = self.query(cand + self.pos(p))
        att = (keys @ q[..., None]).squeeze(-1) / keys.shape[-1] ** 0.5  # [..., w]
        att = att.masked_fill(~above_mask, -1e9)
        weights = torch.softmax(att, -1) * above_mask.any(-1, keepdim=True)  # nothing above: zeros
        local = (weights[..., None] * above).sum(-2)
        r = self.out(torch.cat([cand, self.pos(p), mean_above, local], -1)).squeeze(-1)
        if self.pair_q is not None:
            pair_keys = self.pair_k(above + self.pair_dist.weight[1: w + 1])  # [..., w, d]
            pair = (pair_keys @ self.pair_q(cand)[..., None]).squeeze(-1) / keys.shape[-1] ** 0.5
            r = r + (pair * self.pair_gate[:w] * above_mask).sum(-1)
        return r

    def along(self, tok: Tensor, lists: Tensor) -> Tensor:
        """r at every slot of lists [B, L] (-1 = none; 0 there), parallel over slots. -> [B, L]"""
        B, L = lists.shape
        valid = lists >= 0
        placed = torch.gather(tok, 1, lists.clamp_min(0)[..., None].expand(-1, -1, tok.shape[-1]))
        placed = placed * valid[..., None]
        w = min(self.window, max(L - 1, 1))
        idx = torch.arange(L, device=lists.device)[:, None] - torch.arange(1, w + 1, device=lists.device)[None]  # [L, w]
        ok = idx >= 0
        above_mask = ok[None] & valid[:, idx.clamp_min(0)]  # [B, L, w]
        ctx = self.in_context(placed, placed[:, idx.clamp_min(0)], above_mask) * valid[..., None]  # [B, L, d]
        csum = torch.cumsum(ctx, 1)
        count = torch.cumsum(valid.float(), 1)
        prev_sum = torch.cat([torch.zeros_like(csum[:, :1]), csum[:, :-1]], 1)
        prev_count = torch.cat([torch.zeros_like(count[:, :1]), count[:, :-1]], 1)
        mean_above = prev_sum / prev_count.clamp_min(1)[..., None]
        above = ctx[:, idx.clamp_min(0)]  # [B, L, w, d]
        pos = torch.arange(L, device=lists.device).clamp_max(self.pos.num_embeddings - 1).expand(B, L)
        return self.residual(placed, pos, mean_above, above, above_mask) * valid


class ListContext(nn.Module):
    """``members`` ContextNets (a bootstrap ensemble) on top of a structured list click model."""

    def __init__(self, num_features: int, cat_sizes: list[int], members: int = 4, pessimism: float = 1.0,
                 max_length: int = 32, d: int = 32, window: int = 8, pairs: bool = False, prefix: bool = False):
        super().__init__()
        self.pessimism = pessimism
        self.nets = nn.ModuleList(ContextNet(num_features, cat_sizes, d, window, max_length, pairs=pairs, prefix=prefix)
                                  for _ in range(members))

    @property
    def members(self) -> int:
        return len(self.nets)

    def marginals(self, num: Tensor, cat: Tensor, struct_logit: Tensor, struct_p: Tensor, lists: Tensor) -> Tensor:
        """Each member's P(click at p) of lists [B, L] given the structured marginals struct_p [B, L]
        and item logits struct_logit [B, M]. -> [K, B, L] (0 where no item)"""
        base = torch.logit(struct_p.clamp(EPS, 1 - EPS))
        out = []
        for net in self.nets:
            r = net.along(net.tokens(num, cat, struct_logit), lists)
            out.append(torch.sigmoid(base + r))
        return torch.stack(out) * (lists >= 0)

    def pessimistic(self, values: Tensor) -> Tensor:
        """Members' values [K, ...] -> mean - pessimism * std [...] (std 0 for one member)."""
        if values.shape[0] == 1:
            return values[0]
        return values.mean(0) - self.pessimism * values.std(0)


def bootstrap_weights(request_ids: list | None, members: int, batch: int, device) -> Tensor:
    """Poisson(1) weight of each request for each member [K, B], a fixed function of the request id
    (the same draw every epoch and on every worker); all ones without ids."""
    if request_ids is None:
        return torch.ones(members, batch, device=device)
    h = np.array([zlib.crc32(str(r).encode()) for r in request_ids], dtype=np.uint64)
    k = np.arange(members, dtype=np.uint64)[:, None]
    mixed = (h[None] * np.uint64(2654435761) + (k + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)) % np.uint64(2**32)
    u = mixed.astype(np.float64) / 2**32
    pmf = np.exp(-1.0) / np.cumprod(np.r_[1.0, np.arange(1, 12)])  # P(X = 0..11), X ~ Poisson(1)
    draws = np.searchsorted(np.cumsum(pmf), u, side="right").clip(max=11)
    return torch.as_tensor(draws, dtype=torch.float32, device=device)


def weighted_bce(p: Tensor, clicks: Tensor, valid: Tensor, weights: Tensor) -> Tensor:
    """Mean over members of the request-weighted Bernoulli NLL. p [K, B, L], clicks / valid [B, L],
    weights [K, B] -> scalar."""
    nll = F.binary_cross_entropy(p.clamp(EPS, 1 - EPS), clicks.expand_as(p), reduction="none") * valid
    w = weights[..., None] * valid
    return (nll * weights[..., None]).sum((1, 2)).div(w.sum((1, 2)).clamp_min(1)).mean()


@torch.no_grad()
def context_beam_search(fx, context: ListContext, tokens: list[Tensor], n: int, width: int) -> Tensor:
    """Beam search of the list with the highest pessimistic value (``ListContext.pessimistic`` of
    the members' expected clicks) under a structured model ``fx`` (ListEffects) corrected by
    ``context``; ``tokens`` [K x [B, M, d]] each member's candidate tokens. A step costs the same
    at position 200 as at 2: each beam keeps running sums of its tokens and its last ``window``
    items with their tokens in context (an item's is fixed once placed: it reads the items above). -> lists [B, n] (-1 past m)."""
    from gref.clickmodel.structured import ListState

    B, M = fx.logit.shape
    K, dev, d = context.members, fx.logit.device, tokens[0].shape[-1]
    w = context.nets[0].window
    state = ListState(fx, width)
    cum = fx.logit.new_zeros(K, B, width)  # each member's expected clicks of each beam so far
    sums = fx.logit.new_zeros(K, B, width, d)  # each member's sum of the beam's tokens (in context)
    recent = torch.full((B, width, w), -1, dtype=torch.long, device=dev)  # last w items, nearest first
    recent_tok = fx.logit.new_zeros(K, B, width, w, d)  # each member's tokens (in context) of those items
    alive = torch.zeros(B, width, dtype=torch.bool, device=dev)
    alive[:, 0] = True  # all beams start identical: keep one
    blocked = (~fx.cand_mask)[:, None, :].expand(B, width, M).clone()
    lists = torch.full((B, width, 0), -1, dtype=torch.long, device=dev)
    m = fx.cand_mask.sum(1)
    rows = torch.arange(B, device=dev)[:, None, None]
    beam_of = lambda x, src: torch.gather(x, 1, src.view(*src.shape, *[1] * (x.dim() - 2)).expand(-1, -1, *x.shape[2:]))  # noqa: E731
    for p in range(n):
        q = state.q()  # [B, W, M]
        base = torch.logit((state.examination()[..., None] * q).clamp(EPS, 1 - EPS))
        count = min(p, w)
        above_mask = (recent[..., :max(count, 1)] >= 0)[:, :, None].expand(B, width, M, max(count, 1))
        pos = torch.full((B, width, M), min(p, context.nets[0].pos.num_embeddings - 1), dtype=torch.long, device=dev)
        gains = []
        for k, (net, tok) in enumerate(zip(context.nets, tokens)):
            above = recent_tok[k, :, :, :max(count, 1)]
            mean_above = (sums[k] / max(p, 1))[:, :, None].expand(B, width, M, d)
            r = net.residual(tok[:, None].expand(B, width, M, d), pos, mean_above,
                             above[:, :, None].expand(B, width, M, *above.shape[-2:]), above_mask)
            gains.append(torch.sigmoid(base + r))
        gain = torch.stack(gains)  # [K, B, W, M]
        done = (m <= p)[:, None]  # [B, 1]: no candidate left -- extend every beam by "nothing"
        total = cum[..., None] + torch.where(done[None, ..., None], 0.0, gain)  # [K, B, W, M]
        score = context.pessimistic(total)
        score = score.masked_fill(blocked & ~done[..., None], float("-inf")).masked_fill(~alive[..., None], float("-inf"))
        # an exhausted request keeps each beam once (its "nothing" entry: column 0)
        score = torch.where(done[..., None] & (torch.arange(M, device=dev) > 0), float("-inf"), score)
        top, idx = score.reshape(B, width * M).topk(width, dim=1)
        src, item = idx // M, idx % M
        item = torch.where(done, -1, item)
        alive = torch.isfinite(top)
        cum = torch.gather(total.reshape(K, B, width * M), 2, idx[None].expand(K, -1, -1))
        before = beam_of(recent, src)  # [B, W, w]: the items above the one just placed
        placed = torch.stack([  # [K, B, W, d]
            net.in_context(tok[rows[..., 0], item.clamp_min(0)], tok[rows, before.clamp_min(0)], before >= 0)
            for net, tok in zip(context.nets, tokens)]) * (item >= 0)[None, ..., None]
        sums = torch.stack([beam_of(sums[k], src) for k in range(K)]) + placed
        recent_tok = torch.stack([torch.cat([placed[k][:, :, None], beam_of(recent_tok[k], src)[:, :, :-1]], 2)
                                  for k in range(K)])
        recent = torch.cat([item[..., None], before[..., :-1]], 2)
        q_item = torch.gather(beam_of(q, src), 2, item.clamp_min(0)[..., None]).squeeze(-1)
        state.place(src, item, q_item)
        blocked = beam_of(blocked, src).clone()
        blocked.scatter_(2, item.clamp_min(0)[..., None], True)
        lists = torch.cat([beam_of(lists, src), item[..., None]], 2)
    final = context.pessimistic(cum).masked_fill(~alive, float("-inf"))
    return lists[torch.arange(B, device=dev), final.argmax(1)]
