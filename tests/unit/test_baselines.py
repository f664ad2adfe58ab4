"""Baseline rerankers without Ray: the ranker interface of every kind, and each model's own math
(pointwise loss, DCN cross layer, Seq2Slate pointer loss, NAR4Rec unlikelihood and contrastive
decoding, the generator-evaluator's pick) against hand computations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from gref.baselines import KINDS, BaselineConfig, build_baseline
from gref.baselines.common import exposed_click_bce, top_n
from gref.baselines.nar4rec import contrastive_decode, unlikelihood_loss
from gref.baselines.pointwise import CrossLayer
from gref.config import ConfigError, load_config
from gref.data.batch import Batch
from gref.evaluation import distinct_fraction
from gref.model.decoding import list_scores
from gref.reranker_io import load_reranker, save_reranker

F, CATS = 3, [5, 7]


def tiny(kind: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = BaselineConfig(kind=kind, num_features=F, cat_sizes=CATS, max_candidates=16, max_length=8,
                         d_model=16, n_heads=2, layers=1, hidden=[16], emb_dim=4, num_lists=4, **kw)
    return build_baseline(cfg)


def batch(seed: int = 0) -> Batch:
    """4 requests: m = 6, 6, 4, 3 candidates; n = 4, 3, 4, 2 exposed."""
    g = torch.Generator().manual_seed(seed)
    m, lengths = torch.tensor([6, 6, 4, 3]), torch.tensor([4, 3, 4, 2])
    M, N = 6, 4
    mask = torch.arange(M)[None] < m[:, None]
    exposure = torch.stack([torch.randperm(int(k), generator=g)[:N] if k >= N else
                            torch.cat([torch.randperm(int(k), generator=g), torch.zeros(N - int(k), dtype=torch.long)])
                            for k in m])
    valid = torch.arange(N)[None] < lengths[:, None]
    click = (torch.rand(4, N, generator=g) < 0.5).float() * valid
    cat = torch.stack([torch.randint(1, s, (4, M), generator=g) for s in CATS], dim=-1) * mask[..., None]
    return Batch(num=torch.randn(4, M, F, generator=g) * mask[..., None], cat=cat, cand_mask=mask,
                 exposure=exposure, lengths=lengths, relevance=click.clone(), click=click)


@pytest.mark.parametrize("kind", KINDS)
def test_every_baseline_trains_ranks_and_round_trips(kind, tmp_path):
    model, b = tiny(kind), batch()
    out = model(b)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters()), "a parameter gets no gradient"
    model.eval()
    torch.manual_seed(1)
    placed = model.rerank(b.num, b.cat, b.cand_mask, 4)
    m = b.cand_mask.sum(1)
    for row, k in zip(placed.tolist(), m.tolist()):
        real = [i for i in row if i >= 0]
        assert len(real) == min(4, k) and len(set(real)) == len(real) and all(i < k for i in real)
        assert row[len(real):] == [-1] * (4 - len(real))  # -1 only past the candidates
    scores = model.item_scores(b.num, b.cat, b.cand_mask, placed)
    for r in range(4):  # the list's order is the score order, placed items above the rest
        s = scores[r]
        real = [i for i in placed[r].tolist() if i >= 0]
        assert all(s[a] > s[c] for a, c in itertools.pairwise(real))
        rest = [i for i in range(int(m[r])) if i not in real]
        assert all(s[real[-1]] > s[i] for i in rest)
        assert torch.isinf(s[int(m[r]):]).all()
    save_reranker(tmp_path / kind, model)
    again = load_reranker(tmp_path / kind)
    torch.manual_seed(1)
    assert torch.equal(again.rerank(b.num, b.cat, b.cand_mask, 4), placed)


@pytest.mark.parametrize("kind", ["dnn", "dcn", "prm", "seq2slate", "nar4rec"])
def test_padding_candidates_changes_nothing(kind):
    model, b = tiny(kind).eval(), batch()
    pad = 3
    num = torch.cat([b.num, torch.randn(4, pad, F)], dim=1)
    cat = torch.cat([b.cat, torch.ones(4, pad, len(CATS), dtype=torch.long)], dim=1)
    mask = torch.cat([b.cand_mask, torch.zeros(4, pad, dtype=torch.bool)], dim=1)
    assert torch.equal(model.rerank(b.num, b.cat, b.cand_mask, 3), model.rerank(num, cat, mask, 3))


def test_unknown_kind_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match="unknown baseline kind 'nar5rec'"):
        BaselineConfig(kind="nar5rec")
    from gref.train.config import BaselineTrainConfig

    with pytest.raises(ConfigError, match="nar5rec"):
        load_config(BaselineTrainConfig, None, ["model.kind=nar5rec"])


def test_exposed_click_bce_by_hand():
    b = batch()
    logits = torch.randn(4, 6)
    total, count = 0.0, 0
    for r in range(4):
        for t in range(int(b.lengths[r])):
            x, y = float(logits[r, b.exposure[r, t]]), float(b.click[r, t])
            total += -(y * math.log(1 / (1 + math.exp(-x))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-x))))
            count += 1
    assert float(exposed_click_bce(logits, b)) == pytest.approx(total / count, rel=1e-5)


def test_dcn_cross_layer_is_x0_times_wx_plus_b_plus_x():
    layer = CrossLayer(2)
    with torch.no_grad():
        layer.linear.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, -1.0]]))
        layer.linear.bias.copy_(torch.tensor([0.5, 1.0]))
    x0, x = torch.tensor([2.0, 3.0]), torch.tensor([1.0, 1.0])
    # W x + b = [3.5, 0]; x0 * that = [7, 0]; + x = [8, 1]
    assert layer(x0, x).tolist() == [8.0, 1.0]


def test_top_n_and_list_scores_by_hand():
    scores = torch.tensor([[0.1, 0.9, 0.5, -1.0], [2.0, 1.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    placed = top_n(scores, mask, 3)
    assert placed.tolist() == [[1, 2, 0], [0, 1, -1]]
    s = list_scores(placed, torch.zeros(2, 4), mask)
    # rank bonus n - r (n = 3) + sigmoid(0) = 0.5; unplaced items keep 0.5; padding -inf
    assert s[0].tolist() == [1.5, 3.5, 2.5, 0.5]
    assert s[1, :2].tolist() == [3.5, 2.5] and torch.isinf(s[1, 2:]).all()  # -1 slots leave item 0's bonus alone


def test_seq2slate_pointer_loss_by_hand():
    """With v = 0 the pointer is uniform over the remaining candidates, so a step's loss is
    log(#remaining) while clicked items remain, and 0 after."""
    model = tiny("seq2slate")
    torch.nn.init.zeros_(model.v.weight)
    # one request: 4 candidates, 3 exposed, clicks on the 2nd and 3rd shown
    b = Batch(num=torch.zeros(1, 4, F), cat=torch.ones(1, 4, len(CATS), dtype=torch.long),
              cand_mask=torch.ones(1, 4, dtype=torch.bool), exposure=torch.tensor([[2, 0, 3]]),
              lengths=torch.tensor([3]), relevance=torch.tensor([[0.0, 1.0, 1.0]]),
              click=torch.tensor([[0.0, 1.0, 1.0]]))
    # step 0: targets {0, 3} among 4 -> log 4; step 1: target {3} among 3 -> log 3; step 2: nothing left
    with torch.no_grad():
        loss = float(model(b)["loss"])
    assert loss == pytest.approx(math.log(4) + math.log(3), rel=1e-6)


def test_unlikelihood_loss_by_hand():
    # two lists of 2 positions over 2 candidates; P(i at j) from these logits
    logits = torch.log(torch.tensor([[[0.8, 0.2], [0.3, 0.7]],
                                     [[0.6, 0.4], [0.5, 0.5]]]))
    seq = torch.tensor([[0, 1], [1, 0]])
    rel = torch.tensor([[1.0, 1.0], [0.0, 0.0]])  # list 0 is the positive (above the median)
    out = unlikelihood_loss(logits, seq, torch.tensor([2, 2]), rel, 0.5)
    pos = -(math.log(0.8) + math.log(0.7))
    neg = -(math.log(1 - 0.4) + math.log(1 - 0.5))
    assert float(out["loss"]) == pytest.approx((pos + neg) / 2, rel=1e-6)
    assert float(out["positive_fraction"]) == 0.5


def test_contrastive_decoding_avoids_a_near_duplicate():
    # candidates 0 and 1 have the same encoding; 2 is orthogonal
    c = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    probs = torch.tensor([[[0.5, 0.3, 0.2], [0.1, 0.5, 0.4]]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    assert contrastive_decode(probs, c, mask, alpha=0.0, topk=3).tolist() == [[0, 1]]
    # alpha 0.3: position 1 scores 0.7 * 0.5 - 0.3 * 1 = 0.05 for item 1, 0.7 * 0.4 - 0 = 0.28 for item 2
    assert contrastive_decode(probs, c, mask, alpha=0.3, topk=3).tolist() == [[0, 2]]
    # ... unless item 2 is outside the top-1 most probable at that position
    assert contrastive_decode(probs, c, mask, alpha=0.3, topk=1).tolist() == [[0, 1]]


def test_generator_evaluator_shows_the_proposal_the_evaluator_values_most():
    model, b = tiny("gen_eval").eval(), batch()
    torch.manual_seed(5)
    lists = model.propose(b.num, b.cat, b.cand_mask, 3)
    assert lists.shape == (4, 4, 3)
    assert torch.equal(lists[:, 0], top_n(model.generator_logits(b.num, b.cat, b.cand_mask), b.cand_mask, 3))
    value = (torch.sigmoid(model.evaluator_logits(b.num, b.cat, lists)) * (lists >= 0)).sum(-1)
    torch.manual_seed(5)
    chosen = model.rerank(b.num, b.cat, b.cand_mask, 3)
    assert torch.equal(chosen, lists[torch.arange(4), value.argmax(1)])


def test_evaluator_is_causal():
    """The click logit of a position must not depend on the items below it."""
    model, b = tiny("gen_eval").eval(), batch()
    a = model.evaluator_logits(b.num, b.cat, torch.tensor([[[0, 1, 2]]] * 4))
    c = model.evaluator_logits(b.num, b.cat, torch.tensor([[[0, 1, 0]]] * 4))
    assert torch.allclose(a[..., :2], c[..., :2], atol=1e-6) and not torch.allclose(a[..., 2], c[..., 2])


def test_distinct_fraction_by_hand():
    cats = np.array([[3, 3, 4, 5], [1, 1, 1, 2]])
    placed = np.array([[0, 1, 2], [0, 3, -1]])
    # list 0: categories 3, 3, 4 -> 2 / 3; list 1: 1, 2 (the -1 slot is no item) -> 2 / 2
    assert distinct_fraction(cats, placed, np.array([3, 3])).tolist() == pytest.approx([2 / 3, 1.0])


def test_nar4rec_scores_candidates_from_the_pass_that_made_the_list():
    # review defect: scores came from a 1-position pass, the list from the n-position pass
    model = tiny("nar4rec").eval()
    b = batch(3)
    placed = model.rerank(b.num, b.cat, b.cand_mask, 4)
    first = model.matrix(b.num, b.cat, b.cand_mask, 4)[0][:, 0]
    expect = list_scores(placed, first.masked_fill(~b.cand_mask, 0.0), b.cand_mask)
    assert torch.allclose(model.item_scores(b.num, b.cat, b.cand_mask, placed), expect)
    # the list's first item is position 1's most probable candidate of that pass (no penalty at t = 0)
    assert torch.equal(placed[:, 0], first.argmax(1))
