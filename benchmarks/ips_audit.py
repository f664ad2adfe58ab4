"""How far to trust the randomisation bucket's IPS estimate (gref.evaluation.randomized_ips) where
the truth is known: a unit (world, seed) that ``jobs.experiments`` trained, its test requests, every
row of its report (production's logged order, the upstream order, the ceilings, each model) --
and, per row, three numbers side by side (prints JSON):

  * ``oracle``: the row's exact E[clicks] under the hidden user model;
  * ``expected_ips``: what the IPS estimate converges to with unlimited randomised traffic --
    E over the bucket's uniform shuffles of m * 1[shown_k = placed_k] * click_k, computed without
    click noise (the world's exact per-slot click probability of a shuffled list whose slot k holds
    the row's item, ``draws`` shuffles per slot). expected_ips - oracle is the estimator's bias:
    the list effects (series, category fatigue) it cannot see, since it credits an item with the
    clicks it got among random neighbours;
  * ``ips``: one realised estimate, as a team would get it, if all ``requests`` test requests had
    been in the bucket (a shuffle and sampled clicks each), with its bootstrap 95 % CI; and the
    bucket size that a +-2 % interval would need.

    python -m benchmarks.ips_audit --unit runs/experiments/default/seed0 [--requests 5000] [--draws 4]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from gref.clickmodel.estimate import bootstrap_summary
from gref.data.batch import collate, iter_tables, read_split
from gref.data.pairs import padded
from gref.evaluation import (
    kendall_tau,
    logged_ranker,
    model_ranker,
    randomized_ips,
    reference_ranker,
    upstream_ranker,
)
from gref.reranker_io import load_reranker
from gref.sim.reference import REFERENCE_ROWS, fit_features_only
from gref.sim.user_model import expected_feedback, sample_feedback
from gref.sim.world import World
from gref.train.steps import data_meta

MODELS = {"GReF": "post-gref", "GReF (pre-train only)": "pre", "DNN": "dnn", "DCN": "dcn", "PRM": "prm",
          "Seq2Slate": "seq2slate", "NAR4Rec": "nar4rec", "generator-evaluator": "gen_eval"}  # row -> Train run


def expected_ips(world: World, users: np.ndarray, items: np.ndarray, placed: np.ndarray, lengths: np.ndarray,
                 cand_mask: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    """E[IPS] per request: sum over slots k of E[click_k | slot k shows placed_k, the other slots a
    uniform shuffle of the remaining candidates] (= m * P(match) * E[click | match]).
    users [B], items [B, M] candidate item ids, placed [B, N], lengths [B], cand_mask [B, M] -> [B]."""
    B, N = placed.shape
    rows = np.arange(B)
    total = np.zeros(B)
    for k in range(N):
        live = k < lengths
        for _ in range(draws):
            keys = np.where(cand_mask, rng.random(cand_mask.shape), np.inf)
            keys[rows, np.clip(placed[:, k], 0, None)] = -np.inf  # the row's item first ...
            order = np.argsort(keys, axis=1)[:, :N]
            order[:, [0, k]] = order[:, [k, 0]]  # ... moved to slot k, the rest shuffled around it
            shown = np.take_along_axis(items, order, axis=1)
            shown = np.where(np.arange(N)[None] < lengths[:, None], shown, -1)
            total += np.where(live, expected_feedback(world, users, shown)["click_at"][:, k], 0.0)
    return total / draws


def audit(unit: Path, requests: int, draws: int, seed: int) -> dict:
    prep, world = unit / "prep", World.load(unit / "sim" / "world")
    meta = data_meta(prep)
    table = read_split(prep / "sequences" / "test")
    table = table.slice(0, min(requests, table.num_rows))
    features_only = fit_features_only(world, read_split(prep / "sequences" / "train"), meta)
    rankers = {"logged exposure": logged_ranker, "upstream order": upstream_ranker,
               **{name: reference_ranker(name, world, features_only) for name in REFERENCE_ROWS}}
    for row, run in MODELS.items():
        if (unit / "ray" / run / "model" / "model.json").exists():
            rankers[row] = model_ranker(load_reranker(unit / "ray" / run / "model").eval())
    rng = np.random.default_rng(seed)
    acc: dict[str, dict[str, list]] = {name: {"oracle": [], "expected_ips": [], "ips": []} for name in rankers}
    for part in iter_tables(table, 512, shuffle=False):
        b = collate(part, meta["num_features"], len(meta["cat_sizes"]), meta["feedback_weights"])
        users = np.asarray(part.column("user_id").to_numpy(), dtype=np.int64)
        items = padded(part.column("item_id"), -1).astype(np.int64)
        lengths, mask = b.lengths.numpy(), b.cand_mask.numpy()
        m = mask.sum(1)
        # the bucket: one uniform shuffle per request and the clicks the world draws for it
        shuffled = np.argsort(np.where(mask, rng.random(mask.shape), np.inf), axis=1)[:, : b.exposure.shape[1]]
        shown = np.where(np.arange(shuffled.shape[1])[None] < lengths[:, None],
                         np.take_along_axis(items, shuffled, axis=1), -1)
        clicks = sample_feedback(world, users, shown, rng)["click"] * (shown >= 0)
        for name, rank in rankers.items():
            with torch.no_grad():
                placed = rank(b)[0][:, : b.exposure.shape[1]]
            placed = np.where(np.arange(placed.shape[1])[None] < lengths[:, None], placed, -1)
            ids = np.where(placed >= 0, np.take_along_axis(items, np.clip(placed, 0, None), axis=1), -1)
            acc[name]["oracle"].append(expected_feedback(world, users, ids)["click"])
            acc[name]["expected_ips"].append(expected_ips(world, users, items, placed, lengths, mask, draws, rng))
            acc[name]["ips"].append(randomized_ips(placed, shuffled, lengths, clicks, m, np.ones(b.size, dtype=bool)))
    rows = {}
    production = np.concatenate(acc["logged exposure"]["oracle"])
    for name, a in acc.items():
        oracle, exp_ips, ips = (np.concatenate(a[k]) for k in ("oracle", "expected_ips", "ips"))
        s = bootstrap_summary(ips, production)  # production's value: its exact on-policy E[clicks]
        sd = ips.std()
        rows[name] = {"oracle": float(oracle.mean()), "expected_ips": float(exp_ips.mean()),
                      "bias": float(exp_ips.mean() / oracle.mean() - 1.0),
                      "ips": s["mean"], "ips_lo": s["mean_lo"], "ips_hi": s["mean_hi"],
                      "true_lift": float(oracle.mean() / production.mean() - 1.0),
                      "expected_ips_lift": float(exp_ips.mean() / production.mean() - 1.0),
                      "ips_lift": s["lift"], "ips_lift_lo": s["lift_lo"], "ips_lift_hi": s["lift_hi"],
                      "bucket_for_2pct": int(np.ceil((1.96 * sd / (0.02 * ips.mean())) ** 2))}
    names = list(rows)
    return {"unit": str(unit), "requests": table.num_rows, "draws": draws, "rows": rows,
            "kendall_tau_expected_ips": kendall_tau([rows[n]["expected_ips"] for n in names],
                                                    [rows[n]["oracle"] for n in names]),
            "kendall_tau_ips": kendall_tau([rows[n]["ips"] for n in names], [rows[n]["oracle"] for n in names]),
            "mean_abs_bias": float(np.mean([abs(rows[n]["bias"]) for n in names]))}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ips_audit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--unit", default="runs/experiments/default/seed0", help="a jobs.experiments (world, seed) folder")
    p.add_argument("--requests", type=int, default=5000, help="test requests (all in the bucket)")
    p.add_argument("--draws", type=int, default=4, help="shuffles per slot for the expected IPS")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    start = time.time()
    out = audit(Path(args.unit), args.requests, args.draws, args.seed)
    out["seconds"] = round(time.time() - start, 1)
    print(json.dumps(out, indent=2), flush=True)
    return out


if __name__ == "__main__":
    main()
