"""Post-training's pieces without Ray: sampling from the policy, on-policy pairs, the reward audit,
the distillation and DPO objectives, the KL estimate, and model selection by metric direction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gref.data.batch import Batch
from gref.losses import multi_token_loss, sequence_log_prob
from gref.model import GenReranker, ModelConfig, decode
from gref.train.objectives import Distill, distill_loss, kl_to_reference, post_validation, reward_clicks
from gref.train.onpolicy import OnPolicyConfig, OracleReward, audit, best_worst_pairs, onpolicy_batch
from gref.train.steps import better, metric_mode, validation_metrics


def tiny(k=2, seed=0) -> GenReranker:
    torch.manual_seed(seed)
    return GenReranker(ModelConfig(num_features=3, cat_sizes=[5], d_model=16, n_heads=2, enc_layers=1,
                                   dec_layers=1, omtp_heads=k, list_bias=True)).eval()


def batch(B=4, M=6, N=3, seed=1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    num, cat = torch.randn(B, M, 3, generator=g), torch.randint(2, 5, (B, M, 1), generator=g)
    exposure = torch.stack([torch.randperm(M, generator=g)[:N] for _ in range(B)])
    click = (torch.rand(B, N, generator=g) < 0.4).float()
    return Batch(num=num, cat=cat, cand_mask=torch.ones(B, M, dtype=torch.bool), exposure=exposure,
                 lengths=torch.full((B,), N), relevance=click, click=click)


class FixedReward:
    """A stand-in reward: a list's value is the sum of fixed per-candidate values times 1/rank;
    its search is the candidates sorted by value."""

    def __init__(self, values: torch.Tensor):
        self.values = values  # [B, M]

    def list_values(self, b, lists):
        w = 1.0 / torch.arange(1, lists.shape[-1] + 1, dtype=torch.float32)
        v = torch.gather(self.values[:, None].expand(-1, lists.shape[1], -1), 2, lists.clamp_min(0))
        return (v * (lists >= 0) * w).sum(-1)

    def search(self, b, n):
        return self.values.argsort(dim=1, descending=True)[:, :n]


def test_best_worst_pairs_by_hand():
    lists = torch.tensor([[[0, 1], [1, 0], [2, 1]], [[0, 1], [1, 2], [2, 0]]])
    values = torch.tensor([[0.5, 0.9, 0.1], [0.3, 0.3, 0.3]])
    w, lo, keep = best_worst_pairs(lists, values)
    assert w[0].tolist() == [1, 0] and lo[0].tolist() == [2, 1] and keep.tolist() == [True, False]
    assert best_worst_pairs(lists, values, min_gap=0.9)[2].tolist() == [False, False]


def test_audit_by_hand():
    lists = torch.zeros(2, 3, 2, dtype=torch.long)
    learned = FixedReward(torch.zeros(2, 1))
    oracle = FixedReward(torch.zeros(2, 1))
    learned.list_values = lambda b, ls: torch.tensor([[1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
    oracle.list_values = lambda b, ls: torch.tensor([[1.0, 3.0, 2.0], [3.0, 2.0, 1.0]])
    out = audit(learned, oracle, None, lists)
    # request 0: learned best = 2 (oracle 2.0, not its best 3.0); worst = 0 (oracle's worst too)
    # request 1: learned best = 0 (oracle's best); worst = 1 (oracle 2.0, its worst is 1.0)
    assert out["best_agreement"] == 0.5 and out["worst_agreement"] == 0.5
    # pairs (i<j, both orders counted): r0: (0,1) agree, (0,2) agree, (1,2) disagree; r1: (0,1) agree,
    # (0,2) agree, (1,2) disagree -> 4 of 6 ordered pairs agree
    assert out["pair_concordance"] == pytest.approx(4 / 6)
    assert out["oracle_gain_of_pick"] == pytest.approx(((2.0 - 1.0) + (3.0 - 3.0)) / 2)


def test_sampling_follows_the_policys_softmax():
    model = tiny(k=1)
    b = batch(B=1, M=4)
    logits = model(b.num, b.cat, b.cand_mask, torch.zeros(1, 1, 1, dtype=torch.long))[0, 0, 0, 0]  # step 0, head 0
    expect = torch.softmax(logits, -1).detach().numpy()
    gen = torch.Generator().manual_seed(0)
    draws = torch.cat([decode(model, b.num.expand(500, -1, -1), b.cat.expand(500, -1, -1),
                              b.cand_mask.expand(500, -1), 1, temperature=1.0, generator=gen)[:, 0] for _ in range(8)])
    freq = np.bincount(draws.numpy(), minlength=4) / len(draws)
    assert freq == pytest.approx(expect, abs=0.03)


def test_a_sampled_lists_log_probability_is_the_policys():
    """decode(return_log_prob) gives log P(list) under the policy that drew it: at temperature 1 the
    teacher-forced sequence_log_prob of the same list (k = 2 heads, list bias on); at T = 2 the first
    placement's log-softmax(logits / 2), by hand; greedy lists are deterministic (0)."""
    model, b = tiny(k=2), batch(B=4, M=6)
    gen = torch.Generator().manual_seed(5)
    y, lp = decode(model, b.num, b.cat, b.cand_mask, 3, temperature=1.0, generator=gen, return_log_prob=True)
    forced = sequence_log_prob(model(b.num, b.cat, b.cand_mask, y[:, None])[:, 0], y, torch.full((4,), 3), 2)
    assert lp.tolist() == pytest.approx(forced.tolist(), abs=1e-5)
    y1, lp1 = decode(model, b.num, b.cat, b.cand_mask, 1, temperature=2.0, generator=gen, return_log_prob=True)
    logits = model(b.num, b.cat, b.cand_mask, y1[:, None])[:, 0, 0, 0]  # head 0, step 0: [B, M]
    assert lp1.tolist() == pytest.approx((logits / 2).log_softmax(-1).gather(1, y1)[:, 0].tolist(), abs=1e-5)
    _, lp0 = decode(model, b.num, b.cat, b.cand_mask, 3, return_log_prob=True)
    assert lp0.tolist() == [0.0] * 4


