"""What one training step optimises, per stage (Ray-free; the Ray Train loop, tests and benchmarks
call these). Each objective maps (model, batch) to a dict of losses whose "loss" is minimised.

  * pre-training -- L_omtp on the logged exposure orders (Eq. 9-11), or on those orders re-sorted
    by Eq. 7 (``target: eq7``: clicked items first -- where every candidate is shown, the exposure
    order is production's and teaches only to copy it);
  * a baseline -- its own ``forward(batch)`` losses;
  * post-training (the DPO stage), ``DPOConfig.objective``:
      - ``dpo`` on ``logged`` pairs -- Rerank-DPO on Eq. 7's pairs (the paper);
      - ``dpo`` on ``onpolicy`` pairs -- the reward's best vs worst of lists the policy produces;
      - ``distill`` -- the NLL of the list a list-wise reward finds best by beam search (its list
        search, with list effects, distilled into the generator: GReF then serves it in one
        OMTP decode, no evaluator at serving time).
Post-training also validates the instrumentation of its preference loss (``post_validation``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from gref.data.batch import Batch
from gref.losses import OMTPLoss, RerankDPOLoss, multi_token_loss, sequence_log_prob
from gref.model.decoding import decode
from gref.train.onpolicy import ListReward, OnPolicyConfig, onpolicy_batch, shown_values


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def pretrain_loss(model: nn.Module, loss_fn: OMTPLoss, batch: Batch) -> dict[str, Tensor]:
    logits = model(batch.num, batch.cat, batch.cand_mask, batch.exposure[:, None])[:, 0]
    return loss_fn(logits, batch.exposure, batch.lengths, batch.relevance)


def dpo_loss(policy: nn.Module, reference: nn.Module, loss_fn: RerankDPOLoss, batch: Batch,
             heads: int) -> dict[str, Tensor]:
    """Winner and loser through one batched forward (encoder runs once per request)."""
    seqs = torch.stack([batch.winner, batch.loser], dim=1)  # [B, 2, N]
    logits = policy(batch.num, batch.cat, batch.cand_mask, seqs)  # [B, 2, k, N, M]
    with torch.no_grad():
        ref_logits = reference(batch.num, batch.cat, batch.cand_mask, seqs)
    lp = [sequence_log_prob(logits[:, s], seqs[:, s], batch.lengths, heads) for s in (0, 1)]
    ref = [sequence_log_prob(ref_logits[:, s], seqs[:, s], batch.lengths, heads) for s in (0, 1)]
    return loss_fn(lp[0], lp[1], ref[0], ref[1], batch.lengths)


def distill_loss(policy: nn.Module, reward: ListReward, batch: Batch, target: Tensor | None = None) -> dict[str, Tensor]:
    """NLL (L_n over the policy's heads) of the reward's best list per request, cut at each
    request's shown length n_b. ``target`` [B, n]: that list when already known (Distill's cache)."""
    if target is None:
        with torch.no_grad():
            target = reward.search(batch, int(batch.lengths.max()))  # [B, n]
    lengths = torch.minimum(batch.lengths, (target >= 0).sum(1))
    target = target.clamp_min(0)
    logits = policy(batch.num, batch.cat, batch.cand_mask, target[:, None])[:, 0]
    nll = multi_token_loss(logits, target, lengths)
    return {"loss": nll, "distill_nll": nll.detach()}


class Objective:
    """A stage's training loss: ``__call__(model, batch)`` -> {"loss", ...}."""

    def __call__(self, model: nn.Module, batch: Batch) -> dict[str, Tensor]:
        raise NotImplementedError


def eq7_targets(batch: Batch, alpha: float, gamma: float) -> Batch:
    """The batch with its exposure re-sorted by Eq. 7, S_i = alpha / P_i + gamma * U_i (stable:
    ties keep the exposure order), each slot's relevance moving with its item. [B, N] -> [B, N]."""
    N = batch.exposure.shape[1]
    slots = torch.arange(N, device=batch.exposure.device)[None]
    score = alpha / (slots + 1.0) + gamma * batch.relevance
    score = torch.where(slots < batch.lengths[:, None], score, torch.full_like(score, -torch.inf))
    order = torch.argsort(-score, dim=1, stable=True)
    return replace(batch, exposure=batch.exposure.gather(1, order), relevance=batch.relevance.gather(1, order))


class Pretrain(Objective):
    def __init__(self, loss_fn: OMTPLoss, target: str = "exposure", alpha: float = 1.0, gamma: float = 1.0):
        self.loss_fn, self.target, self.alpha, self.gamma = loss_fn, target, alpha, gamma

    def __call__(self, model, batch):
        if self.target == "eq7":
            batch = eq7_targets(batch, self.alpha, self.gamma)
        return pretrain_loss(model, self.loss_fn, batch)


class BaselineLoss(Objective):
    def __call__(self, model, batch):
        return model(batch)


class LoggedDPO(Objective):
    """Rerank-DPO on the pairs jobs.prepare wrote (Eq. 7)."""

    def __init__(self, reference: nn.Module, loss_fn: RerankDPOLoss, heads: int):
        self.reference, self.loss_fn, self.heads = reference, loss_fn, heads

    def __call__(self, model, batch):
        return dpo_loss(model, self.reference, self.loss_fn, batch, self.heads)


