"""Off-policy estimates from explored traffic (gref.offpolicy), without Ray: the logging policy's
per-slot propensities, the prefix weights, IPS / SNIPS / DR by hand, and IPS and DR unbiased by
exact enumeration of every list a logging policy can sample."""

from __future__ import annotations

import itertools
import math

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from helpers import sequences_of

from gref.model import GenReranker, ModelConfig, decode
from gref.offpolicy import (
    estimates,
    item_position_log_marginals,
    item_position_marginals,
    item_position_weights,
    logging_propensities,
    per_request_values,
    prefix_weights,
    snips_influence,
)
from gref.stats import independent_ratio_lift


def tiny(k=2) -> GenReranker:
    torch.manual_seed(0)
    return GenReranker(ModelConfig(num_features=3, cat_sizes=[5], d_model=16, n_heads=2, enc_layers=1,
                                   dec_layers=1, omtp_heads=k, list_bias=True)).eval()


def features(B, M, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, M, 3, generator=g), torch.randint(2, 5, (B, M, 1), generator=g)


def test_logging_propensities_sum_to_the_sampled_lists_log_probability():
    """Per slot, teacher-forced, at T = 1.5 with k = 2 heads: their sum is decode's log P(list),
    also for a request with fewer candidates than slots (its missing slot holds -1 and adds 0)."""
    model = tiny()
    num, cat = features(5, 6)
    mask = torch.ones(5, 6, dtype=torch.bool)
    mask[0, 2:] = False  # two candidates, three slots
    placed, log_p = decode(model, num, cat, mask, 3, temperature=1.5, generator=torch.Generator().manual_seed(3),
                           return_log_prob=True)
    slots = logging_propensities(model, num, cat, mask, placed, temperature=1.5)
    assert placed[0, 2] == -1 and slots[0, 2] == 0.0
    assert slots.sum(1).tolist() == pytest.approx(log_p.tolist(), abs=1e-5)


def test_logging_propensities_are_a_distribution_over_every_list():
    """Summed over every ordered list of 3 of 4 candidates, exp(sum of the per-slot log-propensities)
    is 1, and each slot's conditional sums to 1 given its prefix -- the pass structure of k = 2
    heads (slot 1 placed by head 1 of the first pass, slot 2 by head 0 of the second) included."""
    model = tiny()
    num, cat = features(1, 4)
    mask = torch.ones(1, 4, dtype=torch.bool)
    lists = torch.tensor(list(itertools.permutations(range(4), 3)))  # [24, 3]
    B = len(lists)
    slots = logging_propensities(model, num.expand(B, -1, -1), cat.expand(B, -1, -1), mask.expand(B, -1), lists,
                                 temperature=0.7)
    assert float(slots.sum(1).exp().sum()) == pytest.approx(1.0, abs=1e-5)
    first = {int(a): float(s) for a, s in zip(lists[:, 0], slots[:, 0].exp())}
    assert sum(first.values()) == pytest.approx(1.0, abs=1e-6)


def test_prefix_weights_by_hand():
    logged = np.array([[0, 1, 2], [0, 1, 2], [3, 1, -1]])
    target = np.array([[0, 1, 3], [1, 0, 2], [3, 1, 0]])
    log_p = np.log(np.array([[0.5, 0.5, 0.25], [0.5, 0.5, 0.25], [0.2, 0.5, 1.0]]))
    w = prefix_weights(logged, target, log_p)
    np.testing.assert_allclose(w, [[2.0, 4.0, 0.0], [0.0, 0.0, 0.0], [5.0, 10.0, 0.0]])


