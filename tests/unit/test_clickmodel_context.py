"""The neural list context of the list click model (gref.clickmodel.context), without Ray: it starts
at the structured model, its search is exact where the beam covers every list, its bootstrap
weights are fixed per request, and it learns an effect the structured form cannot express."""

import itertools
import math

import numpy as np
import pytest
import torch

from gref.baselines.clickmodel import ListClickModel
from gref.baselines.config import BaselineConfig
from gref.clickmodel.context import ListContext, bootstrap_weights
from gref.data.batch import Batch


class Appeal(torch.nn.Module):
    """a(i) = the first numeric feature (no anchor, no DCN): appeal known exactly."""

    def forward(self, num, cat, cand_mask):
        return num[..., 0].masked_fill(~cand_mask, 0.0)


def model(members: int, pessimism: float = 1.0, seed: int = 0, pairs: bool = False,
          prefix: bool = False, page_coverage: bool = False) -> ListClickModel:
    torch.manual_seed(seed)
    cfg = BaselineConfig(kind="clickmodel", num_features=2, cat_sizes=[6], max_length=8, page_coverage=page_coverage,
                         context_members=members, pessimism=pessimism, context_pairs=pairs, context_prefix=prefix)
    return ListClickModel(cfg, Appeal())


def inputs(B: int = 3, M: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    num = torch.randn(B, M, 2, generator=g)
    cat = torch.randint(2, 6, (B, M, 1), generator=g)
    return num, cat, torch.ones(B, M, dtype=torch.bool)


PARTS = [(False, False), (True, False), (True, True)]  # (pairs, prefix)


@pytest.mark.parametrize("pairs,prefix", PARTS)
def test_context_starts_at_the_structured_model(pairs, prefix):
    num, cat, mask = inputs()
    lists = torch.tensor([[0, 1, 2], [3, 2, -1], [1, 0, 3]])
    with_context = model(3, pairs=pairs, prefix=prefix).eval()
    plain = model(0).eval()
    plain.load_state_dict({k: v for k, v in with_context.state_dict().items() if not k.startswith("context")})
    a = with_context.marginals(num, cat, mask, lists)
    b = plain.marginals(num, cat, mask, lists)
    assert a.shape == (3, 3, 3) and b.shape == (1, 3, 3)
    assert torch.allclose(a, b.expand_as(a), atol=1e-5)
    assert (a[:, 1, 2] == 0).all()  # no item, no click


def perturbed(members: int, pessimism: float, pairs: bool = False, prefix: bool = False,
              page_coverage: bool = False) -> ListClickModel:
    m = model(members, pessimism, pairs=pairs, prefix=prefix, page_coverage=page_coverage).eval()
    if page_coverage:  # examination that the page moves
        torch.nn.init.constant_(m.page_coverage, -3.0)
    for net in m.context.nets:  # a context that matters: random output layers (pairwise queries, prefix outputs)
        torch.nn.init.normal_(net.out[-1].weight, std=1.0)
        if pairs:
            torch.nn.init.normal_(net.pair_q.weight, std=1.0)
            torch.nn.init.normal_(net.pair_gate, std=1.0)
        if prefix:
            torch.nn.init.normal_(net.prefix["out"].weight, std=1.0)
    return m


def test_pairwise_terms_add_one_gated_dot_product_per_item_above():
    """r with pairs = r without + sum_i g_i <P_q c + b_q, P_k (a_i + dist_i) + b_k> / sqrt(d) over
    the items above that are there (hand-computed for 2 of a window of 3)."""
    net = perturbed(1, 0.0, pairs=True).context.nets[0]
    d = net.pos.embedding_dim
    g = torch.Generator().manual_seed(1)
    cand, mean_above, above = torch.randn(d, generator=g), torch.randn(d, generator=g), torch.randn(3, d, generator=g)
    mask = torch.tensor([True, True, False])
    p = torch.tensor(3)
    with_pairs = net.residual(cand, p, mean_above, above, mask)
    q = net.pair_q(cand)
    keys = [net.pair_k(above[i] + net.pair_dist.weight[i + 1]) for i in range(2)]
    expected = sum(net.pair_gate[i] * (q @ keys[i]) for i in range(2)) / d ** 0.5
    saved = net.pair_q
    net.pair_q = None
    without = net.residual(cand, p, mean_above, above, mask)
    net.pair_q = saved
    assert torch.allclose(with_pairs - without, expected, atol=1e-5)


def test_an_item_in_context_adds_its_gated_sum_of_the_items_above():
    """in_context = t + O(sum_k mask_k sigmoid(<Q t, K (a_k + dist_k)> / sqrt(d)) V a_k), by hand."""
    net = perturbed(1, 0.0, prefix=True).context.nets[0]
    d = net.pos.embedding_dim
    g = torch.Generator().manual_seed(2)
    tok, above = torch.randn(d, generator=g), torch.randn(3, d, generator=g)
    mask = torch.tensor([True, False, True])
    P = net.prefix
    gates = [torch.sigmoid(P["q"](tok) @ P["k"](above[k] + net.prefix_dist.weight[k + 1]) / d ** 0.5) for k in (0, 2)]
    expected = tok + P["out"](gates[0] * P["v"](above[0]) + gates[1] * P["v"](above[2]))
    assert torch.allclose(net.in_context(tok, above, mask), expected, atol=1e-5)
    assert not torch.allclose(expected, tok)  # the items above changed it


@pytest.mark.parametrize("pairs,prefix,page_coverage", [*(p + (False,) for p in PARTS), (False, False, True)])
def test_search_is_exhaustive_when_the_beam_holds_every_list(pairs, prefix, page_coverage):
    num, cat, mask = inputs(B=2, M=4)
    for pessimism in (0.0, 1.5):
        m = perturbed(3, pessimism, pairs, prefix, page_coverage)
        every = torch.tensor(list(itertools.permutations(range(4), 3)))  # 24 lists
        values = m.list_values(num, cat, mask, every[None].expand(2, -1, -1))  # [2, 24]
        found = m.search(num, cat, mask, 3, width=24)
        got = m.list_values(num, cat, mask, found[:, None])[:, 0]
        assert torch.allclose(got, values.max(1).values, atol=1e-5), pessimism


def test_pessimistic_value_is_mean_minus_std():
    m = perturbed(4, pessimism=2.0)
    num, cat, mask = inputs()
    lists = torch.tensor([[0, 1, 2], [3, 2, 1], [1, 0, 3]])
    per = m.marginals(num, cat, mask, lists).sum(-1)  # [K, B]
    got = m.list_values(num, cat, mask, lists[:, None])[:, 0]
    assert torch.allclose(got, per.mean(0) - 2.0 * per.std(0), atol=1e-5)


@pytest.mark.parametrize("pairs,prefix", PARTS)
def test_search_respects_short_candidate_sets(pairs, prefix):
    m = perturbed(2, 1.0, pairs, prefix)
    num, cat, mask = inputs(B=2, M=4)
    mask[0, 2:] = False  # the first request has 2 candidates
    found = m.search(num, cat, mask, 3, width=4)
    assert found[0, 2] == -1 and set(found[0, :2].tolist()) == {0, 1}
    assert len(set(found[1].tolist())) == 3 and (found[1] >= 0).all()


def test_bootstrap_weights_are_fixed_per_request_and_poisson():
    ids = list(range(4000))
    w = bootstrap_weights(ids, 3, len(ids), "cpu")
    again = bootstrap_weights(list(reversed(ids)), 3, len(ids), "cpu").flip(1)
    assert torch.equal(w, again)  # a function of the id, not of the batch position
    assert abs(float(w.mean()) - 1.0) < 0.05 and abs(float(w.var()) - 1.0) < 0.1  # Poisson(1)
    assert abs(float((w == 0).float().mean()) - np.exp(-1)) < 0.03
    assert not torch.equal(w[0], w[1])  # members draw differently
    assert torch.equal(bootstrap_weights(None, 2, 5, "cpu"), torch.ones(2, 5))


def test_context_learns_an_effect_between_different_categories():
    """Clicks follow the structured model except that category 3 right after category 2 gets +2
    logits (a complement the attribute-equality form cannot express): the context's fit finds it."""
    torch.manual_seed(0)
    B, M, N = 2048, 6, 4
    num = torch.randn(B, M, 2) * 0.5
    cat = torch.randint(2, 6, (B, M, 1))
    lists = torch.stack([torch.randperm(M)[:N] for _ in range(B)])
    cats = torch.gather(cat[..., 0], 1, lists)
    logit = torch.gather(num[..., 0], 1, lists) - 1.0
    logit[:, 1:] += 2.0 * ((cats[:, :-1] == 2) & (cats[:, 1:] == 3))
    click = (torch.rand(B, N) < torch.sigmoid(logit)).float()
    batch = Batch(num=num, cat=cat, cand_mask=torch.ones(B, M, dtype=torch.bool), exposure=lists,
                  lengths=torch.full((B,), N), relevance=click, click=click, request_id=list(range(B)))

    def fit(members: int) -> float:
        m = model(members, 0.0)
        with torch.no_grad():
            m.continuation.fill_(20.0)  # examination 1 everywhere: the effect is all in the clicks
        m.continuation.requires_grad_(False)
        opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
        for _ in range(150):
            loss = m(batch)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        m.eval()
        return float(m(batch)["click_nll"])

    assert fit(2) < fit(0) - 0.01


def test_list_context_without_members_is_one_value():
    ctx = ListContext(2, [6], members=1, pessimism=5.0)
    v = torch.tensor([[1.0, 2.0]])
    assert torch.equal(ctx.pessimistic(v), v[0])


def test_request_nll_sums_each_requests_slots_and_averages_the_members():
    """The unit of the paired comparison of two rewards (gref.recipe.preferred_reward): per request,
    -sum over its exposed slots of log P(its click), each member's P, then their mean; a padded
    slot adds nothing. Checked against the members' marginals by hand."""
    m = perturbed(3, 1.0).eval()
    num, cat, mask = inputs(B=2, M=4)
    lists = torch.tensor([[0, 1, 2], [3, 2, 0]])
    click = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    batch = Batch(num=num, cat=cat, cand_mask=mask, exposure=lists, lengths=torch.tensor([3, 2]),
                  relevance=click, click=click, request_id=[0, 1])
    p = m.marginals(num, cat, mask, torch.tensor([[0, 1, 2], [3, 2, -1]]))  # [K, B, 3]
    expected = []
    for b, shown in enumerate([3, 2]):
        per_member = [-sum(math.log(p[k, b, j]) if click[b, j] else math.log(1 - p[k, b, j]) for j in range(shown))
                      for k in range(3)]
        expected.append(sum(per_member) / 3)
    assert m.request_nll(batch).tolist() == pytest.approx(expected, rel=1e-5)
