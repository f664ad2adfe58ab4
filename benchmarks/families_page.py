"""The families results page, generated (never edited by hand): issue 33's targets per user-model
family from the per-seed reports of a ``jobs.experiments --config configs/families.yaml`` run, the
oracle-free estimators' audit (benchmarks.estimate_audit) and the reward audit
(benchmarks.reward_audit) beside them.

    python -m benchmarks.families_page --runs runs/families --json benchmarks/results/families-3seeds-cpu.json
        # collects the run's per-seed reports into the JSON (then the page)
    python -m benchmarks.families_page --json benchmarks/results/families-3seeds-cpu.json \\
        [--estimates benchmarks/results/estimate-audit-families-cpu.json] \\
        [--rewards benchmarks/results/reward-audit-families-cpu.json] \\
        [--unseen benchmarks/results/unseen-prior-families-seed0-cpu.json] \\
        [--chosen benchmarks/results/families-chosen-cpu.json] --page docs/results-families.md

With no argument it regenerates docs/results-families.md from ``SOURCES`` (what tests/unit/test_docs.py
checks). ``--chosen``: benchmarks.chosen_reward's units, the default recipe since the reward is chosen
by held-out click NLL (issue 33), its targets on the families table's seeds beside the previous default's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.chosen_reward import REWARDS, VALIDATION
from benchmarks.estimate_audit import reports
from gref.stats import t_half_width

ROOT = Path(__file__).resolve().parents[1]
# the page's inputs, in page()'s argument order (python -m benchmarks.families_page with no argument)
SOURCES = {"data": "benchmarks/results/families-3seeds-cpu.json", "estimates": "benchmarks/results/estimate-audit-families-cpu.json",
           "rewards": "benchmarks/results/reward-audit-families-cpu.json",
           "unseen": "benchmarks/results/unseen-prior-families-seed0-cpu.json", "chosen": "benchmarks/results/families-chosen-cpu.json"}
VALUE_PAIRS = REWARDS[1]

GREF, PRE = "GReF", "GReF (pre-train only)"
STRUCTURED = "GReF distilled from the structured list click model alone (no list context)"
DCN, TEACHER = "DCN", "list click model + beam search (GReF's teacher)"
LOGGED, FO_BEST, ORACLE_BEST = "logged exposure", "features-only best list", "oracle best list"
ROWS = (("logged order", LOGGED), ("oracle best list (reference)", ORACLE_BEST),
        ("features-only best list (reference)", FO_BEST), ("DCN (best pointwise baseline)", DCN),
        ("GReF pre-trained", PRE), ("**GReF, default recipe**", GREF),
        ("GReF, structured reward alone (ablation: no list context)", STRUCTURED), ("the default reward's own lists", TEACHER))


def collect(runs: Path) -> dict[str, dict[str, dict]]:
    """{world: {seed: report rows}} of every (world, seed) with a report (benchmarks.estimate_audit.reports)."""
    out: dict[str, dict[str, dict]] = {}
    for (world, seed_dir), rows in reports(runs).items():
        out.setdefault(world, {})[seed_dir.removeprefix("seed")] = rows
    return out


def _pm(values: list[float], scale: float = 100.0, unit: str = " %") -> str:
    v = np.asarray(values) * scale
    return f"{v.mean():+.2f}{unit} ± {t_half_width(v):.2f}" if len(v) > 1 else f"{v.mean():+.2f}{unit}"


def world_section(world: str, seeds: dict[str, dict]) -> tuple[str, dict]:
    """The world's table and its targets; -> (markdown, the figures the summary needs)."""
    reports = [seeds[s] for s in sorted(seeds, key=int)]
    lines = [f"### `{world}` (seed{'s' if len(reports) > 1 else ''} {', '.join(sorted(seeds, key=int))})\n",
             "| row | E[clicks] vs logged (mean ± 95 % CI) | per seed | headroom share |", "|---|---:|---:|---:|"]
    for label, row in ROWS:
        have = [r for r in reports if row in r]
        if not have:
            continue
        lifts = [r[row]["oracle_clicks"] / r[LOGGED]["oracle_clicks"] - 1 for r in have]
        share = [r[row].get("headroom_share", float("nan")) for r in have]
        lines.append(f"| {label} | {_pm(lifts)} | {', '.join(f'{x * 100:+.2f}' for x in lifts)} | "
                     f"{np.nanmean(share):.0%} |")
    figures: dict = {}
    both = [r for r in reports if GREF in r and PRE in r]
    if both:
        adds = [(r[GREF]["click_lift"] - r[PRE]["click_lift"]) for r in both]
        gap = [(r[GREF]["oracle_clicks"] - r[PRE]["oracle_clicks"]) / (r[FO_BEST]["oracle_clicks"] - r[PRE]["oracle_clicks"])
               for r in both if r[FO_BEST]["oracle_clicks"] > r[PRE]["oracle_clicks"]]
        figures = {"adds_points": float(np.mean(adds) * 100), "adds_ci": t_half_width(np.asarray(adds) * 100),
                   "below_pre_seeds": int(sum(a < 0 for a in adds)), "seeds": len(adds),
                   "gap_captured": float(np.mean(gap)) if gap else float("nan"),
                   "gref_lift": float(np.mean([r[GREF]["click_lift"] for r in both]) * 100)}
        lines += ["", f"- post-training adds **{_pm(adds, unit=' points')}** over the pre-trained GReF (per seed "
                  f"{', '.join(f'{a * 100:+.2f}' for a in adds)}; below it on {figures['below_pre_seeds']} of "
                  f"{len(adds)} seeds); it captures {figures['gap_captured']:.0%} of the gap from the pre-trained GReF "
                  "to the features-only best list."]
        if all(DCN in r for r in both):
            vs = [(r[GREF]["click_lift"] - r[DCN]["click_lift"]) for r in both]
            figures["vs_dcn_points"] = float(np.mean(vs) * 100)
            figures["vs_dcn_ci"] = t_half_width(np.asarray(vs) * 100)
            lines.append(f"- GReF vs DCN: {_pm(vs, unit=' points')} (per seed {', '.join(f'{v * 100:+.2f}' for v in vs)}).")
        if all(STRUCTURED in r for r in both):
            ctx = [(r[GREF]["click_lift"] - r[STRUCTURED]["click_lift"]) for r in both]
            figures["context_points"] = float(np.mean(ctx) * 100)
            lines.append(f"- the reward's list context (default vs the structured reward alone): {_pm(ctx, unit=' points')}.")
    return "\n".join(lines) + "\n", figures