def test_ips_dr_and_snips_by_hand():
    clicks = np.array([[1.0, 0.0], [0.0, 1.0]])
    w = np.array([[2.0, 4.0], [0.0, 0.0]])
    q_logged = np.array([[0.5, 0.25], [0.4, 0.3]])
    q_target = np.array([[0.5, 0.25], [0.6, 0.1]])
    v = per_request_values(clicks, w, q_logged, q_target)
    assert v["ips"].tolist() == [2.0, 0.0]
    # request 0: 2 (1 - 0.5) + 4 (0 - 0.25) + 1 * 0.5 + 2 * 0.25 = 1.0; request 1: only slot 1's direct term 0.6
    assert v["dr"].tolist() == pytest.approx([1.0, 0.6])
    value, influence = snips_influence(clicks, w)
    # slot 0: (2 * 1 + 0) / (2 + 0) = 1; slot 1: (4 * 0 + 0) / 4 = 0
    assert value == pytest.approx(1.0)
    assert influence.tolist() == pytest.approx([0.0, 0.0])
    # SNDR (item form): the direct part's mean (0.75 + 0.7) / 2 = 0.725 plus each slot's correction
    # self-normalised: slot 0 (2 * 0.5) / 2 = 0.5, slot 1 (4 * -0.25) / 4 = -0.25 -> 0.975; each
    # request's influence: its direct part minus the mean (+0.025, -0.025) + the corrections'
    # (request 0: 2 (0.5 - 0.5) / 1 + 4 (-0.25 + 0.25) / 2 = 0; request 1: weight 0)
    out = estimates(clicks, w, np.array([1.0, 2.0, 1.5]), q_logged, q_target, form="item")
    assert out["sndr"]["value"] == pytest.approx(0.975)
    half = 1.959964 * np.std([0.025, -0.025], ddof=1) / np.sqrt(2)
    assert (out["sndr"]["lo"], out["sndr"]["hi"]) == pytest.approx((0.975 - half, 0.975 + half), rel=1e-5)
    assert "sndr" not in estimates(clicks, w, np.array([1.0, 2.0]), q_logged, q_target, form="cascade")


def cascade_world():
    """Three candidates, lists of two. A logging policy (Plackett-Luce with fixed weights) and a
    cascade click model whose slot-2 click depends on slot 1's item (category fatigue: 0 and 1
    share a category) -- prefix effects only, which the prefix estimates allow."""
    weights = np.array([0.5, 0.3, 0.2])
    appeal = np.array([0.6, 0.5, 0.3])
    exam = np.array([1.0, 0.7])

    def probability(lst):
        p, left = 1.0, weights.copy()
        for a in lst:
            p *= left[a] / left.sum()
            left[a] = 0.0
        return p

    def click_probs(lst):
        tired = 0.5 if {lst[0], lst[1]} == {0, 1} else 1.0
        return np.array([exam[0] * appeal[lst[0]], exam[1] * appeal[lst[1]] * tired])

    return probability, click_probs


def test_ips_and_dr_are_unbiased_under_prefix_effects():
    """E[estimate] over every list the logging policy can sample (clicks at their expectation,
    which the estimates are linear in) equals the target list's expected clicks -- for DR with a
    click model that is wrong (a pure position model)."""
    probability, click_probs = cascade_world()
    target = np.array([[1, 0]])
    truth = click_probs([1, 0]).sum()
    q_wrong = lambda lst: np.array([[0.4, 0.2]])  # noqa: E731 (ignores the items)
    ips = dr = snips_mass = 0.0
    for lst in itertools.permutations(range(3), 2):
        p = probability(lst)
        logged = np.array([lst])
        first = probability(lst[:1])
        log_p = np.log(np.array([[first, p / first]]))
        w = prefix_weights(logged, target, log_p)
        v = per_request_values(click_probs(lst)[None], w, q_wrong(lst), q_wrong(target[0]))
        ips += p * v["ips"][0]
        dr += p * v["dr"][0]
        snips_mass += p * w[0, 0]
    assert ips == pytest.approx(truth) and dr == pytest.approx(truth)
    assert snips_mass == pytest.approx(1.0)  # E[w_k] = 1: SNIPS's denominator is consistent