def test_onpolicy_batch_pairs_the_rewards_best_and_worst_lists():
    model, b = tiny(), batch()
    values = torch.arange(24, dtype=torch.float32).view(4, 6).flip(1)  # candidate 0 is best everywhere
    reward = FixedReward(values)
    pairs, stats = onpolicy_batch(model, b, reward, OnPolicyConfig(samples=3), torch.Generator().manual_seed(0))
    assert pairs.size == 4 and pairs.winner[:, 0].tolist() == [0, 0, 0, 0]  # the search list wins
    assert stats["reward_best"] == pytest.approx(stats["reward_search"])
    assert (reward.list_values(b, pairs.winner[:, None]) >= reward.list_values(b, pairs.loser[:, None])).all()


def test_distill_loss_is_the_nll_of_the_rewards_list():
    model, b = tiny(), batch()
    reward = FixedReward(torch.randn(4, 6, generator=torch.Generator().manual_seed(3)))
    target = reward.search(b, 3)
    expect = multi_token_loss(model(b.num, b.cat, b.cand_mask, target[:, None])[:, 0], target, b.lengths)
    assert distill_loss(model, reward, b)["loss"].item() == pytest.approx(expect.item(), abs=1e-6)


def test_distill_searches_each_request_once_and_keys_by_horizon():
    from dataclasses import replace

    model, b = tiny(), batch()
    reward = FixedReward(torch.randn(4, 6, generator=torch.Generator().manual_seed(3)))
    searched = []
    search = reward.search
    reward.search = lambda bb, n: searched.append((bb.size, n)) or search(bb, n)
    objective = Distill(reward)
    fresh = distill_loss(model, FixedReward(reward.values), b)["loss"].item()
    b = replace(b, request_id=["a", "b", "c", "d"])
    for _ in range(3):  # three epochs over the same requests: one search
        assert objective(model, b)["loss"].item() == pytest.approx(fresh, abs=1e-6)
    assert searched == [(4, 3)]
    short = replace(b, lengths=torch.full((4,), 2))  # another horizon: searched again, its own list
    assert objective.target(short).tolist() == search(short, 2).tolist() and searched[-1] == (4, 2)
    objective(model, replace(b, request_id=None))  # no ids: no cache
    assert searched[-1] == (4, 3) and len(searched) == 3


