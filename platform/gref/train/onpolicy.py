"""On-policy preference pairs for post-training: lists the policy itself produces, judged at the
list level (Ray-free; the Ray Train loop and tests call it).

Per request: the policy's greedy list, ``samples`` lists sampled from it (temperature), and
optionally the reward model's own beam-search list -- a list that can bring candidates in that
the policy would not place yet. A list-level reward scores every one; the pair is (best, worst).
Rewards:
  * ``ListClickModel`` (gref.baselines.clickmodel): the learned list-wise click model -- what a
    team without a simulator has;
  * ``OracleReward``: the simulated world's exact expected clicks -- a diagnostic reference only
    (it is what a perfect reward model would say).
``audit`` measures how often the learned reward picks the same best / worst list as the oracle.

Shapes: B requests, G candidate lists per request, n list length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from gref.data.batch import Batch
from gref.model.decoding import decode


@dataclass
class OnPolicyConfig:
    samples: int = 8  # lists sampled from the policy per request (besides its greedy list)
    temperature: float = 1.0  # sampling temperature (1 = the policy's own distribution)
    search_list: bool = True  # add the reward model's beam-search list as a candidate
    min_gap: float = 0.0  # skip a request whose best and worst differ by less (reward units)


class ListReward(Protocol):
    def list_values(self, batch: Batch, lists: Tensor) -> Tensor:
        """lists [B, G, n] candidate indices (-1 = none) -> values [B, G]."""

    def search(self, batch: Batch, n: int) -> Tensor | None:
        """The reward's own best list [B, n], or None when it cannot search."""


class ModelReward:
    """A learned list-wise reward (gref.baselines.clickmodel.ListClickModel), frozen."""

    def __init__(self, model, beam_width: int | None = None):
        self.model = model.eval().requires_grad_(False)
        self.beam_width = beam_width or model.cfg.beam_width

    @torch.no_grad()
    def list_values(self, batch: Batch, lists: Tensor) -> Tensor:
        return self.model.list_values(batch.num, batch.cat, batch.cand_mask, lists)

    @torch.no_grad()
    def search(self, batch: Batch, n: int) -> Tensor:
        return self.model.search(batch.num, batch.cat, batch.cand_mask, n, self.beam_width)


class OracleReward:
    """The simulated world's exact expected clicks (needs the batch's user and item ids)."""

    def __init__(self, world, beam_width: int = 4):
        self.world, self.beam_width = world, beam_width

    def list_values(self, batch: Batch, lists: Tensor) -> Tensor:
        from gref.sim.user_model import expected_feedback

        B, G, n = lists.shape
        items = batch.item_id.cpu().numpy()
        ls = lists.cpu().numpy()
        ids = np.where(ls >= 0, np.take_along_axis(items[:, None, :].repeat(G, 1), np.clip(ls, 0, None), 2), -1)
        users = np.repeat(batch.user_id.cpu().numpy(), G)
        value = expected_feedback(self.world, users, ids.reshape(B * G, n))["click"]
        return torch.as_tensor(value, dtype=torch.float32, device=lists.device).view(B, G)

    def search(self, batch: Batch, n: int) -> Tensor:
        from gref.clickmodel.search import beam_search
        from gref.sim.reference import oracle_effects, oracle_search

        users, items = batch.user_id.cpu().numpy(), batch.item_id.cpu().numpy()
        if self.world.config.family != "attribute":
            return torch.as_tensor(oracle_search(self.world, users, items, n, self.beam_width)).to(batch.num.device)
        return beam_search(oracle_effects(self.world, users, items), n, self.beam_width)[0].to(batch.num.device)