def test_estimates_cover_the_truth_in_a_simulation():
    """Many explored requests of the cascade world (sampled lists and clicks): every estimator's
    95 % interval of the target's clicks contains the truth, and the lift over production's
    on-policy clicks is near the true lift."""
    probability, click_probs = cascade_world()
    rng = np.random.default_rng(0)
    lists = list(itertools.permutations(range(3), 2))
    probs = np.array([probability(lst) for lst in lists])
    draws = rng.choice(len(lists), size=20000, p=probs)
    logged = np.array([lists[i] for i in draws])
    first = np.array([probability(lst[:1]) for lst in logged])
    log_p = np.log(np.stack([first, probs[draws] / first], 1))
    clicks = (rng.random(logged.shape) < np.array([click_probs(lst) for lst in logged])).astype(float)
    target = np.tile([1, 0], (len(logged), 1))
    w = prefix_weights(logged, target, log_p)
    q = np.tile([0.4, 0.2], (len(logged), 1))
    production = (rng.random((20000, 2)) < click_probs([0, 1])).sum(1).astype(float)
    truth, base = click_probs([1, 0]).sum(), click_probs([0, 1]).sum()
    out = estimates(clicks, w, production, q, q)
    assert set(out) == {"ips", "snips", "dr"}
    for est in out.values():
        assert est["lo"] < truth < est["hi"]
        assert est["lift_lo"] < truth / base - 1.0 < est["lift_hi"]


def test_independent_ratio_lift_by_hand():
    exact = independent_ratio_lift(1.1, 0.0, np.array([1.0, 1.0, 1.0]))
    assert exact == pytest.approx({"lift": 0.1, "low": 0.1, "high": 0.1})
    # base [0, 2]: mean 1, sample variance 2, variance of the mean 1; se 0.5 -> sqrt(0.25 + 1)
    s = independent_ratio_lift(1.0, 0.5, np.array([0.0, 2.0]))
    half = 1.959964 * math.sqrt(0.25 + 1.0)
    assert s["lift"] == pytest.approx(0.0) and s["high"] == pytest.approx(half, rel=1e-5)


def test_item_position_marginals_match_the_enumerated_policy():
    """Rao-Blackwellised: slot 0's marginal is its softmax exactly (whatever was sampled), every
    live slot's marginals sum to 1, and the later slots' approach the exact marginals enumerated
    over every list (k = 2 heads, T = 0.8); a padded candidate and a slot past m get 0."""
    model = tiny()
    num, cat = features(1, 4)
    mask = torch.ones(1, 4, dtype=torch.bool)
    est = item_position_marginals(model, num, cat, mask, 3, 0.8, 2000, torch.Generator().manual_seed(0))[0]
    lists = torch.tensor(list(itertools.permutations(range(4), 3)))
    prob = logging_propensities(model, num.expand(24, -1, -1), cat.expand(24, -1, -1), mask.expand(24, -1), lists,
                                0.8).sum(1).exp()
    exact = torch.zeros(3, 4)
    for lst, p in zip(lists, prob):
        exact[torch.arange(3), lst] += p
    assert est[0].tolist() == pytest.approx(exact[0].tolist(), abs=1e-5)
    assert est.sum(1).tolist() == pytest.approx([1.0] * 3, abs=1e-5)
    np.testing.assert_allclose(est, exact, atol=0.02)
    mask2 = torch.ones(1, 4, dtype=torch.bool)
    mask2[0, 3] = False
    short = item_position_marginals(model, num, cat, mask2, 4, 0.8, 10, torch.Generator().manual_seed(0))[0]
    assert float(short[:, 3].sum()) == 0.0 and float(short[3].sum()) == 0.0


