"""How far the oracle-free estimates can be trusted, over every (world, seed) report a
``jobs.experiments`` run wrote (issue 34): for each estimator (the click models of
gref.clickmodel.estimate), how often its 95 % interval of a row's lift over the logged order
covers the oracle's lift, how often the interval excludes 0 on the wrong side, its mean error,
and the Kendall tau of the rows it ranks against the oracle's ranking (per world and seed, then
averaged). Every row but the logged order itself counts, the reference rows included. Then the
decisions an estimator would make without an oracle (keep post-training over the pre-trained model?
the challenger over the baseline?): how often the sign of its estimated gain agrees with the
oracle's. Ray-free.

    python -m benchmarks.estimate_audit --runs runs/families [--out benchmarks/results/x.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from gref.evaluation import kendall_tau

LOGGED = "logged exposure"
# (challenger, champion): the decisions a team makes from these estimates without an oracle
DECISIONS = (("GReF", "GReF (pre-train only)"), ("GReF", "DCN"))


def reports(runs: Path) -> dict[tuple[str, str], dict]:
    """{(world, seed dir): rows} of every report.json under ``runs`` (one per world and seed: the
    report of the largest table set when several were written)."""
    found: dict[tuple[str, str], tuple[int, dict]] = {}
    for path in sorted(runs.glob("*/seed*/report*/report.json")):
        rows = json.loads(path.read_text())
        key = (path.parts[-4], path.parts[-3])
        if key not in found or len(rows) > found[key][0]:
            found[key] = (len(rows), rows)
    return {k: rows for k, (_, rows) in found.items()}


def audit(all_rows: dict[tuple[str, str], dict]) -> dict:
    """Per estimator kind: coverage, wrong-sign exclusions, errors and rank agreement."""
    kinds = sorted({k[len("est_lift_"):-len("_lo")] for rows in all_rows.values() for k in rows[LOGGED]
                    if k.startswith("est_lift_") and k.endswith("_lo")})
    out = {}
    for kind in kinds:
        covered, wrong_sign, errors, taus, per_world = [], [], [], [], {}
        for (world, _), rows in all_rows.items():
            names = [n for n, r in rows.items() if n != LOGGED and "click_lift" in r and f"est_lift_{kind}" in r]
            for n in names:
                r, truth = rows[n], rows[n]["click_lift"]
                lo, hi = r[f"est_lift_{kind}_lo"], r[f"est_lift_{kind}_hi"]
                covered.append(lo <= truth <= hi)
                wrong_sign.append((lo > 0 and truth < 0) or (hi < 0 and truth > 0))
                errors.append(r[f"est_lift_{kind}"] - truth)
                per_world.setdefault(world, []).append(lo <= truth <= hi)
            taus.append(kendall_tau([rows[n][f"est_lift_{kind}"] for n in names], [rows[n]["click_lift"] for n in names]))
        out[kind] = {"points": len(covered), "coverage": float(np.mean(covered)),
                     "coverage_by_world": {w: float(np.mean(c)) for w, c in per_world.items()},
                     "wrong_sign_exclusions": int(np.sum(wrong_sign)),
                     "mean_error": float(np.mean(errors)), "mean_abs_error": float(np.mean(np.abs(errors))),
                     "kendall_tau_mean": float(np.nanmean(taus)), "kendall_tau_min": float(np.nanmin(taus))}
    return out


def decisions(all_rows: dict[tuple[str, str], dict], kinds: list[str]) -> dict:
    """Per (challenger vs champion) and estimator: in how many units the sign of the estimated gain
    (the difference of the two rows' estimated lifts) agrees with the oracle's, and the wrong keeps
    (estimated > 0, oracle < 0) and wrong rejects (estimated < 0, oracle > 0). Units where both
    rows show the same lists (every gain exactly 0: epoch selection kept the start) make no decision."""
    out = {}
    for challenger, champion in DECISIONS:
        per_kind = {}
        for kind in kinds:
            units = []
            for (world, seed), rows in sorted(all_rows.items()):
                if challenger not in rows or champion not in rows:
                    continue
                a, b = rows[challenger], rows[champion]
                truth = a["click_lift"] - b["click_lift"]
                estimate = a[f"est_lift_{kind}"] - b[f"est_lift_{kind}"]
                if truth == 0 and estimate == 0:
                    continue
                units.append({"unit": f"{world}/{seed}", "oracle": truth, "estimate": estimate})
            per_kind[kind] = {"decisions": len(units),
                              "agree": int(sum(np.sign(u["oracle"]) == np.sign(u["estimate"]) for u in units)),
                              "wrong_keeps": [u["unit"] for u in units if u["estimate"] > 0 > u["oracle"]],
                              "wrong_rejects": [u["unit"] for u in units if u["estimate"] < 0 < u["oracle"]],
                              "units": units}
        out[f"{challenger} vs {champion}"] = per_kind
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs/families", help="a jobs.experiments out directory")
    p.add_argument("--out", default="", help="also write the JSON here")
    args = p.parse_args(argv)
    all_rows = reports(Path(args.runs))
    if not all_rows:
        raise SystemExit(f"no */seed*/report*/report.json under {args.runs}: run jobs.experiments first")
    result = {"runs": args.runs, "units": sorted(f"{w}/{s}" for w, s in all_rows),
              "rows_per_unit": sorted({len(r) - 1 for r in all_rows.values()}), "estimators": audit(all_rows)}
    result["decisions"] = decisions(all_rows, sorted(result["estimators"]))
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