def candidate_lists(policy, batch: Batch, reward: ListReward, cfg: OnPolicyConfig, n: int,
                    generator: torch.Generator | None = None) -> Tensor:
    """[B, G, n]: greedy, ``samples`` sampled lists, and (optionally) the reward's search list."""
    args = (batch.num, batch.cat, batch.cand_mask, n)
    lists = [decode(policy, *args)]
    lists += [decode(policy, *args, temperature=cfg.temperature, generator=generator) for _ in range(cfg.samples)]
    if cfg.search_list and (found := reward.search(batch, n)) is not None:
        lists.append(found)
    return torch.stack(lists, dim=1)


def best_worst_pairs(lists: Tensor, values: Tensor, min_gap: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """lists [B, G, n], values [B, G] -> (winner [B, n], loser [B, n], keep [B] bool: the best
    beats the worst by more than ``min_gap``; ties between lists pick the first)."""
    rows = torch.arange(lists.shape[0], device=lists.device)
    best, worst = values.argmax(1), values.argmin(1)
    keep = (values[rows, best] - values[rows, worst]) > min_gap
    return lists[rows, best], lists[rows, worst], keep


def shown_values(reward: ListReward, batch: Batch, lists: Tensor) -> tuple[Tensor, Tensor]:
    """lists [B, G, n] cut at each request's shown length n_b (a request shows its own n_b items:
    the rest of a generated list is not shown) -> (those lists, the reward's values [B, G])."""
    shown = torch.arange(lists.shape[-1], device=lists.device)[None, None] < batch.lengths[:, None, None]
    lists = torch.where(shown, lists, -1)
    return lists, reward.list_values(batch, lists)


def onpolicy_batch(policy, batch: Batch, reward: ListReward, cfg: OnPolicyConfig,
                   generator: torch.Generator | None = None) -> tuple[Batch, dict[str, float]]:
    """A DPO batch (winner / loser set; requests without a pair dropped) from a batch of
    sequences, and statistics of the candidate lists' rewards."""
    n = int(batch.lengths.max())
    was_training = policy.training
    policy.eval()
    lists = candidate_lists(policy, batch, reward, cfg, n, generator)
    policy.train(was_training)
    lists, values = shown_values(reward, batch, lists)
    winner, loser, keep = best_worst_pairs(lists, values, cfg.min_gap)
    stats = {"reward_greedy": float(values[:, 0].mean()), "reward_best": float(values.max(1).values.mean()),
             "reward_gap": float((values.max(1).values - values.min(1).values).mean()),
             "pair_fraction": float(keep.float().mean())}
    if cfg.search_list and lists.shape[1] > cfg.samples + 1:
        stats["reward_search"] = float(values[:, -1].mean())
    idx = keep.nonzero().squeeze(1)
    out = Batch(num=batch.num[idx], cat=batch.cat[idx], cand_mask=batch.cand_mask[idx],
                exposure=batch.exposure[idx], lengths=batch.lengths[idx], relevance=batch.relevance[idx],
                click=batch.click[idx], winner=winner[idx].clamp_min(0), loser=loser[idx].clamp_min(0))
    return out, stats


@torch.no_grad()
def audit(learned: ListReward, oracle: ListReward, batch: Batch, lists: Tensor) -> dict[str, float]:
    """How well the learned reward judges these lists, by the oracle: agreement of the best and
    of the worst pick, and the pairwise concordance of the two orderings (ties excluded)."""
    v, o = learned.list_values(batch, lists), oracle.list_values(batch, lists)
    rows = torch.arange(lists.shape[0], device=lists.device)
    dv, do = v[:, :, None] - v[:, None, :], o[:, :, None] - o[:, None, :]
    informative = (dv != 0) & (do != 0)
    return {"best_agreement": float((o[rows, v.argmax(1)] >= o.max(1).values - 1e-9).float().mean()),
            "worst_agreement": float((o[rows, v.argmin(1)] <= o.min(1).values + 1e-9).float().mean()),
            "pair_concordance": float(((dv > 0) == (do > 0))[informative].float().mean()),
            "oracle_gain_of_pick": float((o[rows, v.argmax(1)] - o[:, 0]).mean())}
