"""Inference for Gen-Reranker (paper §4.5).

OMTP decoding: each decoder pass yields one hidden state; its k heads, in head order, place k
items, each head's argmax excluding every item placed so far (the binary mask, which also
resolves duplicates between heads). n items take ceil(n / k) passes. Z and the cross-attention
K/V of every decoder layer are computed once; the self-attention K/V of placed items are
cached, so pass p only runs the k tokens placed by pass p-1 through the decoder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from gref.model.list_bias import ListBiasState

if TYPE_CHECKING:  # annotations only: the reranker imports this module
    from gref.model.reranker import GenReranker


@torch.no_grad()
def decode(model: GenReranker, num: Tensor, cat: Tensor, cand_mask: Tensor, n: int,
           heads: int | None = None, use_cache: bool = True, temperature: float = 0.0,
           generator: torch.Generator | None = None, return_log_prob: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """OMTP decoding, greedy or sampled. num [B, M, F], cat [B, M, C], cand_mask [B, M] -> [B, n]
    candidate indices in display order; -1 where a request has fewer than n candidates.

    heads: OMTP heads used per pass (default all k of the model; 1 = next-item decoding).
    use_cache=False recomputes the decoder over the whole prefix (and the cross K/V) every pass:
    the paper's step-by-step baseline when heads=1.
    temperature > 0 samples each placement from softmax(logits / temperature) over the items not
    yet placed (Gumbel-max), i.e. from the policy whose log-probability ``sequence_log_prob``
    gives at temperature 1 -- the lists on-policy post-training learns from.
    return_log_prob: also return log P(list) [B] under the policy that drew it (softmax(logits /
    temperature) per placement; 0 for greedy decoding, which is deterministic) -- the propensity
    that exploration traffic logs.
    """
    heads = heads or model.k
    if not 1 <= heads <= model.k:
        raise ValueError(f"heads must be in 1..{model.k}, got {heads}")
    if n > model.cfg.max_length:
        raise ValueError(f"n={n} exceeds the model's max_length={model.cfg.max_length}")
    B = cand_mask.shape[0]
    z = model.encode(num, cat, cand_mask)
    memory, memory_bias = model.memory(z, cand_mask) if use_cache else (None, None)
    blocked = ~cand_mask  # a new tensor: placed items are marked in it
    placed = torch.zeros((B, n), dtype=torch.long, device=z.device)
    x = model.bos_input(B, z.device)  # tokens the next pass feeds the decoder
    bias = ListBiasState(model.list_bias, cat) if model.list_bias is not None else None
    cache = None
    log_prob = torch.zeros(B, device=z.device)
    m = cand_mask.sum(1)
    t = 0
    while t < n:
        if use_cache:
            h, cache = model.decode_hidden(x, memory, memory_bias, cache)
        else:
            memory, memory_bias = model.memory(z, cand_mask)
            h, _ = model.decode_hidden(x, memory, memory_bias)
        h_last = h[:, -1:]  # [B, 1, d]
        take = min(heads, n - t)
        logits = model.head_logits(h_last, z, cand_mask, heads=take)[:, :, 0]  # [B, take, M]
        for j in range(take):
            head = logits[:, j] if bias is None else logits[:, j] + bias.current()
            if temperature > 0:  # Gumbel-max: a sample of softmax(head / temperature) over the unblocked
                scaled = (head / temperature).masked_fill(blocked, float("-inf"))
                u = torch.rand(head.shape, device=head.device, generator=generator).clamp_(1e-9, 1 - 1e-9)
                choice = (scaled - torch.log(-torch.log(u))).argmax(dim=-1)
                if return_log_prob:  # (a request already out of candidates adds nothing)
                    step = scaled.log_softmax(-1).gather(1, choice[:, None])[:, 0]
                    log_prob += torch.where(m > t, step, torch.zeros_like(step))
            else:
                choice = head.masked_fill(blocked, float("-inf")).argmax(dim=-1)
            placed[:, t] = choice
            blocked.scatter_(1, choice[:, None], True)  # (not index_put: capturable in a CUDA graph)
            if bias is not None:
                bias.place(choice)
            t += 1
        if t < n:  # the next pass reads this pass's items
            new = model.embed_placed(z, placed[:, t - take: t], t - take)
            x = new if use_cache else torch.cat([x, new], dim=1)
    # a request with fewer than n candidates: positions past its m hold no item
    placed = placed.masked_fill(torch.arange(n, device=z.device)[None] >= m[:, None], -1)
    return (placed, log_prob) if return_log_prob else placed


@torch.no_grad()
def beam_search(model: GenReranker, num: Tensor, cat: Tensor, cand_mask: Tensor, n: int,
                beam: int = 4) -> Tensor:
    """Beam search over next-item decoding (head 0 only; for the single-head model).
    Returns the highest log-probability list per request, [B, n]."""
    B, M = cand_mask.shape
    n = min(n, int(cand_mask.sum(1).min()))
    z = model.encode(num, cat, cand_mask)
    zb, maskb = z.repeat_interleave(beam, 0), cand_mask.repeat_interleave(beam, 0)
    memory, memory_bias = model.memory(zb, maskb)
    blocked = ~maskb
    score = torch.zeros(B, beam, device=z.device)
    score[:, 1:] = float("-inf")  # all beams start identical: keep one alive at step 0
    seqs = torch.zeros(B * beam, 0, dtype=torch.long, device=z.device)
    x, cache = model.bos_input(B * beam, z.device), None
    bias = ListBiasState(model.list_bias, cat.repeat_interleave(beam, 0)) if model.list_bias is not None else None
    for t in range(n):
        h, cache = model.decode_hidden(x, memory, memory_bias, cache)
        logits = model.head_logits(h[:, -1:], zb, maskb, heads=1)[:, 0, 0]
        if bias is not None:
            logits = logits + bias.current()
        logp = torch.log_softmax(logits.masked_fill(blocked, float("-inf")), dim=-1)  # [B*beam, M]
        total = (score.view(-1, 1) + logp).view(B, beam * M)
        score, flat = total.topk(beam, dim=1)
        src = (flat // M + torch.arange(B, device=z.device)[:, None] * beam).view(-1)
        item = (flat % M).view(-1)
        seqs = torch.cat([seqs[src], item[:, None]], dim=1)
        blocked = blocked[src]
        blocked[torch.arange(B * beam), item] = True
        cache = [(k[src], v[src]) for k, v in cache]
        if bias is not None:
            bias.select(src)
            bias.place(item)
        x = model.embed_placed(zb, item[:, None], t)
    best = seqs.view(B, beam, n)[:, 0]
    out = torch.full((B, n if n else 0), -1, dtype=torch.long, device=z.device)
    out[:, : best.shape[1]] = best
    return out


def list_scores(placed: Tensor, item_scores: Tensor, cand_mask: Tensor) -> Tensor:
    """Per-candidate score of a generated list, for AUC-style metrics: (n - r) + s for the item
    at rank r (0-based), s alone for an item not placed, with s = sigmoid(item_scores) in (0, 1).
    Placed items outrank unplaced ones, earlier ranks outrank later ones, and unplaced items are
    ordered by the model's own item score. placed [B, n] (-1 = none), item_scores [B, M] ->
    [B, M] (padding -inf)."""
    s = torch.sigmoid(item_scores)
    n = placed.shape[1]
    valid = placed >= 0
    bonus = (n - torch.arange(n, device=placed.device, dtype=s.dtype))[None].expand_as(placed)
    # scatter_add: the -1 slots all land on index 0 with 0 and must not overwrite its bonus
    rank_bonus = torch.zeros_like(s).scatter_add_(1, placed.clamp_min(0), torch.where(valid, bonus, 0.0))
    return (s + rank_bonus).masked_fill(~cand_mask, float("-inf"))


@torch.no_grad()
def score_items(model: GenReranker, num: Tensor, cat: Tensor, cand_mask: Tensor, placed: Tensor) -> Tensor:
    """Per-candidate score derived from a generated list (``list_scores``), the item score being
    head 0's first-step logit: how much the model wanted the item first. [B, M]"""
    return list_scores(placed, first_step_logits(model, num, cat, cand_mask), cand_mask)


def first_step_logits(model: GenReranker, num: Tensor, cat: Tensor, cand_mask: Tensor) -> Tensor:
    """Head 0's logits at step 0: how much the model wants each candidate first. [B, M] (padding 0)"""
    z = model.encode(num, cat, cand_mask)
    memory, memory_bias = model.memory(z, cand_mask)
    h, _ = model.decode_hidden(model.bos_input(z.shape[0], z.device), memory, memory_bias)
    return model.head_logits(h, z, cand_mask, heads=1)[:, 0, 0].masked_fill(~cand_mask, 0.0)