def targets_table(figures: dict[str, dict]) -> str:
    lines = ["| family | post-training adds (points, ≥ +2) | never below pre-trained | ≥ DCN (points) | gap captured |",
             "|---|---:|---:|---:|---:|"]
    for world, f in figures.items():
        if not f:
            continue
        ok = lambda cond: "met" if cond else "**not met**"  # noqa: E731
        ci = lambda key: f" ± {f[key]:.2f}" if f["seeds"] > 1 else " (1 seed)"  # noqa: E731
        lines.append(f"| {world} | {f['adds_points']:+.2f}{ci('adds_ci')} ({ok(f['adds_points'] >= 2)}) | "
                     f"{f['seeds'] - f['below_pre_seeds']}/{f['seeds']} ({ok(f['below_pre_seeds'] == 0)}) | "
                     + (f"{f['vs_dcn_points']:+.2f}{ci('vs_dcn_ci')} ({ok(f['vs_dcn_points'] >= 0)})" if "vs_dcn_points" in f
                        else "–") + f" | {f['gap_captured']:.0%} |")
    gaps = [f["gap_captured"] for f in figures.values() if f and f["gap_captured"] == f["gap_captured"]]
    lines.append(f"\nMean gap captured over the families: **{np.mean(gaps):.0%}** (target ≥ 40 %)." if gaps else "")
    if "attribute" in figures and figures["attribute"]:
        lift = figures["attribute"]["gref_lift"]
        lines.append(f"The demo's family (`attribute`): the default recipe {lift:+.2f} % over the logged order "
                     f"(target ≥ +6 %: {'met' if lift >= 6 else '**not met**'}).")
    return "\n".join(lines) + "\n"


