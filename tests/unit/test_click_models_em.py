"""PBM and DBN click models (gref.clickmodel.em): closed forms by hand, the DBN's posteriors
against brute-force enumeration of its latent variables, EM recovering known parameters, and the
empirical-Bayes prior (its strength by marginal likelihood, a feature model's prior for documents
never shown)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from gref.clickmodel.em import DBN, PBM, PRIOR_STRENGTHS, _shrunk


def test_pbm_expected_clicks_by_hand():
    m = PBM()
    m.theta, m.alpha = np.array([1.0, 0.5, 0.25]), np.array([0.3, 0.8, 0.4])
    docs, lengths = np.array([[1, 2, 0], [2, 1, 0]]), np.array([3, 2])
    # 1*0.8 + 0.5*0.4 + 0.25*0.3 (code 0 = unseen: its own alpha) ; 1*0.4 + 0.5*0.8
    assert np.allclose(m.expected_clicks(docs, lengths), [0.8 + 0.2 + 0.075, 0.4 + 0.4])


def test_dbn_expected_clicks_by_hand():
    m = DBN()
    m.alpha, m.sigma, m.gamma = np.array([0.5, 0.6, 0.2]), np.array([0.5, 0.5, 0.9]), 0.8
    got = m.expected_clicks(np.array([[1, 2]]), np.array([2]))
    assert np.allclose(got, 0.6 + 0.8 * (1 - 0.6 * 0.5) * 0.2)


def brute_force(alpha, sigma, gamma, clicks):
    """P(C) and P(E_k = 1 | C) of a DBN session, summing over every assignment of its latent
    variables: E (examined), A ~ Bern(alpha) and S ~ Bern(sigma) per position, C_k = E_k A_k,
    E_1 = 1, P(E_{k+1} = 1 | E_k = 1) = gamma (1 - C_k S_k), P(E_{k+1} = 1 | E_k = 0) = 0."""
    K = len(clicks)
    total, exam = 0.0, np.zeros(K)
    for E, A, S in itertools.product(itertools.product([0, 1], repeat=K), repeat=3):
        if E[0] != 1 or any(E[k] * A[k] != clicks[k] for k in range(K)):
            continue
        p = np.prod([(alpha[k] if A[k] else 1 - alpha[k]) * (sigma[k] if S[k] else 1 - sigma[k])
                     for k in range(K)])
        for k in range(K - 1):
            go_on = gamma * (1 - clicks[k] * S[k]) if E[k] else 0.0
            p *= go_on if E[k + 1] else 1 - go_on
        total += p
        exam += p * np.array(E)
    return total, exam / total


@pytest.mark.parametrize("clicks", [[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 0, 1], [0, 0, 1]])
def test_dbn_posteriors_match_brute_force(clicks):
    alpha, sigma, gamma = np.array([0.6, 0.3, 0.5]), np.array([0.4, 0.7, 0.2]), 0.85
    m = DBN()
    m.alpha, m.sigma, m.gamma = np.r_[0.5, alpha], np.r_[0.5, sigma], gamma
    exam, _, loglik = m.posteriors(np.array([[1, 2, 3]]), np.array([clicks], dtype=float), np.array([3]))
    likelihood, expect = brute_force(alpha, sigma, gamma, clicks)
    assert np.allclose(np.exp(loglik), likelihood)
    assert np.allclose(exam[0], expect)


def simulate_pbm(rng, S, theta, alpha):
    K = len(theta)
    docs = np.stack([rng.permutation(len(alpha) - 1)[:K] + 1 for _ in range(S)])
    clicks = (rng.random((S, K)) < theta[None] * alpha[docs]).astype(float)
    return docs, clicks, np.full(S, K)


def test_pbm_em_recovers_position_bias_and_attractiveness():
    rng = np.random.default_rng(0)
    theta = np.array([1.0, 0.7, 0.5, 0.35, 0.25])
    alpha = np.r_[0.0, rng.uniform(0.1, 0.7, 12)]
    docs, clicks, lengths = simulate_pbm(rng, 40_000, theta, alpha)
    m = PBM(iterations=200).fit(docs, clicks, lengths)
    scale = m.theta[0]  # PBM is identified up to theta_1 * alpha: compare ratios
    assert np.allclose(m.theta / scale, theta, atol=0.04)
    assert np.allclose(m.alpha[1:] * scale, alpha[1:], atol=0.04)


def simulate_dbn(rng, S, K, alpha, sigma, gamma):
    docs = np.stack([rng.permutation(len(alpha) - 1)[:K] + 1 for _ in range(S)])
    clicks = np.zeros((S, K))
    going = np.ones(S, dtype=bool)
    for k in range(K):
        click = going & (rng.random(S) < alpha[docs[:, k]])
        clicks[:, k] = click
        satisfied = click & (rng.random(S) < sigma[docs[:, k]])
        going = going & ~satisfied & (rng.random(S) < gamma)
    return docs, clicks, np.full(S, K)


def test_dbn_em_recovers_parameters_and_predicts_clicks_of_new_orders():
    rng = np.random.default_rng(1)
    alpha = np.r_[0.0, rng.uniform(0.1, 0.8, 10)]
    sigma = np.r_[0.0, rng.uniform(0.2, 0.8, 10)]
    docs, clicks, lengths = simulate_dbn(rng, 40_000, 6, alpha, sigma, 0.8)
    m = DBN(iterations=100).fit(docs, clicks, lengths)
    assert abs(m.gamma - 0.8) < 0.03
    assert np.allclose(m.alpha[1:], alpha[1:], atol=0.05)
    # the estimate of lists never logged: every order of the 6 most attractive documents, reversed
    best = np.argsort(-alpha[1:])[:6] + 1
    new = np.stack([best, best[::-1]])
    truth = DBN()
    truth.alpha, truth.sigma, truth.gamma = alpha, sigma, 0.8
    assert np.allclose(m.expected_clicks(new, np.array([6, 6])), truth.expected_clicks(new, np.array([6, 6])),
                       rtol=0.03)


def test_unseen_documents_get_the_mean_attractiveness():
    rng = np.random.default_rng(2)
    alpha = np.r_[0.0, rng.uniform(0.1, 0.7, 8)]
    docs, clicks, lengths = simulate_pbm(rng, 5000, np.array([1.0, 0.6, 0.4]), alpha)
    m = PBM().fit(docs, clicks, lengths)
    assert min(m.alpha[1:]) < m.alpha[0] < max(m.alpha[1:])
    assert m.expected_clicks(np.array([[0, 0, 0]]), np.array([3]))[0] > 0


def test_the_prior_strength_is_what_the_documents_spread_says():
    """Documents whose appeal is exactly their prior mean: the marginal likelihood trusts the prior
    (the largest s); documents spread from 0.05 to 0.95 around the same mean: it trusts the counts."""
    rng = np.random.default_rng(3)
    V, n = 400, np.full(400, 20.0)
    prior = rng.uniform(0.2, 0.6, V)
    alike = rng.binomial(20, prior).astype(float)
    _, s_alike, scale = _shrunk(alike, n, prior)
    spread = rng.binomial(20, rng.choice([0.05, 0.95], V)).astype(float)
    shrunk, s_spread, _ = _shrunk(spread, n, np.full(V, np.nan))
    assert s_alike == PRIOR_STRENGTHS[-1] and s_spread <= 1.0  # a U-shaped beta: a < 1
    # the prior is rescaled to the documents' own level: here it is at that level already
    assert scale == pytest.approx(1.0, abs=0.05)
    # (x + s m) / (n + s) by hand, m = the pooled mean
    m = spread.sum() / n.sum()
    assert shrunk[0] == pytest.approx((spread[0] + s_spread * m) / (20 + s_spread))


def test_a_never_shown_document_is_judged_by_the_feature_prior():
    rng = np.random.default_rng(4)
    alpha = np.r_[0.0, rng.uniform(0.3, 0.7, 8)]
    docs, clicks, lengths = simulate_pbm(rng, 5000, np.array([1.0, 0.6, 0.4]), alpha)
    for model in (PBM(), DBN()):
        m = model.fit(docs, clicks, lengths, prior=np.full(docs.shape, 0.5))
        unseen = np.array([[20, 21, 22]])  # codes the fit never saw
        low, high = (m.expected_clicks(unseen, np.array([3]), np.full((1, 3), p)) for p in (0.05, 0.5))
        if isinstance(m, PBM):  # E[clicks] = sum theta_k a_k: a tenth of the appeal, a tenth of the clicks
            assert low[0] == pytest.approx(high[0] * 0.1)
        assert low[0] < high[0]
        assert m.expected_clicks(unseen, np.array([3]))[0] > low[0]  # without a prior: the shown ones' mean
        seen = docs[:1]  # a shown document keeps its fitted appeal, whatever the prior of the judged list
        assert m.expected_clicks(seen, np.array([3]), np.full((1, 3), 0.01)) == pytest.approx(
            m.expected_clicks(seen, np.array([3])))


def test_documents_are_keyed_by_query_and_item():
    import pyarrow as pa

    from gref.clickmodel.estimate import document_codes

    # two requests of the same url 7 under queries encoded 2 and 3; url 8 twice under query 2
    table = pa.table({"item_id": [[7, 8], [8, 7], [7, 8]], "m": [2, 2, 2],
                      "cat": [[2, 2], [3, 3], [2, 2]]})  # one categorical column: [m * C]
    codes = document_codes(table, ["cat_query"], context="cat_query")
    assert codes[0].tolist() == codes[2].tolist()  # same query, same urls
    assert codes[0, 0] != codes[1, 1] and codes[0, 1] != codes[1, 0]  # same url, other query
    assert len(set(codes.ravel().tolist())) == 4
    no_context = document_codes(table, ["cat_query"])
    assert no_context[0, 0] == no_context[1, 1]


def test_bootstrap_ci_and_kendall_tau_by_hand():
    from gref.clickmodel.estimate import bootstrap_summary
    from gref.evaluation import kendall_tau

    rng = np.random.default_rng(0)
    base = rng.random(2000)
    same = bootstrap_summary(base, base)
    assert same["lift"] == same["lift_lo"] == same["lift_hi"] == 0.0  # paired: no noise of its own
    assert same["mean_lo"] < base.mean() < same["mean_hi"]
    half = 1.0 / np.sqrt(len(base)) * base.std() * 1.96  # the normal approximation of the CI
    assert abs((same["mean_hi"] - same["mean_lo"]) / 2 - half) < 0.2 * half
    shifted = bootstrap_summary(base * 1.1, base)
    assert np.isclose(shifted["lift"], 0.1) and np.isclose(shifted["lift_lo"], 0.1)
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)  # pairs: +1, +1, -1
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0


def test_a_prior_at_another_level_is_rescaled_to_the_documents_own():
    """A feature model's attractiveness is a PBM's; a DBN's attractiveness sits at another level.
    The prior keeps its ranking of the documents and takes the pooled mean of their counts."""
    successes, trials = np.array([2.0, 8.0, 5.0]), np.array([10.0, 10.0, 10.0])  # pooled mean 0.5
    shrunk, s, scale = _shrunk(successes, trials, np.array([0.1, 0.4, 0.25]))  # prior's mean 0.25
    assert scale == pytest.approx(2.0)
    m = np.array([0.2, 0.8, 0.5])
    assert shrunk == pytest.approx((successes + s * m) / (trials + s))
