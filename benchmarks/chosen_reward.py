"""The reward chosen by held-out click NLL (recipe ``chosen_reward``, issue 33) against the default
recipe, from jobs.experiments runs: per family and seed, each candidate reward's validation loss
and the paired per-request NLL gain of the value-pair one, the reward the run chose and the one
gref.recipe.preferred_reward chooses, and the oracle's lifts over the logged order of the
pre-trained GReF, the default recipe and chosen_reward under either rule; per family and seed group
(validation seeds >= 100, the reported ones below) the paired difference with the default recipe
(points, mean ± 95 % t interval over seeds). Writes the JSON and a generated Markdown page.

    python -m benchmarks.chosen_reward --runs runs/families-valuepairs-check runs/families-chosen-check \\
        --json benchmarks/results/families-chosen-check-cpu.json --page benchmarks/results/families-chosen-check-cpu.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from gref.experiments import LABELS
from gref.recipe import held_out_click_nll, preferred_reward
from gref.stats import t_half_width

LOGGED, FO_BEST = "logged exposure", "features-only best list"
ROWS = {"pre": LABELS["pre"], "default": LABELS["gref"], "chosen": LABELS["chosen_reward"]}
REWARDS = ("reward-pre", "reward-pre-value_pairs8")  # the default reward and its value-pair candidate


def _outcome(run_dir: Path) -> dict:
    return json.loads((run_dir / "outcome.json").read_text())


def unit(root: Path, report: Path) -> dict:
    """One (world, seed): lifts (points over the logged order), the rewards' held-out NLL, the one
    the run chose (its ``post-chosen_reward`` names its teacher; without one it chose the default)
    and the one ``gref.recipe.preferred_reward`` chooses on the same validation requests."""
    rows = json.loads(report.read_text())
    lift = {k: (rows[label]["oracle_clicks"] / rows[LOGGED]["oracle_clicks"] - 1) * 100 for k, label in ROWS.items()}
    lift["features_only_best"] = (rows[FO_BEST]["oracle_clicks"] / rows[LOGGED]["oracle_clicks"] - 1) * 100
    ray = root / "ray"
    fitted = [_outcome(ray / name) for name in REWARDS]
    post = ray / "post-chosen_reward"
    as_run = Path(_outcome(post)["params"]["reward"]).parent.name if (post / "outcome.json").exists() else REWARDS[0]
    nll = [held_out_click_nll(o["outcome"]["model_dir"], root / "prep") for o in fitted]  # as choose_reward: every request
    paired = REWARDS[preferred_reward(nll)]
    gain = nll[0] - nll[1]  # per request: > 0 where the value-pair reward fits better
    # the paired rule's row: the default recipe's model, or the value-pair student the run trained
    paired_lift = lift["default"] if paired == REWARDS[0] else (lift["chosen"] if as_run == paired else None)
    return {"lift": lift | {"paired_rule": paired_lift}, "reward_val_loss": {n: o["outcome"]["best"]["val_loss"] for n, o in zip(REWARDS, fitted)},
            "nll_gain": {"mean": float(gain.mean()), "ci95": t_half_width(gain), "requests": len(gain)},
            "chosen_as_run": as_run, "chosen_paired": paired, "requests": rows[LOGGED]["requests"]}


def collect(runs: list[Path]) -> dict[str, dict[str, dict]]:
    """{world: {seed: unit}} of every unit with a chosen_reward report under any of ``runs``."""
    out: dict[str, dict[str, dict]] = {}
    for run in runs:
        for report in sorted(run.glob("*/seed*/report-*chosen_reward*/report.json")):
            root = report.parent.parent
            out.setdefault(root.parent.name, {})[root.name.removeprefix("seed")] = unit(root, report)
    return out


VALIDATION = 100  # seeds from here on are validation seeds (the recipe was fixed on them); below, a table's


def groups(seeds: dict[str, dict]) -> dict[str, dict[str, dict]]:
    """A family's seeds split into the validation seeds and the reported ones."""
    out = {"validation": {s: u for s, u in seeds.items() if int(s) >= VALIDATION},
           "reported": {s: u for s, u in seeds.items() if int(s) < VALIDATION}}
    return {name: g for name, g in out.items() if g}


def summary(seeds: dict[str, dict], row: str) -> dict:
    """A family's paired comparison over its seeds of ``row`` ("chosen": as run | "paired_rule")
    with the default recipe; None where a seed's row was not trained."""
    units = [seeds[s] for s in sorted(seeds, key=int)]
    if any(u["lift"][row] is None for u in units):
        return {}
    diff = np.array([u["lift"][row] - u["lift"]["default"] for u in units])
    gap = [(u["lift"][row] - u["lift"]["pre"]) / (u["lift"]["features_only_best"] - u["lift"]["pre"])
           for u in units if u["lift"]["features_only_best"] > u["lift"]["pre"]]
    gap_default = [(u["lift"]["default"] - u["lift"]["pre"]) / (u["lift"]["features_only_best"] - u["lift"]["pre"])
                   for u in units if u["lift"]["features_only_best"] > u["lift"]["pre"]]
    chosen = "chosen_as_run" if row == "chosen" else "chosen_paired"
    return {"seeds": len(units), "minus_default_points": float(diff.mean()),
            "ci95": t_half_width(diff) if len(diff) > 1 else float("nan"),
            "above_pre_points": float(np.mean([u["lift"][row] - u["lift"]["pre"] for u in units])),
            "below_pre_seeds": int(sum(u["lift"][row] < u["lift"]["pre"] for u in units)),
            "gap_captured": float(np.mean(gap)) if gap else float("nan"),
            "gap_captured_default": float(np.mean(gap_default)) if gap_default else float("nan"),
            "value_pairs_chosen": sum(u[chosen] == REWARDS[1] for u in units)}


