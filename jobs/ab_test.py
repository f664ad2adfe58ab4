"""Simulated online A/B test against the Serve endpoint (gref.serving.ab_client; the paper's
Table 4, with simulated users): each answer's list is shown to the world's hidden user model, its
reaction posted back to /feedback; per arm CTR, clicks / likes / long views per request with 95 %
CIs, the oracle's expected clicks, and each arm's lift over the first with a 95 % CI.

    python -m jobs.ab_test --world runs/pipeline/sim/world [--url http://127.0.0.1:8000] [key=value ...]

Without ``url`` the job starts serve.app itself (``app`` = its ServeConfig args; default arms: GReF
vs NAR4Rec, both registered by ``make demo``) and deletes it at the end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gref.cli import parser, resolve_config
from gref.serving.ab_client import ABTestConfig, run


def _build_app(args: dict) -> Any:
    from serve.app import build_app

    return build_app(args)


def _print(summary: dict[str, Any]) -> None:
    print(f"\n== A/B test: {summary['requests']} requests, {summary['errors']} errors, "
          f"{summary['requests_per_s']} req/s ==")
    print("| arm | model | requests | CTR | clicks/req | E[clicks]/req | likes/req | long views/req | p50 ms |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for arm, s in summary["arms"].items():
        if "ctr" not in s:
            print(f"| {arm} | – | {s['requests']} | | | | | | |")
            continue
        cell = " | ".join(f"{s[k]['mean']:.4f} ± {s[k]['ci95']:.4f}" for k in (
            "ctr", "clicks_per_request", "oracle_clicks_per_request", "likes_per_request", "long_views_per_request"))
        print(f"| {arm} | {s['model']} | {s['requests']} | {cell} | {s['latency_ms']['p50']:.1f} |")
    for arm, lifts in summary["lift"].items():
        shown = ", ".join(f"{k} {v['lift']:+.2%} ± {v['ci95']:.2%}" for k, v in lifts.items())
        print(f"lift of {arm} over {summary['lift_vs']}: {shown}")


def main(argv: list[str] | None = None) -> dict:
    p = parser("jobs.ab_test", __doc__)
    p.add_argument("--world", help="simulated world dir (overrides config 'world')")
    p.add_argument("--url", help="a running app (overrides config 'url')")
    args = p.parse_args(argv)
    args.overrides = ([f"world={args.world}"] if args.world else []) + ([f"url={args.url}"] if args.url else []) \
        + args.overrides
    cfg = resolve_config(ABTestConfig, args)
    if not (Path(cfg.world) / "world.json").exists():
        raise SystemExit(f"no simulated world at '{cfg.world}' (jobs.simulate writes DIR/world)")
    summary = run(cfg, build_app=None if cfg.url else _build_app)
    _print(summary)
    return summary


if __name__ == "__main__":
    main()