def test_kl_to_itself_is_zero_and_validation_reports_it():
    model, b = tiny(), batch()
    assert kl_to_reference(model, model, b, heads=2) == pytest.approx(0.0, abs=1e-6)
    reward = FixedReward(torch.randn(4, 6, generator=torch.Generator().manual_seed(3)))
    out = post_validation(model, tiny(seed=1), Distill(reward), None, b, heads=2)
    assert set(out) == {"val_kl", "val_distill_nll", "reward_clicks"} and out["val_kl"] != 0.0


def test_reward_clicks_is_the_rewards_value_of_the_greedy_lists_cut_at_each_length():
    from dataclasses import replace

    model, b = tiny(), batch()
    b = replace(b, lengths=torch.tensor([3, 2, 1, 3]))
    values = torch.randn(4, 6, generator=torch.Generator().manual_seed(3))
    greedy = decode(model, b.num, b.cat, b.cand_mask, 3, heads=2)
    by_hand = 0.0  # FixedReward: sum of the placed candidates' values / rank, over each shown prefix
    for i, n in enumerate(b.lengths.tolist()):
        by_hand += sum(float(values[i, greedy[i, p]]) / (p + 1) for p in range(n))
    assert reward_clicks(model, FixedReward(values), b, heads=2) == pytest.approx(by_hand / 4, abs=1e-6)
    assert post_validation(model, tiny(seed=1), Distill(FixedReward(values)), None, b, heads=2)[
        "reward_clicks"] == pytest.approx(by_hand / 4, abs=1e-6)


def test_oracle_reward_is_the_worlds_expected_clicks():
    from gref.sim.user_model import expected_feedback
    from gref.sim.world import World, WorldConfig

    world = World.generate(WorldConfig(seed=2, n_users=30, n_items=100, n_series=10, n_categories=4, n_creators=20))
    b = batch(B=2, M=6)
    b.item_id = torch.tensor([[3, 9, 27, 4, 50, 61], [7, 8, 9, 10, 11, 12]])
    b.user_id = torch.tensor([5, 17])
    lists = torch.tensor([[[0, 1, 2], [5, 4, 3]], [[2, 1, -1], [0, 3, 4]]])
    got = OracleReward(world).list_values(b, lists)
    ids = np.array([[3, 9, 27], [61, 50, 4], [9, 8, -1], [7, 10, 11]])
    expect = expected_feedback(world, np.array([5, 5, 17, 17]), ids)["click"].reshape(2, 2)
    assert got.numpy() == pytest.approx(expect, abs=1e-6)


def test_sequence_log_prob_of_sampled_lists_sums_to_one_over_all_lists():
    # every 2-item list of 3 candidates under a k=2 model: the decoding policy's probabilities sum to 1
    model = tiny(k=2)
    b = batch(B=1, M=3, N=2)
    lists = torch.tensor([[i, j] for i in range(3) for j in range(3) if i != j])
    logits = model(b.num.expand(6, -1, -1), b.cat.expand(6, -1, -1), b.cand_mask.expand(6, -1), lists[:, None])[:, 0]
    lp = sequence_log_prob(logits, lists, torch.full((6,), 2), heads=2)
    assert sum(math.exp(v) for v in lp.tolist()) == pytest.approx(1.0, abs=1e-5)


def test_metric_direction_and_the_metrics_each_stage_produces():
    assert metric_mode("val_nll") == "min" and metric_mode("val_dpo_loss") == "min" and metric_mode("val_kl") == "min"
    assert metric_mode("oracle_clicks") == "max" and metric_mode("ndcg") == "max"
    assert better(1.0, 2.0, "val_nll") and not better(1.0, 2.0, "ndcg") and better(5.0, None, "val_loss")
    assert "val_loss" in validation_metrics("baseline", False, False) and "oracle_clicks" not in validation_metrics(
        "pretrain", True, False)
    assert "val_distill_nll" in validation_metrics("dpo", True, True, {"objective": "distill", "pairs": "logged"})
    assert "reward_clicks" in validation_metrics("dpo", True, False, {"objective": "distill", "pairs": "logged"})
    assert "reward_clicks" in validation_metrics("dpo", True, False, {"objective": "dpo", "pairs": "onpolicy"})
    assert "reward_clicks" not in validation_metrics("dpo", True, False, {"objective": "dpo", "pairs": "logged"})
    assert "val_reward_margin" in validation_metrics("dpo", True, False, {"objective": "dpo", "pairs": "logged"})
