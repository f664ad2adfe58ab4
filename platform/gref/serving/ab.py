"""Sticky A/B assignment: a user's arm is a pure function of (salt, user id, weights).

Weighted rendezvous hashing: every arm draws the user an exponential clock
E_a = -ln(u(salt, user, arm)) / w_a from the user's own uniform u per arm; the user is shown the
arm whose clock rings first. P(arm a) = w_a / sum(w) exactly (the minimum of independent
exponentials), and a weight change moves only the users it must: changing w_a changes E_a alone,
so a user moves only to or from arm a -- adding a 10 % arm moves 10 % of users, all to it; users
between two unchanged arms never move.
"""

from __future__ import annotations

import hashlib
import math


def check_weights(weights: dict[str, float], arms: list[str]) -> dict[str, float]:
    """Normalised weights over known arms; raises ValueError naming the problem."""
    unknown = set(weights) - set(arms)
    if unknown:
        raise ValueError(f"weights name unknown arm(s) {sorted(unknown)} (arms: {sorted(arms)})")
    if any(not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w) or w < 0
           for w in weights.values()):
        raise ValueError(f"weights must be finite numbers >= 0, got {weights}")
    total = sum(float(w) for w in weights.values())
    if not math.isfinite(total) or total <= 0:
        raise ValueError(f"at least one arm needs a weight > 0 and their sum must be finite, got {weights}")
    return {arm: float(weights.get(arm, 0.0)) / total for arm in sorted(arms)}


def user_unit(user_id: str, salt: str = "", arm: str = "") -> float:
    """The user's fixed point in (0, 1) for ``arm``: from the first 8 bytes of sha256(salt:user:arm)."""
    digest = hashlib.sha256(f"{salt}:{user_id}:{arm}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") + 0.5) / 2.0**64


def assign_arm(user_id: str, weights: dict[str, float], salt: str = "") -> str:
    """The arm whose exponential clock -ln(u) / w rings first for this user (weights > 0 only)."""
    return min((a for a in sorted(weights) if weights[a] > 0),
               key=lambda a: -math.log(user_unit(user_id, salt, a)) / weights[a])


def experiment_salt(arms: dict[str, str]) -> str:
    """A salt per experiment: a hash of the arms and what they serve, so a new experiment
    reshuffles users while re-weighting the same arms does not."""
    text = ";".join(f"{name}={uri}" for name, uri in sorted(arms.items()))
    return "ab-" + hashlib.sha256(text.encode()).hexdigest()[:12]
