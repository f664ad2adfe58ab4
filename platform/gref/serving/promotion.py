"""When a challenger replaces the champion: the rule continuous training applies to an A/B test.

The primary metric is a per-request value (served clicks per request) on each arm's *greedy*
requests (explored lists are another policy). The lift of the challenger over the champion is
b / a - 1 with a delta-method interval. Users, not requests, are what the hash splits between the
arms, and one user's requests are correlated (the same tastes, the same activity), so when the
requests' users are given the interval treats each user as one unit: each arm's mean is a ratio
sum(clicks) / sum(requests) over its users, and its variance comes from the users' residuals
clicks_u - mean * requests_u (the delta method for a ratio metric, Deng et al., KDD 2018). With one
request per user this is the per-request formula. The test
may look at the data up to ``max_looks`` times (each look adds as much traffic), and the chance that
an A/A test ever promotes stays <= alpha / 2 however many looks it takes (one look: the usual 95 %
interval) with either boundary:

    bonferroni       every look at the level alpha / max_looks (the same width at every look)
    obrien_fleming   O'Brien & Fleming's group-sequential boundary (Biometrics 1979): look k of K
                     at z = c * sqrt(K / k), c solved so that the walk of the looks' z statistics
                     crosses with probability alpha -- strict early, near the one-look 1.96 at the
                     last look (K = 2: 2.80 then 1.98, where Bonferroni uses 2.24 at both). It
                     assumes looks of equal size
    obf_spending     the same shape on the information each look actually saw (Lan & DeMets,
                     Biometrika 1983): the level spent by information fraction t (requests so far
                     over ``max_looks`` planned looks' worth) is alpha(t) = 2 - 2 Phi(z_{alpha/2} /
                     sqrt(t)), each look's boundary solved for the level spent since the last; the
                     last look spends what is left. A look cut short (real clients, ``look_timeout_s``)
                     spends less and the next ones keep the rest: the A/A guarantee holds for looks
                     of any size, where obrien_fleming's holds for equal ones only

    promote   the interval is above 0
    rollback  the interval is below 0 (the challenger is worse: it is dropped)
    continue  neither, and looks remain: collect more traffic
    keep      neither after the last look: the champion stays (no evidence either way)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist
from typing import Literal

import numpy as np
from scipy.special import ndtr


@dataclass
class PromotionRule:
    alpha: float = 0.05  # two-sided error level over all looks (0.05: a 95 % interval with one look)
    max_looks: int = 3  # looks at the A/B data before giving up (traffic grows by one batch per look)
    min_requests: int = 100  # greedy requests per arm before a look can decide anything
    unit: Literal["user", "request"] = "user"  # what the interval counts as independent: user (the split's unit) | request
    boundary: Literal["bonferroni", "obrien_fleming", "obf_spending"] = "bonferroni"  # how the level is spent over the looks

    def z(self, look: int, fractions: tuple[float, ...] | None = None) -> float:
        """The interval's half-width in standard errors at ``look`` (1-based) of ``max_looks``;
        ``fractions``: the information fraction of every look so far (obf_spending needs them)."""
        if self.boundary == "bonferroni":
            return NormalDist().inv_cdf(1.0 - self.alpha / (2 * self.max_looks))
        if self.boundary == "obrien_fleming":
            return obrien_fleming_c(self.max_looks, self.alpha) * math.sqrt(self.max_looks / min(look, self.max_looks))
        if self.boundary == "obf_spending":
            if fractions is None or len(fractions) != look:
                raise ValueError(f"obf_spending needs the information fraction of each of the {look} look(s) so far")
            if look >= self.max_looks:  # the last look spends what is left, however much it saw
                fractions = (*fractions[:-1], 1.0)
            return spending_boundaries(tuple(fractions), self.alpha)[-1]
        raise ValueError(f"rule.boundary must be bonferroni, obrien_fleming or obf_spending, got {self.boundary!r}")


def crossing_probability(b: float, looks: int, grid: int = 801) -> float:
    """P(|S_k| >= b for some k <= looks) for a Gaussian random walk S_k (k steps of N(0, 1)): the
    looks' z statistics under the null are S_k / sqrt(k) for equal-sized looks. The density of a
    walk still inside (-b, b) is carried from look to look on a grid (trapezoid rule)."""
    x = np.linspace(-b, b, grid)
    w = np.full(grid, x[1] - x[0])
    w[[0, -1]] /= 2
    phi = lambda u: np.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)  # noqa: E731
    inside = phi(x)
    step = phi(x[:, None] - x[None, :])
    for _ in range(looks - 1):
        inside = step @ (w * inside)
    return float(1.0 - (w * inside).sum())


@lru_cache(maxsize=64)
def obrien_fleming_c(looks: int, alpha: float) -> float:
    """c of the O'Brien-Fleming boundary (look k of K at z = c * sqrt(K / k)): the walk crosses
    b = c * sqrt(K) with probability alpha (two-sided). Bisection on ``crossing_probability``."""
    low, high = NormalDist().inv_cdf(1 - alpha / 2) / math.sqrt(looks), 8.0
    for _ in range(40):  # to ~1e-11
        mid = (low + high) / 2
        low, high = (mid, high) if crossing_probability(mid * math.sqrt(looks), looks) > alpha else (low, mid)
    return (low + high) / 2


def obf_spent(t: float, alpha: float) -> float:
    """Lan & DeMets' O'Brien-Fleming-type spending function: the two-sided level spent by
    information fraction t in (0, 1]: 2 - 2 Phi(z_{1 - alpha/2} / sqrt(t)); alpha at t = 1."""
    nd = NormalDist()
    return 2.0 - 2.0 * nd.cdf(nd.inv_cdf(1.0 - alpha / 2) / math.sqrt(t))


@lru_cache(maxsize=256)
def spending_boundaries(fractions: tuple[float, ...], alpha: float, grid: int = 801) -> list[float]:
    """z boundaries of looks at increasing information fractions t_1 < ... < t_k (<= 1) that spend
    ``obf_spent`` between looks: under the null the looks' z statistics are S(t_j) / sqrt(t_j) for a
    Brownian motion S, and look j's boundary b_j solves P(no crossing before j, |Z_j| >= b_j) =
    spent(t_j) - spent(t_{j-1}). The density of a path still inside is carried from look to look on
    a grid; the mass a look keeps inside +-B is a sum of normal CDFs (closed form in B: bisection
    is cheap). A fraction not above the last one (a look with no new traffic) gets no level (z = inf)."""
    nd = NormalDist()
    t_prev, out = 0.0, []
    x = w = density = None  # the grid, its trapezoid weights, the density of S at t_prev inside
    for t in fractions:
        t = min(float(t), 1.0)
        if t <= t_prev + 1e-9:
            out.append(math.inf)
            continue
        spent = obf_spent(t, alpha)
        target = 1.0 - spent  # P(no crossing up to this look)
        sd = math.sqrt(t - t_prev)
        if density is None:  # the first look: S(t) ~ N(0, t)
            b = nd.inv_cdf(1.0 - spent / 2) * math.sqrt(t)
        else:
            def inside(bound: float) -> float:
                return float((w * density * (ndtr((bound - x) / sd) - ndtr((-bound - x) / sd))).sum())
            low, high = 0.0, 12.0 * math.sqrt(t)
            if inside(high) < target:  # nothing left to spend at this look (numerically)
                out.append(math.inf)
                t_prev = t
                continue
            for _ in range(50):
                mid = (low + high) / 2
                low, high = (mid, high) if inside(mid) < target else (low, mid)
            b = (low + high) / 2
        y = np.linspace(-b, b, grid)
        wy = np.full(grid, y[1] - y[0])
        wy[[0, -1]] /= 2
        if density is None:
            new = np.exp(-0.5 * y * y / t) / math.sqrt(2 * math.pi * t)
        else:
            kernel = np.exp(-0.5 * ((y[:, None] - x[None, :]) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
            new = kernel @ (w * density)
        x, w, density = y, wy, new
        out.append(b / math.sqrt(t))
        t_prev = t
    return out


@dataclass
class Decision:
    action: str  # promote | rollback | continue | keep
    lift: float  # challenger / champion - 1 on the primary metric
    low: float  # the interval at this look's level
    high: float
    z: float
    champion_requests: int
    challenger_requests: int
    why: str


def mean_and_variance(values: np.ndarray, units: np.ndarray | None = None) -> tuple[float, float]:
    """The arm's mean per request and that mean's variance. values [n]; units [n] (the user of each
    request) or None (every request its own unit).

    With units: mean = sum(y) / sum(n) over the units' sums y_u, n_u, and var(mean) =
    var_u(y_u - mean * n_u) / (U * mean(n_u)^2) over the U units (ddof 1)."""
    y = np.asarray(values, float)
    if units is None:
        return float(y.mean()), float(y.var(ddof=1) / len(y))
    _, index = np.unique(np.asarray(units), return_inverse=True)
    y_u, n_u = np.bincount(index, weights=y), np.bincount(index).astype(float)
    mean = float(y_u.sum() / n_u.sum())
    return mean, float((y_u - mean * n_u).var(ddof=1) / (len(y_u) * n_u.mean() ** 2))


def lift_interval(champion: np.ndarray, challenger: np.ndarray, z: float, champion_units: np.ndarray | None = None,
                  challenger_units: np.ndarray | None = None) -> tuple[float, float, float]:
    """(lift, low, high) of mean(challenger) / mean(champion) - 1, delta method, independent arms;
    ``*_units`` (the user of each value) make the interval count users, not requests."""
    ma, va = mean_and_variance(champion, champion_units)
    mb, vb = mean_and_variance(challenger, challenger_units)
    var = vb / ma**2 + mb**2 * va / ma**4
    lift, half = float(mb / ma - 1.0), float(z * math.sqrt(var))
    return lift, lift - half, lift + half


def decide(champion: np.ndarray, challenger: np.ndarray, look: int, rule: PromotionRule,
           champion_units: np.ndarray | None = None, challenger_units: np.ndarray | None = None,
           fractions: tuple[float, ...] | None = None) -> Decision:
    """The action after ``look`` (1-based) given every greedy request's value so far, per arm
    (and, optionally, each request's user: the interval then counts users); ``fractions``: each
    look's share of the planned information so far (the obf_spending boundary's input)."""
    if rule.unit not in ("user", "request"):
        raise ValueError(f"rule.unit must be user or request, got {rule.unit!r}")
    if rule.unit == "request":
        champion_units = challenger_units = None
    z = rule.z(look, fractions)
    na, nb = len(champion), len(challenger)
    last = look >= rule.max_looks
    if min(na, nb) < max(rule.min_requests, 2) or float(np.mean(champion)) <= 0:
        action = "keep" if last else "continue"
        return Decision(action, float("nan"), float("nan"), float("nan"), z, na, nb,
                        f"too little data ({na} / {nb} requests, minimum {rule.min_requests})")
    lift, low, high = lift_interval(champion, challenger, z, champion_units, challenger_units)
    if low > 0:
        action, why = "promote", f"lift {lift:+.2%}, interval [{low:+.2%}, {high:+.2%}] above 0"
    elif high < 0:
        action, why = "rollback", f"lift {lift:+.2%}, interval [{low:+.2%}, {high:+.2%}] below 0"
    else:
        action = "keep" if last else "continue"
        why = f"lift {lift:+.2%}, interval [{low:+.2%}, {high:+.2%}] contains 0" + (
            f" after the last look ({rule.max_looks})" if last else f": look {look + 1} of {rule.max_looks} next")
    return Decision(action, lift, low, high, z, na, nb, why)


def offline_decision(row: dict[str, float], estimators: tuple[str, ...]) -> dict:
    """Whether a new model replaces the champion offline, from its gains over the champion on the
    same test requests (gref.evaluation.add_gains): with an oracle (a simulated world) when its
    exact gain is above 0; without one, only when the paired 95 % interval of *every* estimator in
    ``estimators`` lies above 0. A model as good as the champion, or one that any estimator cannot
    tell apart from it (or calls worse), stays ``challenger``: the online A/B test decides.
    -> {promote, why, gains: {estimator: [gain, low, high]}}."""
    if "gain_oracle" in row:
        gain = row["gain_oracle"]
        gains = {"oracle": [gain, gain, gain]}
    else:
        missing = [k for k in estimators if f"gain_{k}" not in row]
        if missing:
            raise ValueError(f"no paired gain over the champion for estimator(s) {missing}: "
                             "evaluate with compare_to=<the champion's row>")
        gains = {k: [row[f"gain_{k}"], row[f"gain_{k}_lo"], row[f"gain_{k}_hi"]] for k in estimators}
    unsure = [k for k, (_, low, _) in gains.items() if not low > 0]
    worse = [k for k, (_, _, high) in gains.items() if high < 0]
    if not unsure:
        why = "every estimate is above the champion's: " + ", ".join(f"{k} {g:+.2%} [{lo:+.2%}, {hi:+.2%}]"
                                                                     for k, (g, lo, hi) in gains.items())
    elif worse:
        why = f"worse than the champion by {', '.join(worse)}"
    else:
        why = f"not shown better than the champion by {', '.join(unsure)} (interval reaches 0)"
    return {"promote": not unsure, "why": why, "gains": gains}
