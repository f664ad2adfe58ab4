"""The loop's summary (``out``/summary.json, the job's table) and its plot of both arms per round."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gref.loop.config import ContinuousConfig
from gref.loop.state import LoopState, Round


def round_metrics(rnd: Round) -> dict[str, float]:
    """A round's numbers: the decision's lift and interval, the oracle's, both arms' clicks."""
    d = rnd.decision or {}
    out = {k: float(d[k]) for k in ("lift", "low", "high", "oracle_lift") if k in d}
    out.update({f"audit_{role}": float(v) for role, v in (
        ("champion", rnd.audit_champion), ("challenger", rnd.audit_challenger), ("teacher", rnd.audit_teacher))
        if v is not None})
    out.update({k: float(v) for k, v in rnd.looks[-1].items() if k.endswith("_clicks")})
    out["looks"] = float(len(rnd.looks))
    out.update(phase_seconds(rnd))
    return out


def phase_seconds(rnd: Round) -> dict[str, float]:
    """Where a round's wall-clock time went: ``learn_s`` from the previous round's end to this
    round's first A/B request (preparing that round's traffic, training the challenger, deploying),
    ``serve_s`` its looks. Empty for a round that has not served yet."""
    if rnd.since_ms is None or rnd.ab_since_ms is None or rnd.until_ms is None:
        return {}
    return {"learn_s": (rnd.ab_since_ms - rnd.since_ms) / 1000, "serve_s": (rnd.until_ms - rnd.ab_since_ms) / 1000}


def summary(cfg: ContinuousConfig, state: LoopState, seconds: float, audit: bool) -> dict[str, Any]:
    rounds = [state.round(r) for r in range(cfg.rounds + 1)]
    promoted = [rnd for rnd in rounds if rnd.action == "promote"]
    # a promotion that regressed: the promoted version's oracle E[clicks] on the audit set is lower
    # (unknown without an oracle, unless A/A: then every promotion is a false one)
    regressions = sum(1 for rnd in promoted if cfg.aa or (rnd.audit_lift or {}).get("lift", 0.0) < 0) \
        if audit or cfg.aa else None
    out = {"out": str(Path(cfg.out).resolve()), "aa": cfg.aa, "round0_champion": state.round0_champion,
           "final_champion": state.champion, "promotions": len(promoted), "regressions_promoted": regressions,
           "rollbacks": sum(1 for rnd in rounds if rnd.action == "rollback"),
           "minutes": round(seconds / 60, 1), "rounds": [rnd.to_json() for rnd in rounds]}
    phases = [phase_seconds(rnd) for rnd in rounds]
    for phase in ("learn", "serve"):
        out[f"{phase}_minutes"] = [round(p.get(f"{phase}_s", 0.0) / 60, 2) for p in phases]  # per round
    return out


def plot(summary: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = summary["rounds"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    xs = [rnd["round"] for rnd in rounds]
    for role, style in (("champion", "o-"), ("challenger", "s--"), ("teacher", "^:")):
        pts = [(rnd["round"], rnd[f"audit_{role}"]) for rnd in rounds if f"audit_{role}" in rnd]
        if pts:
            axes[0].plot(*zip(*pts), style, label=role)
        pts = [(rnd["round"], rnd["looks"][-1].get(f"{role}_clicks")) for rnd in rounds if rnd.get("looks")]
        pts = [(x, y) for x, y in pts if y is not None]
        if pts:
            axes[1].plot(*zip(*pts), style, label=role)
    for rnd in rounds:
        action = (rnd.get("decision") or {}).get("action")
        if action in ("promote", "rollback"):
            axes[0].annotate(action, (rnd["round"], rnd.get("audit_challenger", np.nan)), fontsize=8)
    axes[0].set_title("oracle E[clicks] / request (fixed audit set)")
    if not any("audit_champion" in rnd for rnd in rounds):
        axes[0].text(0.5, 0.5, "no simulated world: no oracle", ha="center", transform=axes[0].transAxes)
    axes[1].set_title("served clicks / greedy request (A/B)")
    for ax in axes:
        ax.set_xlabel("round")
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
