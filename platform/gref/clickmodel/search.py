"""List search under a list click model (gref.clickmodel.structured): the best list a known (or
estimated) user model implies. Beam search over candidates, the list value being its exact
expected clicks; width 1 is the greedy list; ``pointwise_order`` ignores every list effect.

Shapes: B requests, M candidates, W beams, n positions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gref.clickmodel.structured import ListEffects, ListState


@torch.no_grad()
def beam_search(fx: ListEffects, n: int, width: int = 8) -> tuple[Tensor, Tensor]:
    """The highest expected-clicks list of n items per request (beam of ``width``).
    Returns (lists [B, n] candidate indices, -1 past a request's m; value [B])."""
    B, M = fx.logit.shape
    state = ListState(fx, width)
    score = fx.logit.new_full((B, width), float("-inf"))
    score[:, 0] = 0.0  # all beams start identical: keep one alive
    blocked = (~fx.cand_mask)[:, None, :].expand(B, width, M).clone()
    lists = torch.full((B, width, 0), -1, dtype=torch.long, device=fx.logit.device)
    m = fx.cand_mask.sum(1)
    for p in range(n):
        q = state.q()  # [B, W, M]
        gain = (state.examination()[..., None] * q).masked_fill(blocked, float("-inf"))
        done = (m <= p)[:, None, None]  # no candidate left: extend every beam by "nothing"
        total = torch.where(done, score[..., None], score[..., None] + gain)
        flat = total.reshape(B, width * M)
        top, idx = flat.topk(width, dim=1)
        src, item = idx // M, idx % M
        item = torch.where(done[:, :, 0], -1, item)
        # an exhausted request's top entries are copies of its best beam: keep one
        top = torch.where(done[:, :, 0] & (torch.arange(width, device=top.device) > 0), float("-inf"), top)
        q_item = torch.gather(torch.gather(q, 1, src[..., None].expand(-1, -1, M)), 2,
                              item.clamp_min(0)[..., None]).squeeze(-1)
        state.place(src, item, q_item)
        blocked = torch.gather(blocked, 1, src[..., None].expand(-1, -1, M)).clone()
        blocked.scatter_(2, item.clamp_min(0)[..., None], True)
        lists = torch.cat([torch.gather(lists, 1, src[..., None].expand(-1, -1, lists.shape[2])),
                           item[..., None]], dim=2)
        score = top
    best = score.argmax(1)
    rows = torch.arange(B, device=best.device)
    return lists[rows, best], score[rows, best]


def pointwise_order(fx: ListEffects, n: int) -> Tensor:
    """The n candidates with the highest a(i), in that order (no list effects). [B, n]"""
    n_eff = min(n, fx.logit.shape[1])
    order = fx.logit.masked_fill(~fx.cand_mask, float("-inf")).topk(n_eff, dim=1).indices
    out = torch.full((fx.logit.shape[0], n), -1, dtype=torch.long, device=fx.logit.device)
    out[:, :n_eff] = order
    return out.masked_fill(torch.arange(n, device=out.device)[None] >= fx.cand_mask.sum(1, keepdim=True), -1)