def _name(reward: str) -> str:
    return "value pairs" if reward == REWARDS[1] else "default"


def page(data: dict, sources: list[str]) -> str:
    lines = ["# The reward chosen by held-out click NLL (issue 33)\n",
             f"Generated by `python -m benchmarks.chosen_reward` from {', '.join(f'`{s}`' for s in sources)}; do not edit.\n",
             "Recipe `chosen_reward`: the default reward and the value-pair one (rank 8) are both fitted and one teaches; "
             "a value-pair teacher gives the default pre-trained student zero-effect tables of its own; when the default "
             "reward is chosen the row is the default recipe's model. Two rules: **as run**, the reward the run's row was "
             "trained with (the runs before the paired rule chose by the lower validation loss), and the **paired rule** now in `gref.recipe.preferred_reward`: the value-pair reward only "
             "when its per-request click NLL on the same validation requests is lower beyond chance (paired 95 % t "
             "interval of the gain above 0); its row is the default model or the value-pair student the run trained, so "
             "it needs no training. "
             f"Seeds from {VALIDATION} on are validation seeds no reported table uses; seeds 0-2 are the ones the "
             "families table reports. Lifts: the oracle's E[clicks] over the logged order on the test split's first "
             "2,000 requests, in points.\n",
             "| family | seed | validation loss default / value pairs | NLL gain per request of value pairs (95 % CI) | "
             "chosen as run | paired rule | pre-trained | default recipe | chosen_reward as run | paired rule | "
             "features-only best list |", "|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|"]
    for world, seeds in data["units"].items():
        for seed in sorted(seeds, key=int):
            u, lift = seeds[seed], seeds[seed]["lift"]
            loss = " / ".join(f"{u['reward_val_loss'][r]:.5f}" for r in REWARDS)
            g = u["nll_gain"]
            paired = "not trained" if lift["paired_rule"] is None else f"{lift['paired_rule']:+.2f}"
            lines.append(f"| `{world}` | {seed} | {loss} | {g['mean']:+.4f} ± {g['ci95']:.4f} | {_name(u['chosen_as_run'])} | "
                         f"{_name(u['chosen_paired'])} | {lift['pre']:+.2f} | {lift['default']:+.2f} | {lift['chosen']:+.2f} | "
                         f"{paired} | {lift['features_only_best']:+.2f} |")
    lines += ["", "| family | seeds | rule | − default recipe (points, paired, 95 % CI) | − pre-trained (points) | "
              "seeds below the pre-trained | gap captured: default recipe → this | value-pair reward chosen |",
              "|---|---|---|---:|---:|---:|---:|---:|"]
    for key, per_rule in data["families"].items():
        world, group = key.split("/")
        for rule, s in per_rule.items():
            if not s:
                lines.append(f"| `{world}` | {group} | {rule} | not trained | | | | |")
                continue
            ci = f" ± {s['ci95']:.2f}" if s["seeds"] > 1 else ""
            lines.append(f"| `{world}` | {s['seeds']} {group} | {rule} | {s['minus_default_points']:+.2f}{ci} | "
                         f"{s['above_pre_points']:+.2f} | {s['below_pre_seeds']} | {s['gap_captured_default']:.0%} → "
                         f"{s['gap_captured']:.0%} | {s['value_pairs_chosen']} of {s['seeds']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, help="jobs.experiments out dirs with chosen_reward reports")
    p.add_argument("--json", required=True, help="write the collected units and the per-family summary here")
    p.add_argument("--page", default="", help="also write the generated Markdown page here")
    args = p.parse_args(argv)
    units = collect([Path(r) for r in args.runs])
    if not units:
        raise SystemExit(f"no */seed*/report-*chosen_reward*/report.json under {args.runs}")
    data = {"runs": args.runs, "units": units,
            "families": {f"{w}/{g}": {"as run": summary(u, "chosen"), "paired rule": summary(u, "paired_rule")}
                         for w, seeds in units.items() for g, u in groups(seeds).items()}}
    Path(args.json).write_text(json.dumps(data, indent=1) + "\n")
    if args.page:
        Path(args.page).write_text(page(data, [args.json]))
    print(json.dumps(data["families"], indent=1))
    return data


if __name__ == "__main__":
    main()
