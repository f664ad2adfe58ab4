"""Classic click models fitted by EM on logged lists, to estimate the expected clicks of *any*
list without an oracle: the position-based model (PBM) and the dynamic Bayesian network (DBN,
a cascade model with satisfaction and abandonment). Plain NumPy, vectorised over sessions.

(Chuklin, Markov & de Rijke, "Click Models for Web Search", 2015: PBM ch. 3.4, DBN ch. 3.8.
No maintained Python package fits: PyClick and clickmodels are Python-2-era scripts, and
pyClickModels is DBN-only over JSON files.)

Inputs, for S sessions (lists shown) of up to K positions:
  docs    [S, K] int   document code per position (0 = a document never seen in fitting:
                       its attractiveness is the impression-weighted mean)
  clicks  [S, K] 0/1   clicks (only on positions < length)
  lengths [S]    int   positions shown per session
A document is whatever the caller keys it by (an item, or a (query, item) pair).

PBM:  P(C_k = 1) = theta_k * alpha_d                      (examination x attractiveness)
DBN:  E_1 = 1;  C_k = E_k * A_k, P(A_k) = alpha_d;  after a click the user is satisfied with
      sigma_d and stops; unless satisfied she goes on with gamma:
      P(E_{k+1} = 1 | E_k = 1) = gamma * (1 - C_k * S_k),   P(S_k = 1 | C_k = 1) = sigma_d.
      E[clicks] = sum_k P(E_k) alpha_k,  P(E_{k+1}) = P(E_k) gamma (1 - alpha_k sigma_k).
Every M-step shrinks each document's attractiveness towards a prior mean with ``s``
pseudo-impressions (empirical Bayes: a document seen twice without a click is not judged by two
impressions alone, and not pulled towards 1/2 either). The prior mean is the impression-weighted
mean, or -- given ``prior`` [S, K], a feature model's attractiveness of every shown candidate --
the mean of that over the document's impressions, rescaled to the model's own pooled mean (a
PBM's attractiveness is not a DBN's); ``s`` maximises the beta-binomial marginal
likelihood of the documents' (expected) attractive impressions. A document never shown in fitting
gets the prior: the feature model's attractiveness of the candidate itself when ``expected_clicks``
is given ``prior`` for the judged lists (production shows its best candidates: the never-shown
ones are not average), else the mean.

``FeaturePBM`` is the PBM whose attractiveness is a function of the candidate's features
(regression EM, Wang et al., WSDM 2018): it generalises to documents never seen in the logs
and to personalised relevance, where per-document parameters are too sparse.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import betaln
from torch import nn

PRIOR_STRENGTHS = np.geomspace(0.25, 256.0, 11)  # pseudo-impressions s tried by the marginal likelihood


def _valid(lengths: np.ndarray, K: int) -> np.ndarray:
    return np.arange(K)[None] < np.asarray(lengths)[:, None]


def _per_doc(docs: np.ndarray, weights: np.ndarray, valid: np.ndarray,
             size: int) -> tuple[np.ndarray, np.ndarray]:
    """(sum of weights, count) per document code over valid positions."""
    d = docs[valid]
    return (np.bincount(d, weights=weights[valid], minlength=size),
            np.bincount(d, minlength=size).astype(float))


def _prior_means(docs: np.ndarray, prior: np.ndarray | None, valid: np.ndarray, size: int,
                 trials: np.ndarray) -> np.ndarray:
    """[V] each document's prior mean: its impressions' mean of ``prior`` [S, K] (a feature
    model's attractiveness); NaN where there is none (no prior, or no impression): _shrunk then
    uses the impression-weighted mean."""
    if prior is None:
        return np.full(size, np.nan)
    total, _ = _per_doc(docs, np.clip(prior, 1e-4, 1 - 1e-4), valid, size)
    return np.where(trials > 0, total / np.maximum(trials, 1), np.nan)


def _shrunk(successes: np.ndarray, trials: np.ndarray, means: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Per document (successes + s m) / (trials + s), towards prior means ``means`` [V] (NaN: the
    impression-weighted mean) rescaled to this model's own pooled mean (a feature model's
    attractiveness is a PBM's: a DBN's sits at another level), with s from PRIOR_STRENGTHS
    maximising the beta-binomial marginal likelihood of the documents' (fractional) successes.
    -> (attractiveness [V], s, the prior's scale)."""
    pooled = successes.sum() / max(trials.sum(), 1e-12)
    shown = trials > 0
    given = ~np.isnan(means) & shown
    scale = pooled / max(float((means[given] * trials[given]).sum() / trials[given].sum()), 1e-12) if given.any() else 1.0
    m = np.clip(np.where(np.isnan(means), pooled, means * scale), 1e-4, 1 - 1e-4)
    x, n, mm = successes[shown], trials[shown], m[shown]
    loglik = [float((betaln(x + s * mm, n - x + s * (1 - mm)) - betaln(s * mm, s * (1 - mm))).sum())
              for s in PRIOR_STRENGTHS]
    s = float(PRIOR_STRENGTHS[int(np.argmax(loglik))]) if len(x) else float(PRIOR_STRENGTHS[0])
    return (successes + s * m) / (trials + s), s, scale


def _with_unseen(p: np.ndarray, trials: np.ndarray) -> np.ndarray:
    """Documents never seen in fitting (code 0, and any code without a trial) get the
    impression-weighted mean."""
    p = p.copy()
    p[trials == 0] = float((p * trials).sum() / max(trials.sum(), 1.0))
    return p


def _judged(alpha: np.ndarray, seen: np.ndarray, docs: np.ndarray, prior: np.ndarray | None,
            scale: float = 1.0) -> np.ndarray:
    """[S, K] the attractiveness of the judged documents: the fitted one, and for a document never
    shown in fitting the feature model's ``prior`` of the candidate where it is given."""
    idx = np.clip(docs, 0, len(alpha) - 1)
    a = alpha[idx]
    if prior is None:
        return a
    known = seen[idx] & (docs < len(alpha))
    return np.where(known, a, np.clip(prior * scale, 1e-4, 1 - 1e-4))


def _pbm_step(theta: np.ndarray, a: np.ndarray, c: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PBM's E-step and theta's M-step: theta [K], attractiveness a [S, K], clicks c [S, K]
    -> (P(A = 1 | C) [S, K], the new theta [K]; positions never shown keep theirs)."""
    t = theta[None]
    no_click = np.maximum(1.0 - t * a, 1e-12)
    p_attr = np.where(c > 0, 1.0, (1.0 - t) * a / no_click)
    p_exam = np.where(c > 0, 1.0, t * (1.0 - a) / no_click)
    shown = valid.sum(0)
    return p_attr, np.where(shown > 0, (p_exam * valid).sum(0) / np.maximum(shown, 1), theta)


def _theta_for(theta: np.ndarray, K: int) -> np.ndarray:
    """theta for K positions; positions never shown in fitting keep the last fitted value."""
    return np.r_[theta, np.full(max(K - len(theta), 0), theta[-1])][:K]


class PBM:
    """Position-based model: examination by position x attractiveness by document."""

    def __init__(self, iterations: int = 50):
        self.iterations = iterations
        self.theta = np.zeros(0)  # [K] P(examine position k)
        self.alpha = np.zeros(1)  # [V] P(attractive | document code)
        self.seen = np.zeros(1, dtype=bool)  # [V] documents shown in the fitting lists
        self.strength = 0.0  # s: the prior's pseudo-impressions (marginal likelihood)
        self.prior_scale = 1.0  # the feature prior rescaled to this model's level

    def fit(self, docs: np.ndarray, clicks: np.ndarray, lengths: np.ndarray, prior: np.ndarray | None = None) -> PBM:
        """``prior`` [S, K]: a feature model's attractiveness of the shown candidates (or None)."""
        K = docs.shape[1]
        V = int(docs.max(initial=0)) + 1
        valid = _valid(lengths, K)
        c = np.where(valid, clicks, 0.0)
        theta, alpha = np.full(K, 0.5), np.full(V, 0.5)
        means = _prior_means(docs, prior, valid, V, np.bincount(docs[valid], minlength=V).astype(float))
        for _ in range(self.iterations):
            p_attr, theta = _pbm_step(theta, alpha[docs], c, valid)
            successes, trials = _per_doc(docs, p_attr, valid, V)
            alpha, self.strength, self.prior_scale = _shrunk(successes, trials, means)
        self.theta, self.alpha = theta, _with_unseen(alpha, trials)
        self.seen = trials > 0
        return self

    def expected_clicks(self, docs: np.ndarray, lengths: np.ndarray, prior: np.ndarray | None = None) -> np.ndarray:
        """[S] E[clicks] of each list; ``prior`` [S, K]: the feature model's attractiveness of the
        judged candidates, used for the documents never shown in fitting."""
        K = docs.shape[1]
        a = _judged(self.alpha, self.seen, docs, prior, self.prior_scale)
        return (_theta_for(self.theta, K)[None] * a * _valid(lengths, K)).sum(1)


class DBN:
    """Dynamic Bayesian network click model (a cascade with satisfaction and abandonment)."""

    def __init__(self, iterations: int = 50):
        self.iterations = iterations
        self.alpha = np.zeros(1)  # [V] P(attractive | document code)
        self.sigma = np.zeros(1)  # [V] P(satisfied | clicked document code)
        self.gamma = 0.9  # P(continue | examined and not satisfied)
        self.seen = np.zeros(1, dtype=bool)  # [V] documents shown in the fitting lists
        self.prior_scale = 1.0  # the feature prior rescaled to this model's level

    def posteriors(self, docs: np.ndarray, clicks: np.ndarray, lengths: np.ndarray):
        """Scaled forward-backward over the examination chain X_k in {0, 1} (X_1 = 1).
        -> (P(X_k = 1 | C) [S, K], P(X_k = 1, X_{k+1} = 0 | C) [S, K], log-likelihood [S])."""
        S, K = docs.shape
        valid = _valid(lengths, K)
        c = np.where(valid, clicks, 0.0) > 0
        a, s = self.alpha[docs], self.sigma[docs]
        e1 = np.where(valid, np.where(c, a, 1.0 - a), 1.0)  # P(C_k | X_k = 1); padding: no evidence
        e0 = np.where(valid & c, 0.0, 1.0)  # P(C_k | X_k = 0)
        tau = self.gamma * (1.0 - c * s)  # P(X_{k+1} = 1 | X_k = 1, C_k)
        f = np.zeros((S, K, 2))  # normalised forward: P(X_k | C_1..k)
        scale = np.zeros((S, K))
        f0 = np.stack([np.zeros(S), e1[:, 0]], 1)
        scale[:, 0] = f0.sum(1)
        f[:, 0] = f0 / scale[:, :1]
        for k in range(1, K):
            one = f[:, k - 1, 1] * tau[:, k - 1] * e1[:, k]
            zero = (f[:, k - 1, 1] * (1.0 - tau[:, k - 1]) + f[:, k - 1, 0]) * e0[:, k]
            scale[:, k] = one + zero
            f[:, k] = np.stack([zero, one], 1) / scale[:, k:k + 1]
        b = np.ones((S, K, 2))  # backward, scaled by the same constants
        for k in range(K - 2, -1, -1):
            b1 = tau[:, k] * e1[:, k + 1] * b[:, k + 1, 1] + (1.0 - tau[:, k]) * e0[:, k + 1] * b[:, k + 1, 0]
            b0 = e0[:, k + 1] * b[:, k + 1, 0]
            b[:, k] = np.stack([b0, b1], 1) / scale[:, k + 1:k + 2]
        exam = f[:, :, 1] * b[:, :, 1]
        stop = np.zeros((S, K))  # P(X_k = 1, X_{k+1} = 0 | C)
        stop[:, :-1] = (f[:, :-1, 1] * (1.0 - tau[:, :-1]) * e0[:, 1:] * b[:, 1:, 0]) / scale[:, 1:]
        return exam, stop, np.log(scale).sum(1)

    def fit(self, docs: np.ndarray, clicks: np.ndarray, lengths: np.ndarray, prior: np.ndarray | None = None) -> DBN:
        """``prior`` [S, K]: a feature model's attractiveness of the shown candidates (or None)."""
        K = docs.shape[1]
        V = int(docs.max(initial=0)) + 1
        valid = _valid(lengths, K)
        means = _prior_means(docs, prior, valid, V, np.bincount(docs[valid], minlength=V).astype(float))
        no_prior = np.full(V, np.nan)
        c = np.where(valid, clicks, 0.0) > 0
        last = np.asarray(lengths)[:, None] - 1 == np.arange(K)[None]  # the last shown position
        self.alpha, self.sigma, self.gamma = np.full(V, 0.5), np.full(V, 0.5), 0.9
        for _ in range(self.iterations):
            exam, stop, _ = self.posteriors(docs, clicks, lengths)
            a, s, g = self.alpha[docs], self.sigma[docs], self.gamma
            p_attr = np.where(c, 1.0, (1.0 - exam) * a)  # P(A = 1 | C)
            # a click then no further examination: satisfied, or unsatisfied and abandoning
            p_sat = np.where(last, s, stop * s / np.maximum(s + (1.0 - s) * (1.0 - g), 1e-12))
            p_sat = np.where(c, p_sat, 0.0)
            succ_a, trials_a = _per_doc(docs, p_attr, valid, V)
            succ_s, trials_s = _per_doc(docs, p_sat, valid & c, V)
            going_on = valid & ~last  # positions with a next one
            opportunities = ((exam - p_sat) * going_on).sum()  # examined, not satisfied
            continued = ((exam - stop) * going_on).sum()  # X_k = 1 and X_{k+1} = 1
            (self.alpha, _, self.prior_scale), (self.sigma, _, _) = (_shrunk(succ_a, trials_a, means),
                                                                     _shrunk(succ_s, trials_s, no_prior))
            self.gamma = float(np.clip(continued / max(opportunities, 1e-12), 1e-6, 1.0 - 1e-6))
        self.alpha, self.sigma = _with_unseen(self.alpha, trials_a), _with_unseen(self.sigma, trials_s)
        self.seen = trials_a > 0
        return self

    def expected_clicks(self, docs: np.ndarray, lengths: np.ndarray, prior: np.ndarray | None = None) -> np.ndarray:
        """[S] E[clicks] of each list; ``prior`` as PBM.expected_clicks."""
        S, K = docs.shape
        idx = np.clip(docs, 0, len(self.alpha) - 1)
        a, s = _judged(self.alpha, self.seen, docs, prior, self.prior_scale) * _valid(lengths, K), self.sigma[idx]
        exam, total = np.ones(S), np.zeros(S)
        for k in range(K):
            total += exam * a[:, k]
            exam = exam * self.gamma * (1.0 - a[:, k] * s[:, k])
        return total


CLICK_MODELS = {"pbm": PBM, "dbn": DBN}


class _Attractiveness(nn.Module):
    """logit P(attractive | candidate features): an MLP over numeric features and embeddings."""

    def __init__(self, num_features: int, cat_sizes: list[int], emb_dim: int = 8, hidden: int = 32):
        super().__init__()
        self.emb = nn.ModuleList(nn.Embedding(size, emb_dim) for size in cat_sizes)
        self.mlp = nn.Sequential(nn.Linear(num_features + emb_dim * len(cat_sizes), hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, num: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        """num [N, F], cat [N, C] -> logits [N]."""
        return self.mlp(torch.cat([num, *(e(cat[:, i]) for i, e in enumerate(self.emb))], -1)).squeeze(-1)


class FeaturePBM:
    """PBM with attractiveness sigma(f(features)) (regression EM): the E-step is PBM's, the
    M-step fits f to the posterior P(A = 1 | C) by a few Adam steps (generalised EM)."""

    def __init__(self, num_features: int, cat_sizes: list[int], iterations: int = 20, steps: int = 10,
                 lr: float = 0.02, seed: int = 0):
        torch.manual_seed(seed)
        self.f = _Attractiveness(num_features, cat_sizes)
        self.iterations, self.steps, self.lr = iterations, steps, lr
        self.theta = np.zeros(0)  # [K] P(examine position k)

    @torch.no_grad()
    def attractiveness(self, num: torch.Tensor, cat: torch.Tensor) -> np.ndarray:
        """num [..., F], cat [..., C] -> P(attractive) [...]."""
        shape = num.shape[:-1]
        rows = int(np.prod(shape))  # explicit: a log without numeric features has F = 0
        return torch.sigmoid(self.f(num.reshape(rows, num.shape[-1]), cat.reshape(rows, cat.shape[-1]))
                             ).reshape(shape).numpy().astype(np.float64)

    def fit(self, num: torch.Tensor, cat: torch.Tensor, clicks: np.ndarray, lengths: np.ndarray) -> FeaturePBM:
        """num [S, K, F], cat [S, K, C]: the features of the shown lists; clicks [S, K]."""
        S, K = clicks.shape
        valid = _valid(lengths, K)
        c = np.where(valid, clicks, 0.0)
        x_num, x_cat = num[torch.from_numpy(valid)], cat[torch.from_numpy(valid)]  # [N, F], [N, C]
        opt = torch.optim.Adam(self.f.parameters(), lr=self.lr)
        theta = np.full(K, 0.5)
        for _ in range(self.iterations):
            a = np.zeros((S, K))
            a[valid] = self.attractiveness(x_num, x_cat)
            p_attr, theta = _pbm_step(theta, a, c, valid)
            target = torch.from_numpy(p_attr[valid]).float()
            for _ in range(self.steps):
                opt.zero_grad()
                nn.functional.binary_cross_entropy_with_logits(self.f(x_num, x_cat), target).backward()
                opt.step()
        self.theta = theta
        return self

    def slot_clicks(self, num: torch.Tensor, cat: torch.Tensor, lengths: np.ndarray) -> np.ndarray:
        """num [S, K, F], cat [S, K, C] of the lists to judge -> [S, K] P(click on slot k)
        (0 past a list's length): the direct part of a doubly-robust estimate (gref.offpolicy)."""
        K = num.shape[1]
        return _theta_for(self.theta, K)[None] * self.attractiveness(num, cat) * _valid(lengths, K)

    def expected_clicks(self, num: torch.Tensor, cat: torch.Tensor, lengths: np.ndarray) -> np.ndarray:
        """num [S, K, F], cat [S, K, C] of the lists to judge -> [S] E[clicks]."""
        return self.slot_clicks(num, cat, lengths).sum(1)
