"""Does the feature prior of the click models (issue 34 item 1) move their estimates towards the
oracle? For every (world, seed) of a ``jobs.experiments`` run: the test split's rows -- the logged
order, the upstream order (its never-shown candidates are the point) and every trained model the
unit has (pre-trained GReF, GReF, DCN, the reward's own lists) -- estimated by the click models
with the feature prior (the default) and with the shown documents' mean (the ablation), beside
the oracle's lift. Ray-free; prints JSON.

    python -m benchmarks.unseen_prior --runs runs/families [--units attribute/seed0,...] [--out x.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from gref.clickmodel.estimate import ClickEstimator
from gref.data.batch import read_split
from gref.evaluation import kendall_tau, report_rows
from gref.reranker_io import load_reranker
from gref.sim.world import World
from gref.train.steps import data_meta

MODELS = {"GReF (pre-train only)": "pre", "GReF": "post-gref", "DCN": "dcn", "the reward's lists": "reward-pre"}
KINDS = ("pbm", "dbn")


def unit(root: Path) -> dict:
    meta = data_meta(root / "prep")
    table = read_split(root / "prep" / "sequences" / "test")
    world = World.load(root / "sim" / "world")
    models = {name: load_reranker(root / "ray" / d / "model") for name, d in MODELS.items()
              if (root / "ray" / d / "model" / "model.json").exists()}
    out = {}
    for variant, prior in (("feature_prior", True), ("mean_prior", False)):
        rows = report_rows(models, table, meta, world, estimator=ClickEstimator(table, meta, feature_prior=prior))
        out[variant] = {name: {"oracle": r["click_lift"], "unseen_share": r.get("unseen_share"),
                               **{k: r[f"est_lift_{k}"] for k in KINDS}} for name, r in rows.items()}
    return out


def summary(units: dict) -> dict:
    """Per variant and click model: mean |lift error| (points), the upstream order's error, and the
    Kendall tau of the rows against the oracle (mean over units)."""
    out = {}
    for variant in ("feature_prior", "mean_prior"):
        for kind in KINDS:
            err, up, taus = [], [], []
            for rows in (u[variant] for u in units.values()):
                names = [n for n in rows if n != "logged exposure"]
                err += [abs(rows[n][kind] - rows[n]["oracle"]) * 100 for n in names]
                up.append((rows["upstream order"][kind] - rows["upstream order"]["oracle"]) * 100)
                taus.append(kendall_tau([rows[n][kind] for n in names], [rows[n]["oracle"] for n in names]))
            out[f"{variant}/{kind}"] = {"mean_abs_error_points": float(np.mean(err)),
                                        "upstream_error_points": float(np.mean(up)), "kendall_tau": float(np.mean(taus))}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs/families", help="a jobs.experiments out directory")
    p.add_argument("--units", default="", help="world/seedK,... (default: every unit with a prepared split)")
    p.add_argument("--out", default="", help="also write the JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    runs = Path(args.runs)
    roots = [runs / u for u in args.units.split(",")] if args.units else sorted(
        r.parent for r in runs.glob("*/seed*/prep") if (r / "summary.json").exists())
    units = {}
    for root in roots:
        units[f"{root.parent.name}/{root.name}"] = unit(root)
        print(f"{root.parent.name}/{root.name} done", flush=True)
    result = {"runs": args.runs, "units": units, "summary": summary(units)}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))
    return result


if __name__ == "__main__":
    main()
