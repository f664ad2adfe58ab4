"""The list click model, its list search, the oracle references and the learned reward (no Ray):
expected clicks by hand, the oracle form against the simulator's user model, beam search
against exhaustive search, the features-only ceiling on hand-made worlds, the reward's fit."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from gref.baselines.clickmodel import COVERAGE_SCALE, ListClickModel
from gref.baselines.config import BaselineConfig
from gref.clickmodel.search import beam_search, pointwise_order
from gref.clickmodel.structured import ListEffects, expected_clicks
from gref.data.batch import same_attribute
from gref.sim.reference import oracle_effects
from gref.sim.user_model import expected_feedback
from gref.sim.world import World, WorldConfig

SMALL = dict(n_users=60, n_items=300, n_series=20, n_categories=6, n_creators=40)


def s(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def effects(logit, same, red, adj, cadj, exam) -> ListEffects:
    logit = torch.tensor([logit], dtype=torch.float32)
    return ListEffects(logit=logit, same=torch.tensor([same]), redundancy=torch.tensor(red),
                       adjacency=torch.tensor(adj), click_adjacency=torch.tensor(cadj),
                       examination=torch.tensor(exam), cand_mask=torch.ones_like(logit, dtype=torch.bool))


def test_expected_clicks_by_hand():
    # 3 candidates, one attribute column: candidates 0 and 1 share it
    same = [[[True, True, False], [True, True, False], [False, False, True]]]
    fx = effects([0.5, -0.2, 1.0], same, [-0.4], [0.3], [1.0], [1.0, 0.8, 0.6])
    q0 = s(0.5)
    base1 = -0.2 - 0.4 + 0.3  # one earlier item shares the column (redundancy) and it is right above (adjacency)
    q1 = s(base1) + q0 * (s(base1 + 1.0) - s(base1))  # + the click-conditioned bonus, weighted by q0
    q2 = s(1.0)  # shares nothing with what is above
    total, at = expected_clicks(fx, torch.tensor([[0, 1, 2]]))
    assert at[0].tolist() == pytest.approx([q0, 0.8 * q1, 0.6 * q2], abs=1e-6)
    assert total.item() == pytest.approx(q0 + 0.8 * q1 + 0.6 * q2, abs=1e-6)
    # a shorter list (-1 = nothing shown) gets nothing there
    assert expected_clicks(fx, torch.tensor([[2, 0, -1]]))[1][0, 2].item() == 0.0


def test_value_pair_effects_by_hand():
    """effect(i, j) = sum_c <U_c[c(i)], V_c[c(j)]>: 0 at start, padding has none, and in the
    expected clicks per earlier item (redundancy) and for the item right above (adjacency)."""
    from gref.model.value_pairs import ValuePairs

    vp = ValuePairs([4, 3], rank=2)
    cat = torch.tensor([[[2, 2], [3, 1], [0, 0]]])  # candidate 2 is padding
    assert torch.count_nonzero(vp(cat)) == 0
    with torch.no_grad():
        vp.above[0].weight[2] = torch.tensor([1.0, 0.0]); vp.above[0].weight[3] = torch.tensor([0.0, 2.0])
        vp.below[0].weight[2] = torch.tensor([0.5, 0.5]); vp.below[0].weight[3] = torch.tensor([-1.0, 1.0])
        vp.above[1].weight[2] = torch.tensor([1.0, 1.0]); vp.below[1].weight[1] = torch.tensor([0.25, 0.0])
        vp.below[1].weight[2] = torch.tensor([0.0, 0.0])
    got = vp(cat)[0]
    none = ValuePairs([], rank=2)(cat[..., :0])  # a log without categorical columns: no effect, no error
    assert none.shape == (1, 3, 3) and none.dtype == torch.float32 and torch.count_nonzero(none) == 0
    # (0 above 1): column 0 <U[2], V[3]> = -1, column 1 <U[2], V[1]> = 0.25; (1 above 0): <U[3], V[2]> = 1, 0
    assert got[0, 1].item() == pytest.approx(-0.75) and got[1, 0].item() == pytest.approx(1.0)
    assert got[0, 0].item() == pytest.approx(0.5) and got[2].abs().sum() == 0 and got[:, 2].abs().sum() == 0
    # in the recursion: 3 candidates, no attribute shared, exam 1
    pr = torch.tensor([[[0.0, 0.2, -0.3], [0.1, 0.0, 0.4], [0.0, 0.0, 0.0]]])
    pa = torch.tensor([[[0.0, 0.7, 0.0], [0.0, 0.0, -0.5], [0.0, 0.0, 0.0]]])
    fx = ListEffects(logit=torch.tensor([[0.5, -0.2, 1.0]]), same=torch.zeros(1, 1, 3, 3, dtype=torch.bool),
                     redundancy=torch.zeros(1), adjacency=torch.zeros(1), click_adjacency=torch.zeros(1),
                     examination=torch.ones(3), cand_mask=torch.ones(1, 3, dtype=torch.bool),
                     pair_redundancy=pr, pair_adjacency=pa)
    q = [s(0.5), s(-0.2 + 0.2 + 0.7), s(1.0 - 0.3 + 0.4 - 0.5)]  # list 0, 1, 2
    assert expected_clicks(fx, torch.tensor([[0, 1, 2]]))[1][0].tolist() == pytest.approx(q, abs=1e-6)


def test_page_coverage_examination_by_hand():
    """e_p = e_{p-1} s(theta_p + w * cov): cov counts each value shown once, at its best item's s(a);
    w = 0 is the position-only examination."""
    same = [[[True, True, False], [True, True, False], [False, False, True]]]  # 0 and 1 share a value
    logit, theta = [0.5, 1.5, -1.0], [0.0, 2.0, 1.0]
    fx = effects(logit, same, [0.0], [0.0], [0.0], [1.0, s(2.0), s(2.0) * s(1.0)])
    plain = expected_clicks(fx, torch.tensor([[0, 1, 2]]))[1]
    fx.continuation, fx.coverage = torch.tensor(theta), torch.tensor([0.0])
    assert expected_clicks(fx, torch.tensor([[0, 1, 2]]))[1][0].tolist() == pytest.approx(plain[0].tolist(), abs=1e-6)
    fx.coverage = torch.tensor([0.7])
    cov1 = s(0.5)  # after item 0: its value, at s(a_0)
    cov2 = s(1.5)  # item 1 shares that value with a better item: the value counts at s(a_1), once
    e2 = s(2.0 + 0.7 * cov1)
    e3 = e2 * s(1.0 + 0.7 * cov2)
    at = expected_clicks(fx, torch.tensor([[0, 1, 2]]))[1][0]
    assert at.tolist() == pytest.approx([s(0.5), e2 * s(1.5), e3 * s(-1.0)], abs=1e-6)
    # 2 first: its own value, then 0 a new one -> coverage s(-1) + s(0.5) before the third slot
    at = expected_clicks(fx, torch.tensor([[2, 0, 1]]))[1][0]
    e2, e3 = s(2.0 + 0.7 * s(-1.0)), s(2.0 + 0.7 * s(-1.0)) * s(1.0 + 0.7 * (s(-1.0) + s(0.5)))
    assert at.tolist() == pytest.approx([s(-1.0), e2 * s(0.5), e3 * s(1.5)], abs=1e-6)


def test_intent_coverage_counts_each_value_once_at_its_intent_weight():
    """coverage_intents: pi(v) = softmax over the request's values of tau * (its best logit); a value
    adds pi(v) the first time it is shown, so coverage saturates at 1."""
    same = [[[True, True, False], [True, True, False], [False, False, True]]]  # values A = {0, 1}, B = {2}
    fx = effects([0.5, 1.5, -1.0], same, [0.0], [0.0], [0.0], [1.0, 1.0, 1.0])
    fx.continuation, fx.coverage, fx.intent_scale = torch.tensor([0.0, 2.0, 1.0]), torch.tensor([0.7]), torch.tensor([1.0])
    pa = math.exp(1.5) / (math.exp(1.5) + math.exp(-1.0))
    pb = 1 - pa
    at = expected_clicks(fx, torch.tensor([[0, 1, 2]]))[1][0]
    e2 = s(2.0 + 0.7 * pa)
    assert at.tolist() == pytest.approx([s(0.5), e2 * s(1.5), e2 * s(1.0 + 0.7 * pa) * s(-1.0)], abs=1e-6)
    at = expected_clicks(fx, torch.tensor([[2, 0, 1]]))[1][0]
    e2 = s(2.0 + 0.7 * pb)
    assert at.tolist() == pytest.approx([s(-1.0), e2 * s(0.5), e2 * s(1.0 + 0.7 * (pa + pb)) * s(1.5)], abs=1e-6)


def test_coverage_intents_without_page_coverage_is_a_config_error():
    from gref.config import ConfigError

    with pytest.raises(ConfigError, match="needs page_coverage"):
        BaselineConfig(kind="clickmodel", coverage_intents=True)


def test_intent_coverage_gradients_are_finite_with_padding():
    fx = random_effects(B=2, M=6, coverage=True, intents=True)
    fx.cand_mask[1, 4:] = False  # padding: equal to nothing, as same_attribute makes it
    fx.same[1, :, 4:, :] = False
    fx.same[1, :, :, 4:] = False
    fx.logit.requires_grad_(True)
    fx.intent_scale.requires_grad_(True)
    fx.coverage.requires_grad_(True)
    expected_clicks(fx, torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]]))[0].sum().backward()
    for t in (fx.logit, fx.intent_scale, fx.coverage):
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_same_attribute_ignores_padding_and_oov():
    cat = torch.tensor([[[2, 5], [2, 1], [0, 0]]])  # candidate 1's second value is OOV, candidate 2 is padding
    got = same_attribute(cat, [0, 1])[0]
    assert got[0].tolist() == [[True, True, False], [True, True, False], [False, False, False]]
    assert got[1].tolist() == [[True, False, False], [False, False, False], [False, False, False]]


def test_oracle_effects_equal_the_simulators_user_model():
    world = World.generate(WorldConfig(seed=3, **SMALL))
    rng = np.random.default_rng(0)
    users = rng.integers(0, 60, size=8)
    items = np.stack([rng.choice(300, size=12, replace=False) for _ in range(8)])
    lists = np.stack([rng.permutation(12)[:7] for _ in range(8)])
    lists[2, 5:] = -1  # a shorter list
    ids = np.where(lists >= 0, np.take_along_axis(items, np.clip(lists, 0, None), 1), -1)
    truth = expected_feedback(world, users, ids)["click"]
    got = expected_clicks(oracle_effects(world, users, items), torch.as_tensor(lists))[0].numpy()
    assert got == pytest.approx(truth, abs=1e-5)


def random_effects(B=3, M=6, C=2, seed=0, value_pairs=False, coverage=False, intents=False) -> ListEffects:
    g = torch.Generator().manual_seed(seed)
    values = torch.randint(2, 5, (B, M, C), generator=g)
    pairs = dict(pair_redundancy=0.5 * torch.randn(B, M, M, generator=g),
                 pair_adjacency=torch.randn(B, M, M, generator=g)) if value_pairs else {}
    if coverage:
        pairs.update(continuation=torch.tensor([0.0, 1.5, 1.0, 0.5, 0.5, 0.5]), coverage=torch.tensor([2.0, -1.0]))
    if intents:
        pairs.update(intent_scale=torch.tensor([1.5, 0.5]))
    return ListEffects(logit=torch.randn(B, M, generator=g), same=same_attribute(values, list(range(C))),
                       redundancy=torch.tensor([-0.8, 0.3]), adjacency=torch.tensor([0.4, -0.2]),
                       click_adjacency=torch.tensor([0.0, 2.0]), examination=torch.tensor([1.0, 0.9, 0.7, 0.5, 0.4, 0.3]),
                       cand_mask=torch.ones(B, M, dtype=torch.bool), **pairs)


PER_REQUEST = ("logit", "same", "cand_mask", "pair_redundancy", "pair_adjacency")


@pytest.mark.parametrize("value_pairs, coverage, intents", [(False, False, False), (True, False, False),
                                                            (False, True, False), (False, True, True)])
def test_beam_search_wide_enough_is_exhaustive_and_greedy_at_width_1(value_pairs, coverage, intents):
    fx = random_effects(value_pairs=value_pairs, coverage=coverage, intents=intents)
    n, M = 3, 6
    every = torch.tensor(list(itertools.permutations(range(M), n)))  # 120 lists
    for b in range(3):
        one = ListEffects(**{k: (v[b:b + 1] if k in PER_REQUEST and v is not None else v) for k, v in fx.__dict__.items()})
        values = expected_clicks(ListEffects(**{k: (v.expand(len(every), *v.shape[1:]) if k in PER_REQUEST and v is not None
                                                    else v) for k, v in one.__dict__.items()}), every)[0]
        best_list, best_value = beam_search(one, n, width=M * (M - 1))  # keeps every partial list
        assert best_value.item() == pytest.approx(values.max().item(), abs=1e-6)
        assert expected_clicks(one, best_list)[0].item() == pytest.approx(values.max().item(), abs=1e-6)
        greedy, greedy_value = beam_search(one, n, width=1)
        assert greedy_value.item() <= values.max().item() + 1e-6
        # greedy by hand: the best next item given the list so far
        chosen = []
        for _ in range(n):
            rest = [i for i in range(M) if i not in chosen]
            chosen.append(max(rest, key=lambda i: expected_clicks(one, torch.tensor([chosen + [i]]))[0].item()))
        assert greedy[0].tolist() == chosen


def test_pointwise_order_sorts_the_item_logits_and_pads():
    fx = random_effects(B=1, M=5)
    fx.cand_mask[0, 4] = False
    got = pointwise_order(fx, 6)[0].tolist()
    assert got[:4] == fx.logit[0, :4].argsort(descending=True).tolist() and got[4:] == [-1, -1]


def test_beam_search_on_requests_with_fewer_candidates_than_positions():
    fx = random_effects(B=2, M=6)
    fx.cand_mask[1, 3:] = False
    lists, _ = beam_search(fx, 5, width=4)
    assert (lists[1, 3:] == -1).all() and sorted(lists[1, :3].tolist()) == [0, 1, 2]
    assert len(set(lists[0].tolist())) == 5


def test_features_only_ceiling_reaches_the_oracle_when_features_are_exact():
    """On a world whose observable features are noiseless linear views of the hidden ones, the
    features-only estimate of the click logit is (almost) the hidden logit itself; with pure-noise
    features it is not."""
    from gref.data.batch import collate
    from gref.sim.logs import simulate_requests, to_log_table
    from gref.sim.reference import fit_features_only
    from helpers import sequences_of

    for noise, low, high in ((0.0, 0.97, 1.0), (50.0, -0.2, 0.5)):
        world = World.generate(WorldConfig(seed=5, feature_noise=noise, quality_noise=noise, **SMALL))
        batch = simulate_requests(world, 300, 0, np.random.default_rng(1))
        table, meta = sequences_of(to_log_table(world, batch))
        model = fit_features_only(world, table, meta, steps=180, batch_size=100)
        b = collate(table, meta["num_features"], len(meta["cat_sizes"]), meta["feedback_weights"])
        truth = oracle_effects(world, b.user_id.numpy(), b.item_id.numpy()).logit
        with torch.no_grad():
            est = model(b.num, b.cat, b.cand_mask)
        corr = np.corrcoef(est[b.cand_mask].numpy(), truth[b.cand_mask].numpy())[0, 1]
        assert low <= corr <= high, (noise, corr)


def test_reward_model_recovers_list_effects_from_clicks():
    """Clicks simulated from a known list click model (per-item appeal, fatigue on one column,
    a click-conditioned bonus on the other): the fitted ListClickModel finds their signs and sizes."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    B, M, N = 6000, 12, 6
    appeal = torch.randn(50) * 0.8 - 0.5
    item = torch.stack([torch.randperm(50, generator=g)[:M] for _ in range(B)])
    attrs = torch.stack([item % 4 + 2, item // 10 + 2], dim=-1)  # category-like and series-like columns
    exam = torch.tensor([1.0, 0.9, 0.8, 0.6, 0.5, 0.4])
    fx = ListEffects(logit=appeal[item], same=same_attribute(attrs, [0, 1]), redundancy=torch.tensor([-0.6, 0.0]),
                     adjacency=torch.zeros(2), click_adjacency=torch.tensor([0.0, 1.5]), examination=exam,
                     cand_mask=torch.ones(B, M, dtype=torch.bool))
    shown = torch.stack([torch.randperm(M, generator=g)[:N] for _ in range(B)])
    # marginal click draws per position are enough for the marginal likelihood the model fits
    p = expected_clicks(fx, shown)[1]
    click = (torch.rand(B, N, generator=g) < p).float()

    class Appeal(torch.nn.Module):  # one learned logit per item id, the id as the only numeric feature
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Embedding(50, 1)

        def forward(self, num, cat, cand_mask):
            return self.table(num[..., 0].long()).squeeze(-1)

    from gref.data.batch import Batch

    model = ListClickModel(BaselineConfig(kind="clickmodel", num_features=1, cat_sizes=[8, 8], max_length=N), Appeal())
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(150):
        batch = Batch(num=item[..., None].float(), cat=attrs, cand_mask=fx.cand_mask, exposure=shown,
                      lengths=torch.full((B,), N), relevance=click, click=click)
        loss = model(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model.redundancy[0].item() == pytest.approx(-0.6, abs=0.15)
    assert abs(model.redundancy[1].item()) < 0.15
    assert model.click_adjacency[1].item() > 0.7  # a click-conditioned bonus, partly absorbed by adjacency
    assert model.examination()[: N].tolist() == pytest.approx(exam.tolist(), abs=0.06)


def test_reward_model_recovers_a_page_coverage_effect_from_clicks():
    """Clicks simulated with examination that the page's coverage of one column raises: the fitted
    model's coverage weight finds it, and none on the other column."""
    from gref.data.batch import Batch

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    B, M, N, items = 3000, 10, 6, 40
    appeal = torch.randn(items, generator=g) * 0.8 - 0.5
    item = torch.stack([torch.randperm(items, generator=g)[:M] for _ in range(B)])
    attrs = torch.stack([item % 5 + 2, item // 8 + 2], dim=-1)
    theta = torch.tensor([0.0, 0.5, 0.5, 0.0, 0.0, -0.5])
    fx = ListEffects(logit=appeal[item], same=same_attribute(attrs, [0, 1]), redundancy=torch.zeros(2),
                     adjacency=torch.zeros(2), click_adjacency=torch.zeros(2), examination=torch.ones(N),
                     cand_mask=torch.ones(B, M, dtype=torch.bool), continuation=theta, coverage=torch.tensor([1.5, 0.0]))
    shown = torch.stack([torch.randperm(M, generator=g)[:N] for _ in range(B)])
    click = (torch.rand(B, N, generator=g) < expected_clicks(fx, shown)[1]).float()

    class Appeal(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Embedding(items, 1)

        def forward(self, num, cat, cand_mask):
            return self.table(num[..., 0].long()).squeeze(-1)

    model = ListClickModel(BaselineConfig(kind="clickmodel", num_features=1, cat_sizes=[8, 8], max_length=N,
                                          page_coverage=True), Appeal())
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    batch = Batch(num=item[..., None].float(), cat=attrs, cand_mask=fx.cand_mask, exposure=shown,
                  lengths=torch.full((B,), N), relevance=click, click=click)
    for _ in range(150):
        loss = model(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    w = (COVERAGE_SCALE * model.page_coverage).tolist()
    assert w[0] == pytest.approx(1.5, abs=0.5)
    assert abs(w[1]) < 0.5


def test_coverage_centre_is_the_logged_lists_mean_coverage():
    """The first training batch sets the centre after p items to its lists' mean coverage there
    (after one item: the first item's s(a) in every column); evaluation leaves it alone."""
    from gref.data.batch import Batch

    class Appeal(torch.nn.Module):
        def forward(self, num, cat, cand_mask):
            return num[..., 0]

    model = ListClickModel(BaselineConfig(kind="clickmodel", num_features=1, cat_sizes=[6, 6], max_length=4,
                                          page_coverage=True), Appeal())
    num = torch.tensor([[[0.0], [1.0], [2.0]], [[-1.0], [0.5], [0.0]]])
    cat = torch.tensor([[[2, 2], [2, 3], [4, 3]], [[2, 2], [3, 2], [4, 4]]])
    shown = torch.tensor([[0, 1, 2], [1, 0, 2]])
    batch = Batch(num=num, cat=cat, cand_mask=torch.ones(2, 3, dtype=torch.bool), exposure=shown,
                  lengths=torch.tensor([3, 2]), relevance=torch.zeros(2, 3), click=torch.zeros(2, 3))
    model.eval()(batch)
    assert model.coverage_center.abs().sum() == 0
    model.train()(batch)
    first = (s(0.0) + s(0.5)) / 2
    assert model.coverage_center[1].tolist() == pytest.approx([first, first], abs=1e-6)
    # after two items: request 0 repeats column 0's value (with a better item) and shows a new value of
    # column 1; request 1's list ends there (its third slot is not read), so only request 0 counts
    assert model.coverage_center[2].tolist() == pytest.approx([s(1.0), s(0.0) + s(1.0)], abs=1e-6)
