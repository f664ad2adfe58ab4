"""The platform's intervals, in one place (scipy where it has the function). Each name says what
it is an interval of and what it assumes:

  t_half_width            the mean of a few values (seeds): Student's t, n - 1 degrees of freedom
  normal_mean_interval    the mean of many independent values (requests): the normal approximation
  paired_ratio_lift       mean(new) / mean(base) - 1 on the same units, delta method (paired)
  independent_ratio_lift  an estimate (with its standard error) / the mean of an independent
                          sample - 1, delta method (the off-policy estimates vs production)

The A/B test's lift between two independent arms with users as units, and its sequential
boundaries, live with the promotion rule (gref.serving.promotion); the bootstrap of the click-model
estimates with the estimates (gref.clickmodel.estimate).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def t_half_width(values: np.ndarray, level: float = 0.95) -> float:
    """Half-width of the ``level`` t interval of the mean of ``values`` (0 for fewer than 2)."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n < 2:
        return 0.0
    return float(stats.t.ppf(0.5 + level / 2, n - 1) * values.std(ddof=1) / math.sqrt(n))


def normal_mean_interval(values: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """{mean, ci95: the normal interval's half-width} of many independent values (NaN for < 2)."""
    values = np.asarray(values, dtype=float)
    z = stats.norm.ppf(0.5 + level / 2)
    half = float(z * values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")
    return {"mean": float(values.mean()), "ci95": half}


def paired_ratio_lift(base: np.ndarray, new: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """mean(new) / mean(base) - 1 on the same units with its interval by the delta method: the
    lift's standard error is sd(new - (1 + lift) base) / (sqrt(n) mean(base)). -> {lift, low, high}"""
    base, new = np.asarray(base, dtype=float), np.asarray(new, dtype=float)
    lift = float(new.mean() / base.mean() - 1.0)
    z = stats.norm.ppf(0.5 + level / 2)
    half = z * float(np.std(new - (1.0 + lift) * base, ddof=1)) / (math.sqrt(len(base)) * float(base.mean()))
    return {"lift": lift, "low": lift - half, "high": lift + half}


def independent_ratio_lift(value: float, se: float, base: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """value / mean(base) - 1, where ``value`` is an estimate with standard error ``se`` and
    ``base`` [P] an independent sample of the denominator's units, with its interval by the delta
    method: var(lift) = se^2 / mean^2 + value^2 var(mean) / mean^4. -> {lift, low, high}"""
    base = np.asarray(base, dtype=float)
    mean = float(base.mean())
    base_var = float(base.var(ddof=1)) / len(base) if len(base) > 1 else 0.0
    lift = value / mean - 1.0
    half = float(stats.norm.ppf(0.5 + level / 2)) * math.sqrt(se ** 2 / mean ** 2 + value ** 2 * base_var / mean ** 4)
    return {"lift": lift, "low": lift - half, "high": lift + half}
