"""How far the oracle-free estimates can be trusted, over every (world, seed) report a
``jobs.experiments`` run wrote (issue 34): for each estimator (the click models of
gref.clickmodel.estimate), how often its 95 % interval of a row's lift over the logged order
covers the oracle's lift, how often the interval excludes 0 on the wrong side, its mean error,
and the Kendall tau of the rows it ranks against the oracle's ranking (per world and seed, then
averaged). Every row but the logged order itself counts, the reference rows included. Ray-free.

    python -m benchmarks.estimate_audit --runs runs/families [--out benchmarks/results/x.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from gref.evaluation import kendall_tau

LOGGED = "logged exposure"


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
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
