"""Sticky A/B assignment: a user's arm is a pure function of (salt, user id, weights)."""

from __future__ import annotations

import hashlib


def check_weights(weights: dict[str, float], arms: list[str]) -> dict[str, float]:
    """Normalised weights over known arms; raises ValueError naming the problem."""
    unknown = set(weights) - set(arms)
    if unknown:
        raise ValueError(f"weights name unknown arm(s) {sorted(unknown)} (arms: {sorted(arms)})")
    if any(not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0 for w in weights.values()):
        raise ValueError(f"weights must be numbers >= 0, got {weights}")
    total = float(sum(weights.values()))
    if total <= 0:
        raise ValueError(f"at least one arm needs a weight > 0, got {weights}")
    return {arm: weights.get(arm, 0.0) / total for arm in sorted(arms)}


def user_unit(user_id: str, salt: str = "") -> float:
    """The user's fixed point in [0, 1): the first 8 bytes of sha256(salt:user_id)."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_arm(user_id: str, weights: dict[str, float], salt: str = "") -> str:
    """The arm whose cumulative-weight interval (arms in name order) holds the user's point.
    ``weights`` must be normalised (``check_weights``)."""
    u, edge = user_unit(user_id, salt), 0.0
    arms = [a for a in sorted(weights) if weights[a] > 0]
    for arm in arms:
        edge += weights[arm]
        if u < edge:
            return arm
    return arms[-1]  # u within rounding of 1.0