def chosen_targets(chosen: dict) -> str:
    """Issue 33's targets of the default recipe (the reward chosen by held-out click NLL, the paired
    rule) on the families table's seeds (below benchmarks.chosen_reward.VALIDATION), per family, beside
    the previous default (the configured reward alone) on the same requests."""
    lines = ["| family | seeds | post-training adds (points, ≥ +2) | never below pre-trained | "
             "− previous default (points) | value-pair reward chosen | gap captured: previous → now |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    ok = lambda cond: "met" if cond else "**not met**"  # noqa: E731
    pm = lambda v: f"{v.mean():+.2f} ± {t_half_width(v):.2f}" if len(v) > 1 else f"{v.mean():+.2f}"  # noqa: E731
    gaps, demo, worse = [], "", []  # worse: (family, seed) where the new default is below the previous one
    for world, seeds in chosen["units"].items():
        reported = [s for s in sorted(seeds, key=int) if int(s) < VALIDATION]
        units = [seeds[s] for s in reported]
        if not units or any(u["lift"]["paired_rule"] is None for u in units):
            continue
        lift = lambda key: np.array([u["lift"][key] for u in units])  # noqa: E731  points over the logged order
        adds, vs_before = lift("paired_rule") - lift("pre"), lift("paired_rule") - lift("default")
        span = lift("features_only_best") - lift("pre")
        gap_now, gap_before = np.mean((adds / span)[span > 0]), np.mean(((lift("default") - lift("pre")) / span)[span > 0])
        gaps.append((gap_before, gap_now))
        below = int((adds < 0).sum())
        worse += [f"{world} seed {s}" for s, d in zip(reported, vs_before) if d < 0]
        if world == "attribute":
            now = lift("paired_rule").mean()
            demo = f"The demo's family (`attribute`): {now:+.2f} % over the logged order (target ≥ +6 %: {ok(now >= 6)}).\n"
        lines.append(f"| {world} | {len(units)} | {pm(adds)} ({ok(adds.mean() >= 2)}) | {len(units) - below}/{len(units)} "
                     f"({ok(below == 0)}) | {pm(vs_before)} | "
                     f"{sum(u['chosen_paired'] == VALUE_PAIRS for u in units)} of {len(units)} | {gap_before:.0%} → {gap_now:.0%} |")
    if gaps:
        before, now = np.mean(gaps, axis=0)
        lines.append(f"\nMean gap captured over these families: **{now:.0%}** (previous default {before:.0%}; target ≥ 40 %).")
    lines.append(f"Below the previous default on: {', '.join(worse)}." if worse else
                 "Never below the previous default on any seed.")
    return "\n".join(lines) + "\n" + demo


def estimates_section(audit: dict) -> str:
    lines = ["| estimator | points (row × seed × world) | 95 % interval covers the oracle's lift | wrong-sign exclusions | "
             "mean error (points) | Kendall τ vs the oracle (mean, min) |", "|---|---:|---:|---:|---:|---:|"]
    for kind, a in audit["estimators"].items():
        lines.append(f"| {kind} | {a['points']} | {a['coverage']:.0%} | {a['wrong_sign_exclusions']} | "
                     f"{a['mean_error'] * 100:+.2f} | {a['kendall_tau_mean']:.2f}, {a['kendall_tau_min']:.2f} |")
    return "\n".join(lines) + "\n"


def decisions_section(audit: dict) -> str:
    lines = ["| decision | estimator | units deciding | sign agrees with the oracle | wrong keeps | wrong rejects |",
             "|---|---|---:|---:|---|---|"]
    for decision, per_kind in audit.get("decisions", {}).items():
        for kind, a in per_kind.items():
            lines.append(f"| {decision} | {kind} | {a['decisions']} | {a['agree']} | {', '.join(a['wrong_keeps']) or '-'} | "
                         f"{', '.join(a['wrong_rejects']) or '-'} |")
    return "\n".join(lines) + "\n"


def rewards_section(audit: dict) -> str:
    lines = ["| reward | held-out click NLL | promised (mean) | promised (pessimistic) | members' std | delivered (oracle) | "
             "optimism of the mean | of the pessimistic value |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for unit, rewards in audit["units"].items():
        for kind, a in rewards.items():
            lines.append(f"| {unit} {kind} | {a['click_nll']:.4f} | {a['promised_mean']:+.1%} | {a['promised_pessimistic']:+.1%} | "
                         f"{a['member_std']:.1%} | {a['delivered']:+.1%} | {a['optimism_mean'] * 100:+.1f} | "
                         f"{a['optimism_pessimistic'] * 100:+.1f} |")
    return "\n".join(lines) + "\n"


def unseen_section(bench: dict) -> str:
    lines = ["| click model, prior | mean abs lift error (points) | the upstream order's error (points) | Kendall τ |",
             "|---|---:|---:|---:|"]
    for key, a in bench["summary"].items():
        variant, kind = key.split("/")
        lines.append(f"| {kind.upper()}, {variant.replace('_', ' ')} | {a['mean_abs_error_points']:.2f} | "
                     f"{a['upstream_error_points']:+.2f} | {a['kendall_tau']:.2f} |")
    return "\n".join(lines) + "\n"


def page(data: dict, estimates: dict | None, rewards: dict | None, sources: list[str], unseen: dict | None = None,
         chosen: dict | None = None) -> str:
    sections, figures = [], {}
    for world, seeds in data.items():
        text, figures[world] = world_section(world, seeds)
        sections.append(text)
    out = ["# Results: user-model families (issue 33)\n",
           f"Generated by `python -m benchmarks.families_page` from {', '.join(f'`{s}`' for s in sources)}; do not edit.\n",
           "Every family's knobs were fixed when it was written, and each recipe before it met the families' reported "
           "seeds; lifts are the oracle's E[clicks] over the logged order on each seed's test split, mean ± the 95 % t "
           "interval over seeds (paired per seed). The reference rows are not bounds.\n"]
    if chosen:
        out += ["## Issue 33's targets: the default recipe (the reward chosen by held-out click NLL)\n",
                "The value-pair reward is fitted beside the configured one and teaches only where its per-request "
                "validation click NLL is lower beyond chance (`gref.recipe.preferred_reward`, fixed on validation seeds "
                f"≥ {VALIDATION}: benchmarks/results/families-chosen-cpu.md). Seeds 0-2 of every family, the test split's "
                "first 2,000 requests; the previous default on the same requests. DCN is not in these runs: the "
                "previous default's margin over it is in the next table (every test request).\n",
                chosen_targets(chosen)]
    out += ["## Issue 33's targets: the previous default (the configured reward alone)\n" if chosen else
            "## Issue 33's targets\n", targets_table(figures), "## Per family (the previous default)\n" if chosen else
            "## Per family\n", *sections]
    if estimates:
        out += ["## The oracle-free estimates against the oracle (issue 34)\n",
                "Every row of every report above but the logged order itself (references included); these reports were "
                "written by the estimator of commit 7a6aed0 (the feature prior without its level rescaling).\n",
                estimates_section(estimates)]
        if estimates.get("decisions"):
            out += ["### The decisions they would make\n",
                    "Keep the challenger when its estimated lift exceeds the champion's (the sign of the point estimate; "
                    "units where both rows show the same lists decide nothing). A wrong reject is a better model thrown "
                    "away, a wrong keep a worse one shipped. Position-based click models cannot see list effects, so "
                    "between two rankers that differ in them they decide no better than a coin: such a change is judged "
                    "by an online A/B test (docs/serving.md), not offline.\n", decisions_section(estimates)]
    if unseen:
        out += ["### The click models' feature prior, ablated (benchmarks.unseen_prior, the final estimator)\n",
                f"Units {', '.join(unseen['units'])}; rows: the logged and upstream orders, the pre-trained GReF, GReF, "
                "DCN, the default reward's lists.\n", unseen_section(unseen)]
    if rewards:
        out += ["## What the reward promises and what it delivers (issue 33 item 3)\n",
                f"Test split, first {rewards['requests']} requests of each unit. Promised = the reward's E[clicks] of its "
                "own search lists over the logged lists' (oracle-free); delivered = the oracle's.\n", rewards_section(rewards)]
    return "\n".join(out)


def render(root: Path) -> str:
    """The page from ``SOURCES`` under ``root``."""
    inputs = {key: json.loads((root / path).read_text()) for key, path in SOURCES.items()}
    return page(inputs["data"], inputs["estimates"], inputs["rewards"], list(SOURCES.values()), inputs["unseen"],
                inputs["chosen"])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="", help="collect this jobs.experiments run's reports into --json first")
    p.add_argument("--json", default="", help="the per-seed reports: {world: {seed: rows}}")
    p.add_argument("--estimates", default="", help="benchmarks.estimate_audit JSON")
    p.add_argument("--rewards", default="", help="benchmarks.reward_audit JSON")
    p.add_argument("--unseen", default="", help="benchmarks.unseen_prior JSON")
    p.add_argument("--chosen", default="", help="benchmarks.chosen_reward JSON (the default recipe's targets)")
    p.add_argument("--page", default="docs/results-families.md")
    args = p.parse_args(argv)
    if not any((args.runs, args.json, args.estimates, args.rewards, args.unseen, args.chosen)):
        Path(args.page).write_text(render(ROOT))
        print(f"wrote {args.page}")
        return
    if not args.json:
        p.error("--json names the per-seed reports (with --runs: where to collect them)")
    if args.runs:
        data = collect(Path(args.runs))
        if not data:
            raise SystemExit(f"no */seed*/report*/report.json under {args.runs}")
        Path(args.json).write_text(json.dumps(data) + "\n")
    data = json.loads(Path(args.json).read_text())
    load = lambda f: json.loads(Path(f).read_text()) if f else None  # noqa: E731
    sources = [s for s in (args.json, args.estimates, args.rewards, args.unseen, args.chosen) if s]
    Path(args.page).write_text(page(data, load(args.estimates), load(args.rewards), sources, load(args.unseen),
                                    load(args.chosen)))
    print(f"wrote {args.page}")


if __name__ == "__main__":
    main()
