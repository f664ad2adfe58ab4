"""Continuous training (gref.loop): serve -> learn from what was served -> challenge -> promote
only what is proven better, round after round, on Ray Serve + Train + Data and MLflow.

    python -m jobs.continuous [--config configs/continuous.yaml] [key=value ...]

Round 0 serves the champion alone; every later round post-trains a challenger on the traffic
served so far, A/B-tests it against the champion (``traffic=simulated``: the world's users;
``traffic=clients``: real clients of ``host``:``port``), promotes or rolls back on the interval of
the served clicks' lift, and exports the round's feedback for the next. Killed, the same command
resumes. Prints the rounds' table; ``out``/summary.json and MLflow hold the rest (docs/continuous.md).
"""

from __future__ import annotations

import math
from typing import Any

from gref.cli import parser, resolve_config
from gref.config import ConfigError
from gref.loop import ContinuousConfig, check, run


def _interval(x: dict[str, float] | None) -> str:
    return f"{x['lift']:+.2%} [{x['low']:+.2%}, {x['high']:+.2%}]" if x and math.isfinite(x.get("lift", math.nan)) else "–"


def _print(summary: dict[str, Any]) -> None:
    print(f"\n== continuous training: {len(summary['rounds']) - 1} rounds{' (A/A)' if summary['aa'] else ''}, "
          f"{summary['minutes']} min ==")
    print("| round | champion | challenger | looks | served clicks lift [interval] | decision "
          "| oracle lift (A/B) | oracle lift (audit set, paired) | champion vs round 0 (oracle) "
          "| teacher vs round 0 (oracle) |")
    print("|---:|---:|---:|---:|---|---|---|---|---|---|")
    for rnd in summary["rounds"]:
        d = rnd.get("decision") or {}
        oracle = {"lift": d["oracle_lift"], "low": d["oracle_low"], "high": d["oracle_high"]} if "oracle_lift" in d \
            else None
        challenger = f"v{rnd['challenger']}" if "challenger" in rnd else "–"
        print(f"| {rnd['round']} | v{rnd.get('champion')} | {challenger} | {len(rnd.get('looks', []))} "
              f"| {_interval(d if 'lift' in d else None)} | {d.get('action') or rnd.get('train_error', '–')} "
              f"| {_interval(oracle)} | {_interval(rnd.get('audit_lift'))} "
              f"| {_interval(rnd.get('audit_champion_vs_round0'))} | {_interval(rnd.get('audit_teacher_vs_round0'))} |")
    final = summary.get("final_vs_round0")
    regressions = summary["regressions_promoted"]
    print(f"promotions {summary['promotions']} (regressions by the oracle: "
          f"{'unknown, no simulated world' if regressions is None else regressions}), "
          f"rollbacks {summary['rollbacks']}; final champion v{summary['final_champion']}"
          + (f": {_interval(final)} over the round-0 champion (oracle, audit set)" if final else ""))
    learn, serve = summary["learn_minutes"], summary["serve_minutes"]
    print(f"time: learning (prepare, train, deploy) {sum(learn):.1f} min, per round "
          f"{', '.join(f'{m:.1f}' for m in learn[1:])}; serving (the looks) {sum(serve):.1f} min")


def main(argv: list[str] | None = None) -> dict:
    p = parser("jobs.continuous", __doc__)
    args = p.parse_args(argv)
    cfg = resolve_config(ContinuousConfig, args)
    try:
        check(cfg)
    except ConfigError as err:
        raise SystemExit(str(err)) from None
    from serve.app import loop_app

    summary = run(cfg, loop_app())
    _print(summary)
    return summary


if __name__ == "__main__":
    main()