class OnPolicyDPO(LoggedDPO):
    """DPO on the reward's best vs worst of the policy's own lists, made fresh every batch."""

    def __init__(self, reference, loss_fn, heads, reward: ListReward, cfg: OnPolicyConfig,
                 generator: torch.Generator | None = None):
        super().__init__(reference, loss_fn, heads)
        self.reward, self.cfg, self.generator = reward, cfg, generator

    def __call__(self, model, batch):
        pairs, stats = onpolicy_batch(unwrap(model), batch, self.reward, self.cfg, self.generator)
        out = dpo_loss(model, self.reference, self.loss_fn, pairs, self.heads)
        return {**out, **{k: torch.tensor(v) for k, v in stats.items()}}


class Distill(Objective):
    """The distillation loss. The reward is frozen, so each request's target list is searched once
    and reused by later epochs and validations: cached by (request id, horizon n) -- a beam search's
    best list can depend on how far it looks. A batch without request ids is searched every time."""

    def __init__(self, reward: ListReward, horizon: int = 0):
        self.reward, self.horizon = reward, horizon  # horizon: positions searched and taught (0 = all shown)
        self.targets: dict[tuple[Any, int], Tensor] = {}  # (request id, n) -> [n] the reward's list

    @torch.no_grad()
    def target(self, batch: Batch) -> Tensor:
        """The reward's best list per request, [B, n] (n = the batch's longest shown list, at most
        the horizon; distill_loss then teaches each request's first min(n_b, n) positions)."""
        n, ids = int(batch.lengths.max()), batch.request_id
        n = min(n, self.horizon) if self.horizon else n
        if ids is None:
            return self.reward.search(batch, n)
        if any((r, n) not in self.targets for r in ids):  # a new batch: one search for all of it
            for r, row in zip(ids, self.reward.search(batch, n).cpu()):
                self.targets[(r, n)] = row
        return torch.stack([self.targets[(r, n)] for r in ids]).to(batch.num.device)

    def __call__(self, model, batch):
        return distill_loss(model, self.reward, batch, self.target(batch))


@torch.no_grad()
def kl_to_reference(policy: nn.Module, reference: nn.Module, batch: Batch, heads: int, samples: int = 4,
                    seed: int = 0) -> float:
    """Sequence-level KL(policy || reference), estimated on lists sampled from the policy:
    mean over samples of log pi(Y) - log ref(Y) (per request, summed log-probs)."""
    n = int(batch.lengths.max())
    gen = torch.Generator(device=batch.num.device).manual_seed(seed)
    total = 0.0
    for _ in range(samples):
        y = decode(policy, batch.num, batch.cat, batch.cand_mask, n, heads=heads, temperature=1.0, generator=gen)
        y = y.clamp_min(0)[:, None]  # a request shows its first n_b items: later slots are masked by lengths
        lp = sequence_log_prob(policy(batch.num, batch.cat, batch.cand_mask, y)[:, 0], y[:, 0], batch.lengths, heads)
        lr = sequence_log_prob(reference(batch.num, batch.cat, batch.cand_mask, y)[:, 0], y[:, 0], batch.lengths, heads)
        total += float((lp - lr).mean())
    return total / samples


@torch.no_grad()
def reward_clicks(policy: nn.Module, reward: ListReward, batch: Batch, heads: int) -> float:
    """The reward's value of the policy's greedy lists, each cut at its request's shown length,
    averaged over the batch's requests: what post-training raises, judged by the same (frozen)
    reward -- an oracle-free selection metric that sees list effects, which the DBN / PBM click
    estimates of the valid split do not."""
    greedy = decode(policy, batch.num, batch.cat, batch.cand_mask, int(batch.lengths.max()), heads=heads)  # [B, n]
    return float(shown_values(reward, batch, greedy[:, None])[1].mean())


@torch.no_grad()
def post_validation(policy: nn.Module, reference: nn.Module, objective: Objective, pairs: Batch | None,
                    sequences: Batch, heads: int) -> dict[str, Any]:
    """Instrumentation of post-training on validation: the preference loss and its parts on
    validation pairs (logged pairs, or on-policy pairs made with a fixed seed), the distillation
    NLL, the KL of the policy to the reference, and with a reward its value of the greedy lists."""
    policy.eval()
    out: dict[str, Any] = {"val_kl": kl_to_reference(policy, reference, sequences, heads)}
    if isinstance(objective, (Distill, OnPolicyDPO)):
        out["reward_clicks"] = reward_clicks(policy, objective.reward, sequences, heads)
    if isinstance(objective, Distill):
        out["val_distill_nll"] = float(objective(policy, sequences)["loss"])
        return out
    if isinstance(objective, OnPolicyDPO):
        gen = torch.Generator(device=sequences.num.device).manual_seed(0)
        pairs, _ = onpolicy_batch(policy, sequences, objective.reward, objective.cfg, gen)
    if pairs is None or pairs.size == 0:
        return out
    stats = dpo_loss(policy, reference, objective.loss_fn, pairs, heads)
    out.update({"val_dpo_loss": float(stats["loss"]), "val_reward_margin": float(stats["reward_margin"]),
                "val_reward_accuracy": float(stats["accuracy"]), "val_chosen_logp": float(stats["chosen_logp"]),
                "val_rejected_logp": float(stats["rejected_logp"])})
    return out