def test_item_position_log_marginals_and_weights_by_hand():
    marginals = np.array([[[0.6, 0.4, 0.0], [0.0, 0.5, 0.5]]])  # 3 sampled prefixes: item 0 never on slot 1
    logged = np.array([[1, 0]])  # ... but the logged list put it there, with probability 0.8 given its prefix
    log_m = item_position_log_marginals(logged, marginals, np.log([[0.4, 0.8]]), samples=3)
    np.testing.assert_allclose(np.exp(log_m), [[(3 * 0.4 + 0.4) / 4, (3 * 0.0 + 0.8) / 4]])
    w = item_position_weights(logged, np.array([[1, 2]]), np.log([[0.4, 0.3]]))
    np.testing.assert_allclose(w, [[2.5, 0.0]])
    v = per_request_values(np.array([[1.0, 0.0]]), w, np.array([[0.4, 0.2]]), np.array([[0.4, 0.3]]), form="item")
    # slot 0: 2.5 (1 - 0.4) + 0.4; slot 1: 0 + 0.3 (the direct term counts on every slot)
    assert v["dr"].tolist() == pytest.approx([1.9 + 0.3])


def test_item_position_ips_is_unbiased_without_list_effects():
    """With exact marginals and clicks that depend on (item, slot) alone, E[item-position IPS] over
    every list the logging policy samples is the target list's expected clicks."""
    probability, _ = cascade_world()
    appeal, exam = np.array([0.6, 0.5, 0.3]), np.array([1.0, 0.7])
    lists = list(itertools.permutations(range(3), 2))
    marginal = np.zeros((2, 3))
    for lst in lists:
        for k, a in enumerate(lst):
            marginal[k, a] += probability(lst)
    target = np.array([[2, 0]])
    ips = 0.0
    for lst in lists:
        logged = np.array([lst])
        log_m = np.log(marginal[[0, 1], list(lst)])[None]
        w = item_position_weights(logged, target, log_m)
        ips += probability(lst) * per_request_values((exam * appeal[list(lst)])[None], w)["ips"][0]
    assert ips == pytest.approx(exam[0] * appeal[2] + exam[1] * appeal[0])


def explored_split(share=0.25, R=240, seed=4):
    """A simulated split where every 1/share-th request shows a list sampled (T = 1) from a tiny
    GReF model, with the world's clicks on it -- as the endpoint's exploration logs it -- and
    the model."""
    from gref.data.batch import collate
    from gref.data.pairs import padded
    from gref.sim import World, WorldConfig, simulate_requests
    from gref.sim.logs import to_log_table
    from gref.sim.user_model import sample_feedback

    world = World.generate(WorldConfig(n_users=200, n_items=1000, n_series=40, n_creators=150, seed=2))
    table, meta = sequences_of(to_log_table(world, simulate_requests(world, R, 0, np.random.default_rng(seed))))
    torch.manual_seed(0)
    model = GenReranker(ModelConfig(num_features=meta["num_features"], cat_sizes=list(meta["cat_sizes"]), d_model=16,
                                    n_heads=2, enc_layers=1, dec_layers=1, omtp_heads=2, list_bias=True)).eval()
    b = collate(table, meta["num_features"], len(meta["cat_sizes"]), meta["feedback_weights"])
    lengths, N = b.lengths.numpy(), b.exposure.shape[1]
    explored = np.arange(R) % round(1 / share) == 0
    sampled = decode(model, b.num, b.cat, b.cand_mask, N, temperature=1.0,
                     generator=torch.Generator().manual_seed(seed)).numpy()
    exposure = np.where(explored[:, None], sampled, b.exposure.numpy())
    items = padded(table.column("item_id"), -1).astype(np.int64)
    ids = np.take_along_axis(items, exposure, axis=1) * (np.arange(N)[None] < lengths[:, None])
    users = np.asarray(table.column("user_id").to_numpy(), dtype=np.int64)
    clicks = sample_feedback(world, users, np.where(np.arange(N)[None] < lengths[:, None], ids, -1),
                             np.random.default_rng(seed))["click"]
    click = np.where(explored[:, None], clicks, b.click.numpy())
    table = (table.set_column(table.schema.get_field_index("exposure"), "exposure",
                              pa.array([list(e[:n]) for e, n in zip(exposure, lengths)], pa.list_(pa.int32())))
             .set_column(table.schema.get_field_index("click"), "click",
                         pa.array([list(c[:n]) for c, n in zip(click.astype(np.float32), lengths)], pa.list_(pa.float32())))
             .append_column("explored", pa.array(explored.astype(np.int8))))
    return table, meta, model, explored


