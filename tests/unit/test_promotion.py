"""The promotion rule of continuous training on hand-made A/B results (no Ray): the interval by hand,
each action, the Bonferroni and O'Brien-Fleming levels over looks, and the false-promotion rate of
A/A tests; and the offline rule of jobs.pipeline (a new model replaces the champion only when every
click model's paired interval is above 0) on hand-made per-request estimates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gref.evaluation import add_gains
from gref.serving.promotion import (PromotionRule, crossing_probability, decide, lift_interval, mean_and_variance,
                                     obf_spent, offline_decision, spending_boundaries)


def test_lift_interval_by_hand():
    # champion [1, 1, 2, 2]: mean 1.5, var (ddof 1) 1/3; challenger [2, 2, 3, 3]: mean 2.5, var 1/3
    # var(lift) = (1/3 / 4) / 1.5^2 + 2.5^2 * (1/3 / 4) / 1.5^4 = 0.0370370 + 0.1028807 = 0.1399177
    lift, low, high = lift_interval(np.array([1, 1, 2, 2]), np.array([2, 2, 3, 3]), 1.96)
    assert lift == pytest.approx(2.5 / 1.5 - 1)
    assert high - lift == pytest.approx(1.96 * math.sqrt(0.1399177), rel=1e-6)
    assert lift - low == pytest.approx(high - lift)


def test_user_level_variance_by_hand():
    # requests [1, 0, 2, 1] of users [u1, u1, u2, u3]: sums y = (1, 2, 1), n = (2, 1, 1), mean 4 / 4 = 1;
    # residuals y - n = (-1, 1, 0): var (ddof 1) 1; var(mean) = 1 / (3 users * (4/3)^2) = 0.1875
    mean, var = mean_and_variance(np.array([1, 0, 2, 1]), np.array(["u1", "u1", "u2", "u3"]))
    assert (mean, var) == (pytest.approx(1.0), pytest.approx(0.1875))
    # one request per user: the per-request formula
    values = np.array([3.0, 1.0, 4.0, 1.0, 5.0])
    assert mean_and_variance(values, np.arange(5)) == pytest.approx(mean_and_variance(values))
    assert mean_and_variance(values)[1] == pytest.approx(values.var(ddof=1) / 5)


def test_bonferroni_level_over_looks():
    assert PromotionRule(alpha=0.05, max_looks=1).z(1) == pytest.approx(1.959964, abs=1e-6)
    for look in (1, 2, 3):
        assert PromotionRule(alpha=0.05, max_looks=3).z(look) == pytest.approx(2.393980, abs=1e-6)  # Phi^-1(1 - 0.05/6)


@pytest.mark.parametrize(("looks", "expected"), [
    (1, [1.960]),
    (2, [2.797, 1.977]),  # the last look's z is the O'Brien-Fleming constant C_B(K, 0.05)
    (3, [3.471, 2.454, 2.004]),  # (Jennison & Turnbull 2000, Table 2.3: 1.977, 2.004, 2.040)
    (5, [4.562, 3.226, 2.634, 2.281, 2.040]),
])
def test_obrien_fleming_boundary_matches_the_published_constants(looks, expected):
    rule = PromotionRule(alpha=0.05, max_looks=looks, boundary="obrien_fleming")
    assert [rule.z(k) for k in range(1, looks + 1)] == pytest.approx(expected, abs=1.5e-3)
    # one look: exactly the two-sided 95 % interval; the walk crosses with probability alpha
    assert crossing_probability(1.959964, 1) == pytest.approx(0.05, abs=1e-6)
    assert crossing_probability(rule.z(looks) * math.sqrt(looks), looks) == pytest.approx(0.05, abs=1e-6)


def test_obrien_fleming_promotes_at_the_last_look_what_bonferroni_keeps():
    # 5,400 requests per arm, sd 1.6 around 2.3 clicks: se(lift) ~ 1.31 %; a +3 % lift clears
    # 1.977 se (OBF's last look of 2) but not 2.241 se (Bonferroni's)
    rng = np.random.default_rng(3)
    a = 2.3 + 1.6 * rng.standard_normal(5400)
    b = a.mean() * 1.03 + (a - a.mean())[rng.permutation(5400)]
    bonferroni = decide(a, b, 2, PromotionRule(max_looks=2))
    obf = decide(a, b, 2, PromotionRule(max_looks=2, boundary="obrien_fleming"))
    assert bonferroni.lift == obf.lift == pytest.approx(0.03)
    assert (bonferroni.action, obf.action) == ("keep", "promote")
    assert decide(a, b, 1, PromotionRule(max_looks=2, boundary="obrien_fleming")).action == "continue"  # 2.80 se early


def _arms(champion_mean: float, challenger_mean: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Values with exactly these means and variance 1 (alternating mean -+ 1, n even)."""
    wiggle = np.tile([-1.0, 1.0], n // 2)
    return champion_mean + wiggle, challenger_mean + wiggle


@pytest.mark.parametrize(("challenger", "look", "action"), [
    (2.2, 1, "promote"),  # +10 % with se ~ 2.9 %: far above 0 at look 1
    (1.8, 1, "rollback"),  # -10 %
    (2.02, 1, "continue"),  # +1 %: the interval holds 0, looks remain
    (2.02, 3, "keep"),  # the same at the last look: the champion stays
])
def test_each_action(challenger, look, action):
    # n = 400 per arm, var 1 (ddof 1: 400/399): se(lift) ~ sqrt(1/400/4 + c^2/400/16) -> ~3.6 % at c = 2.2
    a, b = _arms(2.0, challenger, 400)
    d = decide(a, b, look, PromotionRule(max_looks=3, min_requests=100))
    assert d.action == action
    assert d.lift == pytest.approx(challenger / 2.0 - 1)
    assert d.z == pytest.approx(2.393980, abs=1e-6)
    assert (d.champion_requests, d.challenger_requests) == (400, 400)


def test_too_little_data_decides_nothing():
    a, b = _arms(2.0, 3.0, 40)
    assert decide(a, b, 1, PromotionRule(min_requests=100)).action == "continue"
    assert decide(a, b, 3, PromotionRule(min_requests=100, max_looks=3)).action == "keep"


@pytest.mark.parametrize("boundary", ["bonferroni", "obrien_fleming"])
def test_aa_tests_rarely_promote_however_many_looks(boundary):
    """2,000 simulated A/A tests (Poisson clicks, same mean, 3 looks of 500 requests per arm): the
    rule promotes at most alpha / 2 = 2.5 % of them (either boundary keeps the repeated looks
    honest), where one look at 95 % per look would promote more."""
    rng = np.random.default_rng(0)
    rule = PromotionRule(max_looks=3, min_requests=100, boundary=boundary)
    naive = PromotionRule(max_looks=1, min_requests=100)
    promoted = naive_promoted = 0
    for _ in range(2000):
        a, b = rng.poisson(2.3, (3, 500)), rng.poisson(2.3, (3, 500))
        actions = [decide(a[:k].ravel(), b[:k].ravel(), k, rule).action for k in (1, 2, 3)]
        stop = next((x for x in actions if x != "continue"), "keep")
        promoted += stop == "promote"
        # the naive rule: a 95 % interval at every look, promote the first time it clears 0
        naive_promoted += any(lift_interval(a[:k].ravel(), b[:k].ravel(), naive.z(1))[1] > 0 for k in (1, 2, 3))
    assert promoted / 2000 <= 0.025
    assert naive_promoted > promoted


def test_the_spending_boundary_by_hand_at_the_first_look_and_with_one_look():
    """The first look spends alpha(t1) = 2 - 2 Phi(z / sqrt(t1)) alone: its boundary is z / sqrt(t1)
    (1.95996 / 0.5 at a quarter of the planned traffic); one look with all of it is the usual 1.96."""
    assert obf_spent(1.0, 0.05) == pytest.approx(0.05)
    assert obf_spent(0.25, 0.05) == pytest.approx(2 - 2 * 0.5 * (1 + math.erf(3.919928 / math.sqrt(2))), rel=1e-4)
    assert spending_boundaries((0.25,), 0.05)[0] == pytest.approx(1.959964 / 0.5, abs=1e-4)
    assert spending_boundaries((1.0,), 0.05)[0] == pytest.approx(1.959964, abs=1e-4)
    assert spending_boundaries((0.5, 0.5, 1.0), 0.05)[1] == math.inf  # a look with no new traffic decides nothing


@pytest.mark.parametrize("fractions", [(1 / 3, 2 / 3, 1.0), (0.1, 0.5, 1.0), (0.6, 0.7, 1.0)])
def test_the_spending_boundary_spends_what_it_says_at_looks_of_any_size(fractions):
    """400,000 Brownian paths seen at the looks' information fractions (equal looks, a short first
    look, a short second one): the share that first crosses at each look is the level the spending
    function assigns it (within 4 standard errors), and all looks together cross with probability
    alpha -- the A/A guarantee for looks of any size."""
    rng = np.random.default_rng(0)
    bounds = spending_boundaries(fractions, 0.05)
    t = np.array((0.0, *fractions))
    z = np.abs(np.cumsum(rng.normal(size=(400_000, len(fractions))) * np.sqrt(np.diff(t)), 1) / np.sqrt(t[1:]))
    crossed = np.zeros(len(z), bool)
    for j, b in enumerate(bounds):
        first = ~crossed & (z[:, j] >= b)
        planned = obf_spent(t[j + 1], 0.05) - (obf_spent(t[j], 0.05) if j else 0.0)
        assert abs(first.mean() - planned) <= 4 * math.sqrt(planned * (1 - planned) / len(z)) + 1e-5
        crossed |= first
    assert abs(crossed.mean() - 0.05) <= 4 * math.sqrt(0.05 * 0.95 / len(z))


def test_the_spending_rule_spends_what_is_left_at_the_last_look():
    rule = PromotionRule(max_looks=3, boundary="obf_spending")
    assert rule.z(3, (0.2, 0.4, 0.55)) == pytest.approx(spending_boundaries((0.2, 0.4, 1.0), 0.05)[-1])
    assert rule.z(1, (0.2,)) == pytest.approx(1.959964 / math.sqrt(0.2), abs=1e-4)
    with pytest.raises(ValueError, match="information fraction"):
        rule.z(2, (0.2,))


def test_aa_tests_with_a_short_look_stay_at_the_level_with_the_spending_boundary():
    """2,000 A/A tests whose first look got a fifth of its traffic (a client look cut short by its
    timeout; 100, 500, 500 requests per arm): the spending boundary, fed the fractions seen,
    promotes at most alpha / 2."""
    rng = np.random.default_rng(2)
    rule = PromotionRule(max_looks=3, min_requests=50, boundary="obf_spending")
    sizes = np.cumsum([100, 500, 500])
    promoted = 0
    for _ in range(2000):
        a, b = rng.poisson(2.3, sizes[-1]), rng.poisson(2.3, sizes[-1])
        for k, n in enumerate(sizes, 1):
            fractions = tuple(float(m) / 1500 for m in sizes[:k])
            action = decide(a[:n], b[:n], k, rule, fractions=fractions).action
            if action != "continue":
                promoted += action == "promote"
                break
    assert promoted / 2000 <= 0.025


def test_aa_tests_with_correlated_users_need_the_user_level_interval():
    """Requests of one user share the user's click rate (5 requests per user, rates Gamma(0.5) around
    2.3: a design effect ~4): counting requests as independent promotes A/A tests far above the
    level, counting users keeps it (2,000 simulated A/A tests of 3 looks, 100 users per arm per look)."""
    rng = np.random.default_rng(1)
    by_user, by_request = PromotionRule(max_looks=3), PromotionRule(max_looks=3, unit="request")
    promoted = {"user": 0, "request": 0}
    users = np.repeat(np.arange(300), 5)  # 300 users per arm over the 3 looks, 5 requests each
    for _ in range(2000):
        a, b = (rng.poisson(np.repeat(rng.gamma(0.5, 4.6, 300), 5)) for _ in range(2))
        for rule in (by_user, by_request):
            actions = [decide(a[:500 * k], b[:500 * k], k, rule, users[:500 * k], users[:500 * k]).action
                       for k in (1, 2, 3)]
            promoted[rule.unit] += next((x for x in actions if x != "continue"), "keep") == "promote"
    assert promoted["user"] / 2000 <= 0.025
    assert promoted["request"] / 2000 > 0.1


def test_unknown_unit_or_boundary_is_an_error():
    with pytest.raises(ValueError, match="rule.unit"):
        decide(np.ones(200), np.ones(200), 1, PromotionRule(unit="session"))
    with pytest.raises(ValueError, match="rule.boundary"):
        decide(np.ones(200), 1.1 * np.ones(200), 1, PromotionRule(boundary="pocock"))


ESTIMATORS = ("pbm", "dbn")


def offline(new: dict[str, np.ndarray], champion: dict[str, np.ndarray], oracle: tuple[float, float] | None = None):
    """offline_decision on rows built from per-request estimates, as jobs.pipeline builds them."""
    rows = {"new": {f"_est_{k}": v for k, v in new.items()}, "champion": {f"_est_{k}": v for k, v in champion.items()}}
    if oracle is not None:
        rows["new"]["oracle_clicks"], rows["champion"]["oracle_clicks"] = oracle
    add_gains(rows, ["new"], "champion")
    return offline_decision(rows["new"], ESTIMATORS)


def test_offline_gain_by_hand():
    # the same requests: champion [1, 2, 3, 2] (mean 2), new [2, 2, 3, 3] (mean 2.5): gain +25 %
    rows = {"new": {"_est_pbm": np.array([2.0, 2, 3, 3])}, "champion": {"_est_pbm": np.array([1.0, 2, 3, 2])}}
    add_gains(rows, ["new"], "champion")
    r = rows["new"]
    assert r["gain_pbm"] == pytest.approx(0.25)
    # the new model is >= the champion on every request: every resample's gain is >= 0
    assert 0.0 <= r["gain_pbm_lo"] <= r["gain_pbm"] <= r["gain_pbm_hi"]


def test_identical_models_are_not_promoted():
    v = np.random.default_rng(0).gamma(2.0, 1.0, 500)
    d = offline({"pbm": v, "dbn": v}, {"pbm": v, "dbn": v})
    assert not d["promote"] and d["gains"]["pbm"] == [0.0, 0.0, 0.0]
    # the oracle's verdict on a simulated world: equal is not better either
    assert not offline({"pbm": v, "dbn": v}, {"pbm": v, "dbn": v}, oracle=(2.0, 2.0))["promote"]


def test_a_model_one_estimator_calls_worse_is_not_promoted():
    rng = np.random.default_rng(1)
    base = rng.gamma(2.0, 1.0, 2000)
    better, worse = base * 1.1, base * 0.9
    d = offline({"pbm": better, "dbn": worse}, {"pbm": base, "dbn": base})
    assert not d["promote"] and d["why"] == "worse than the champion by dbn"
    assert d["gains"]["pbm"][1] > 0 and d["gains"]["dbn"][2] < 0


def test_a_model_every_estimator_calls_better_is_promoted_and_noise_is_not():
    rng = np.random.default_rng(2)
    base = rng.gamma(2.0, 1.0, 2000)
    assert offline({"pbm": base * 1.05, "dbn": base * 1.03}, {"pbm": base, "dbn": base})["promote"]
    # per-request noise around the same mean: the interval straddles 0 -> the champion stays
    noisy = base + rng.normal(0.0, 1.0, base.size)
    noisy *= base.mean() / noisy.mean()  # exactly the champion's mean
    d = offline({"pbm": noisy, "dbn": noisy}, {"pbm": base, "dbn": base})
    assert not d["promote"] and "interval reaches 0" in d["why"]


def test_the_oracle_decides_where_there_is_one():
    v = np.ones(10)
    assert offline({"pbm": v, "dbn": v}, {"pbm": v, "dbn": v}, oracle=(2.1, 2.0))["promote"]
    assert not offline({"pbm": v * 2, "dbn": v * 2}, {"pbm": v, "dbn": v}, oracle=(1.9, 2.0))["promote"]


def test_offline_decision_without_paired_gains_says_how_to_get_them():
    with pytest.raises(ValueError, match="compare_to"):
        offline_decision({"est_lift_pbm": 0.1}, ESTIMATORS)


def test_the_stats_intervals_by_hand():
    from gref.stats import normal_mean_interval, paired_ratio_lift, t_half_width

    # t: [1, 2, 4] -> sd 1.5275, t(2) 97.5 % = 4.3027
    assert t_half_width(np.array([1.0, 2.0, 4.0])) == pytest.approx(4.3027 * 1.5275 / math.sqrt(3), rel=1e-4)
    assert t_half_width(np.array([3.0])) == 0.0
    assert normal_mean_interval(np.array([1.0, 3.0]))["ci95"] == pytest.approx(1.95996, rel=1e-5)  # sd sqrt(2), n 2
    # paired: base [1, 2, 3], new [2, 2, 4]: lift 8/6 - 1 = 1/3; residuals new - (4/3) base = [2/3, -2/3, 0]
    out = paired_ratio_lift(np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 4.0]))
    assert out["lift"] == pytest.approx(1 / 3)
    assert out["high"] - out["lift"] == pytest.approx(1.95996 * math.sqrt(4 / 9) / (math.sqrt(3) * 2.0), rel=1e-4)
