"""GReF losses (paper Eq. 2/6, 8, 9, 10, 11) on teacher-forced head logits.

Conventions. ``logits`` [B, k, N, M] come from GenReranker.forward (one ordering per request):
decoder step t (0-based) has seen [BOS], y_0..y_{t-1}; head j at step t predicts y_{t+j}.
``seq`` [B, N] holds candidate indices, ``lengths`` [B] the valid prefix n_b, ``cand_mask``
[B, M] the real candidates.

Masking ("already placed items are masked out", §4.5), chosen so training matches decoding:
 * ordered mask -- head j at step t excludes y_0..y_{t+j-1}: the items placed before the
   pass *and* those the earlier heads of the same pass place. This is exactly the distribution
   OMTP decoding samples from, so L_n and the DPO sequence log-probs are those of the policy.
 * L_o scores permutations of the window y_t..y_{t+k-1}: the permutation's log-probability is
   its decoding probability, i.e. head j excludes y_<t and the permutation's first j items.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NEG_INF = float("-inf")


def placed_before(seq: Tensor, M: int) -> Tensor:
    """[B, N] -> [B, N, M] bool: entry t marks y_0..y_{t-1} (items placed before step t)."""
    onehot = F.one_hot(seq, M).bool()  # [B, N, M]
    before = torch.zeros_like(onehot)
    before[:, 1:] = onehot[:, :-1].cumsum(dim=1).bool()
    return before


def ordered_log_probs(logits: Tensor, seq: Tensor) -> Tensor:
    """Log-probs under the ordered mask. logits [B, k, N, M] -> [B, k, N, M]."""
    B, k, N, M = logits.shape
    before = placed_before(seq, M)  # [B, N, M]
    idx = (torch.arange(N, device=seq.device)[None, :] + torch.arange(k, device=seq.device)[:, None]).clamp(max=N - 1)
    mask = before[:, idx]  # [B, k, N, M]: head j at step t -> placed before t+j
    masked = logits.masked_fill(mask, NEG_INF)
    # a step past a request's last candidate (every one shown, shorter than the batch's longest list)
    # has nothing left: its log-probs are never used, but an all -inf row makes NaN gradients
    empty = torch.isneginf(masked).all(dim=-1, keepdim=True)
    return torch.log_softmax(masked.masked_fill(empty, 0.0), dim=-1)


def target_log_probs(logits: Tensor, seq: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """log p_j(y_{t+j} | y_<t) for every head and step, and its validity (t + j < n_b).
    Returns (lp [B, k, N], valid [B, k, N])."""
    B, k, N, M = logits.shape
    logp = ordered_log_probs(logits, seq)
    t = torch.arange(N, device=seq.device)
    idx = (t[None, :] + torch.arange(k, device=seq.device)[:, None])  # [k, N]
    valid = idx[None] < lengths[:, None, None]  # [B, k, N]
    target = torch.gather(seq, 1, idx.clamp(max=N - 1).reshape(1, -1).expand(B, -1)).view(B, k, N)
    lp = torch.gather(logp, 3, target[..., None]).squeeze(-1)
    return lp.masked_fill(~valid, 0.0), valid


def multi_token_loss(logits: Tensor, seq: Tensor, lengths: Tensor) -> Tensor:
    """L_n (Eq. 9): -sum_t sum_{j<k} log p_j(y_{t+j} | y_<t), mean over requests.
    With k = 1 this is L_AR (Eq. 2 / 6), the plain next-item pre-training loss. -> scalar"""
    lp, _ = target_log_probs(logits, seq, lengths)
    return -lp.sum(dim=(1, 2)).mean()


def slot_log_probs(logits: Tensor, seq: Tensor, lengths: Tensor, heads: int) -> Tensor:
    """log p(y_t | the decoding state that placed it) for every slot t of the OMTP decoding policy
    with ``heads`` heads per pass: passes start at t0 = 0, heads, 2*heads, ..., and head j of the
    pass at t0 places y_{t0+j}. Slots past a request's length are 0. logits [B, k, N, M] -> [B, N]
    (the conditional propensities a prefix-matching off-policy estimate divides by)."""
    lp, _ = target_log_probs(logits, seq, lengths)
    N = seq.shape[1]
    t = torch.arange(N, device=seq.device)
    return lp[:, t % heads, t - t % heads]


def slot_log_distributions(logits: Tensor, seq: Tensor, heads: int) -> Tensor:
    """log p(. | the decoding state of slot t) over every candidate, for every slot t of the OMTP
    decoding policy with ``heads`` heads per pass (the distribution slot t was sampled from, given
    the items ``seq`` placed before it). logits [B, k, N, M] -> [B, N, M] (-inf: placed or padding)."""
    logp = ordered_log_probs(logits, seq)
    N = seq.shape[1]
    t = torch.arange(N, device=seq.device)
    return logp[:, t % heads, t - t % heads]


def sequence_log_prob(logits: Tensor, seq: Tensor, lengths: Tensor, heads: int) -> Tensor:
    """log pi(Y) of the OMTP decoding policy with ``heads`` heads per pass: the sum of its
    slot_log_probs. heads = 1 gives the autoregressive sum_t log p(y_t | y_<t) of Eq. 8.
    logits [B, k, N, M] -> [B]."""
    return slot_log_probs(logits, seq, lengths, heads).sum(1)


def dcg_weights(k: int, device: torch.device | None = None) -> Tensor:
    return 1.0 / torch.log2(torch.arange(k, device=device, dtype=torch.float32) + 2.0)


def permutations(k: int, max_perms: int = 120, seed: int = 0) -> Tensor:
    """All k! orderings of range(k) (identity first), or the identity plus a fixed random
    sample when k! > max_perms (k >= 6). -> [P, k] long"""
    if math.factorial(k) <= max_perms:
        return torch.tensor(list(itertools.permutations(range(k))), dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    sample = [torch.arange(k)] + [torch.randperm(k, generator=gen) for _ in range(max_perms - 1)]
    return torch.unique(torch.stack(sample), dim=0)


def ordered_loss(logits: Tensor, seq: Tensor, lengths: Tensor, relevance: Tensor,
                 perms: Tensor) -> Tensor:
    """L_o (Eq. 10). For every window t with t + k <= n_b, the k items y_t..y_{t+k-1} (what the
    heads output under teacher forcing) are permuted; S(perm) = NDCG of the permutation with
    the logged ``relevance`` [B, N] (weighted feedback); P(perm) = its decoding log-probability
    under the k heads. Each pair with S(+) > S(-) adds -log sigmoid(P(+) - P(-)); pairs are
    averaged within a window, windows summed, requests averaged. -> scalar

    logits [B, k, N, M]; perms [P, k] from ``permutations(k)``.
    """
    B, k, N, M = logits.shape
    if k < 2 or N < k:
        return logits.new_zeros(())
    W = N - k + 1  # windows t = 0..N-k
    t = torch.arange(W, device=seq.device)
    window = seq[:, t[:, None] + torch.arange(k, device=seq.device)]  # [B, W, k] items
    rel = relevance[:, t[:, None] + torch.arange(k, device=seq.device)]  # [B, W, k]
    valid = (t[None, :] + k) <= lengths[:, None]  # [B, W]
    before = placed_before(seq, M)[:, :W]  # [B, W, M]
    head_logits = logits[:, :, :W].permute(0, 2, 1, 3)  # [B, W, k(head), M]
    perm_items = window[:, :, perms]  # [B, W, P, k]: item placed by head j
    P = perms.shape[0]
    # head j excludes y_<t and the permutation's items placed by heads 0..j-1:
    # E[p, j, s] = 1 if window slot s is among perm p's first j entries.
    E = torch.zeros(P, k, k, device=seq.device)
    for j in range(1, k):
        E[:, j].scatter_(1, perms[:, :j].to(seq.device), 1.0)
    slot_onehot = F.one_hot(window, M).float()  # [B, W, k(slot), M]
    earlier = torch.einsum("pjs,bwsm->bwpjm", E, slot_onehot) > 0  # [B, W, P, k, M]
    # a window past the request's length holds padding (repeated items): its permutations would
    # be -inf and -inf - -inf = NaN, so it is neither masked nor scored (nor, below, paired)
    mask = (earlier | before[:, :, None, None, :]) & valid[:, :, None, None, None]
    masked = head_logits[:, :, None].expand(B, W, P, k, M).masked_fill(mask, NEG_INF)
    logp = torch.log_softmax(masked, dim=-1)
    perm_logp = torch.gather(logp, 4, perm_items[..., None]).squeeze(-1).sum(-1)  # [B, W, P]
    perm_logp = perm_logp.masked_fill(~valid[..., None], 0.0)
    gains = rel[:, :, perms] * dcg_weights(k, seq.device)  # [B, W, P, k]
    ideal = (torch.sort(rel, dim=-1, descending=True).values * dcg_weights(k, seq.device)).sum(-1)
    ndcg = gains.sum(-1) / ideal.clamp_min(1e-9)[..., None]  # [B, W, P]
    better = (ndcg[..., :, None] > ndcg[..., None, :] + 1e-6) & valid[..., None, None]  # [B, W, P, P]
    diff = perm_logp[..., :, None] - perm_logp[..., None, :]
    pair_loss = -F.logsigmoid(diff) * better
    n_pairs = better.sum(dim=(-1, -2))
    per_window = pair_loss.sum(dim=(-1, -2)) / n_pairs.clamp_min(1)
    return per_window.sum(-1).mean()


class OMTPLoss(nn.Module):
    """L_omtp = lambda1 * L_n + lambda2 * L_o (Eq. 11).

    ``window`` > k (used with k = 1): L_o over windows of ``window`` items scored by the single
    head's step-t distribution, each permutation's log-probability that of drawing it from that
    distribution without replacement (Plackett-Luce) -- the paper's "L_o alone corresponds to
    single-head autoregressive pre-training (Eq. 6)" (Table 3), read as Eq. 6 plus Eq. 10 on a
    single head (docs/results.md: the L_o ablation)."""

    def __init__(self, k: int, lambda1: float = 1.0, lambda2: float = 1.0, max_perms: int = 120, window: int = 0):
        super().__init__()
        self.lambda1, self.lambda2, self.k = lambda1, lambda2, k
        self.window = max(window, k)
        self.register_buffer("perms", permutations(self.window, max_perms), persistent=False)

    def forward(self, logits: Tensor, seq: Tensor, lengths: Tensor, relevance: Tensor) -> dict[str, Tensor]:
        """logits [B, k, N, M], seq [B, N], lengths [B], relevance [B, N] -> {"loss", "l_n", "l_o"}"""
        l_n = multi_token_loss(logits, seq, lengths)
        if self.window > self.k:  # one head scores every slot of the window
            lo_logits = logits[:, :1].expand(-1, self.window, -1, -1)
        else:
            lo_logits = logits
        l_o = ordered_loss(lo_logits, seq, lengths, relevance, self.perms) if self.lambda2 else logits.new_zeros(())
        return {"loss": self.lambda1 * l_n + self.lambda2 * l_o, "l_n": l_n.detach(), "l_o": l_o.detach()}


class RerankDPOLoss(nn.Module):
    """Rerank-DPO (Eq. 8) and the well-known variants, on summed sequence log-probs.

    With h = (log pi(Y_w) - log ref(Y_w)) - (log pi(Y_l) - log ref(Y_l)):
      * ``sigmoid`` (the paper, Eq. 8): -log sigmoid(beta * h);
        ``label_smoothing`` eps > 0: conservative DPO, -(1 - eps) log s(beta h) - eps log s(-beta h)
        (the preference label is wrong with probability eps);
      * ``ipo`` (Azar et al. 2023): (h - 1 / (2 beta))^2 -- a bounded target margin instead of an
        ever-growing one, so a deterministic preference does not drive the margin to infinity;
      * ``sft_weight`` > 0 (RPO, Pang et al. 2024): + weight * (-log pi(Y_w) / n), the winner's
        per-item NLL, which keeps DPO from lowering the likelihood of both sequences;
      * ``length_norm``: every log-prob divided by its list length n before h (lists of one request
        have one length; across requests it evens out long and short lists).
    Inputs: policy / reference log-probs of winner and loser, each [B]; ``lengths`` [B].
    Returns {"loss", "pref" (the preference term), "reward_margin" (beta h), "accuracy" (h > 0),
    "chosen_logp", "rejected_logp" (policy, per item), "chosen_reward", "rejected_reward"}.
    """

    LOSSES = ("sigmoid", "ipo")

    def __init__(self, beta: float = 0.1, sft_weight: float = 0.0, loss_type: str = "sigmoid",
                 label_smoothing: float = 0.0, length_norm: bool = False):
        super().__init__()
        if loss_type not in self.LOSSES:
            raise ValueError(f"unknown DPO loss '{loss_type}' (one of {', '.join(self.LOSSES)})")
        self.beta, self.sft_weight, self.loss_type = beta, sft_weight, loss_type
        self.label_smoothing, self.length_norm = label_smoothing, length_norm

    def forward(self, policy_w: Tensor, policy_l: Tensor, ref_w: Tensor, ref_l: Tensor,
                lengths: Tensor) -> dict[str, Tensor]:
        n = lengths.to(policy_w.dtype).clamp_min(1)
        scale = n if self.length_norm else torch.ones_like(n)
        chosen, rejected = (policy_w - ref_w) / scale, (policy_l - ref_l) / scale
        h = chosen - rejected
        if self.loss_type == "ipo":
            pref = ((h - 1.0 / (2.0 * self.beta)) ** 2).mean()
        else:
            eps = self.label_smoothing
            pref = (-(1 - eps) * F.logsigmoid(self.beta * h) - eps * F.logsigmoid(-self.beta * h)).mean()
        loss = pref + self.sft_weight * (-policy_w / n).mean() if self.sft_weight else pref
        return {"loss": loss, "pref": pref.detach(), "reward_margin": (self.beta * h).detach().mean(),
                "accuracy": (h > 0).float().detach().mean(),
                "chosen_logp": (policy_w / n).detach().mean(), "rejected_logp": (policy_l / n).detach().mean(),
                "chosen_reward": (self.beta * chosen).detach().mean(),
                "rejected_reward": (self.beta * rejected).detach().mean()}