def test_the_report_estimates_every_row_from_the_explored_requests():
    """report_rows with the exploring model: production's on-policy clicks outside the explored
    requests, every row's estimates with intervals, the upstream order's cascade IPS by hand,
    nothing of the explored lists left in the (JSON) report, the report's columns."""
    from gref.clickmodel.estimate import ClickEstimator
    from gref.data.batch import collate
    from gref.evaluation import markdown_table, report_rows
    from gref.offpolicy import LoggingPolicy

    table, meta, model, explored = explored_split()
    rows = report_rows({"tiny": model}, table, meta, estimator=ClickEstimator(table, meta),
                       logging=LoggingPolicy(model, temperature=1.0, samples=10))
    per_request = np.array([sum(c) for c in table.column("click").to_pylist()])
    assert rows["logged exposure"]["ope_production_clicks"] == pytest.approx(per_request[~explored].mean())
    up = rows["upstream order"]
    assert up["ope_requests"] == explored.sum()
    b = collate(table.filter(pa.array(explored)), meta["num_features"], len(meta["cat_sizes"]), meta["feedback_weights"])
    N = b.exposure.shape[1]
    live = np.arange(N)[None] < b.lengths.numpy()[:, None]
    logged = np.where(live, b.exposure.numpy(), -1)
    log_p = logging_propensities(model, b.num, b.cat, b.cand_mask, torch.from_numpy(logged), 1.0).numpy()
    match = np.cumprod((logged == np.arange(N)[None]) & live, axis=1)  # the upstream order: candidate k on slot k
    by_hand = (match * b.click.numpy() / np.exp(np.cumsum(log_p, axis=1))).sum(1).mean()
    assert up["ope_cascade_ips"] == pytest.approx(by_hand)
    for name in ("upstream order", "tiny"):
        for key in ("ope_cascade_ips", "ope_cascade_snips", "ope_cascade_dr", "ope_item_ips", "ope_item_snips", "ope_item_dr"):
            r = rows[name]
            assert r[f"{key}_lo"] <= r[key] <= r[f"{key}_hi"] and r[f"{key}_lift_lo"] <= r[f"{key}_lift"] <= r[f"{key}_lift_hi"]
    json.dumps(rows)  # no array of the explored lists left behind
    assert "DR vs production, explored (item-position) [95% CI]" in markdown_table(rows)


def test_a_split_with_explored_requests_evaluates_without_the_feature_click_model():
    """Training's validation fits the click models without the feature PBM (features=False) on
    splits the continuous loop exports, explored requests included: the report still works, and
    with the exploring model it gives IPS and SNIPS but no DR (it has no direct part)."""
    from gref.clickmodel.estimate import ClickEstimator
    from gref.evaluation import report_rows
    from gref.offpolicy import LoggingPolicy

    table, meta, model, _ = explored_split(R=120)
    estimator = ClickEstimator(table, meta, features=False)
    plain = report_rows({"tiny": model}, table, meta, estimator=estimator)
    assert not any(k.startswith(("_explored", "ope_")) for r in plain.values() for k in r)
    rows = report_rows({"tiny": model}, table, meta, estimator=estimator,
                       logging=LoggingPolicy(model, temperature=1.0, samples=4))
    assert "ope_item_snips_lift" in rows["tiny"] and "ope_item_dr" not in rows["tiny"]


def test_training_validation_on_a_split_with_explored_requests_reports_scalars():
    """Training's per-epoch validation (gref.train.steps.evaluate) on an exported split: every
    metric a number (history.json, Train reports), the explored lists dropped."""
    from gref.clickmodel.estimate import ClickEstimator
    from gref.train.steps import evaluate

    table, meta, model, _ = explored_split(R=120)
    out = evaluate(model, table, meta, estimator=ClickEstimator(table, meta, features=False))
    assert out and all(isinstance(v, float | int) for v in out.values()), out.keys()
    json.dumps(out)
