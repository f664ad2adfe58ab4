"""What the post-training reward promises, and whether it keeps it (issue 33 item 3): for every
(world, seed) of a ``jobs.experiments`` run, each trained reward (the structured list click model
``reward-pre-context_members0``, the default, its context ensemble ``reward-pre``, and the
ensemble with pairwise terms ``reward-pre-context_pairsTrue`` and with the items above in context
too ``reward-pre-context_pairsTrue-context_prefixTrue``, and with effects between attribute values
``reward-pre-value_pairs8``, and with examination that follows the page's coverage
``reward-pre-page_coverageTrue``, where a run trained them) on the test split's first
``--requests`` requests. Ray-free.

Oracle-free (what a team with real logs can read):
  click_nll         held-out Bernoulli NLL per shown slot of the logged clicks (lower: fits better)
  promised_mean     the reward's E[clicks] of its own search lists / of the logged lists - 1,
                    by the ensemble's mean
  promised_pessimistic  the same by the value the search maximises (mean - pessimism x std)
  member_std        the members' std of the search lists' value / its mean (0 for one member)
With the world's oracle: ``delivered`` = the oracle's E[clicks] of those lists / of the logged
lists - 1, and each promise's optimism = promise - delivered. Where the list effects it learned
help or hurt: ``delivered_structured`` (the lists of its structured part's beam search, no list
context) and ``delivered_appeal_sort`` (its candidates sorted by their appeal a(i) alone, no list
effect at all), by the oracle too.

    python -m benchmarks.reward_audit --runs runs/families [--requests 2000] [--out x.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from gref.clickmodel.search import beam_search, pointwise_order
from gref.data.batch import collate, iter_tables, read_split
from gref.data.pairs import padded
from gref.reranker_io import load_reranker
from gref.sim.user_model import expected_feedback
from gref.sim.world import World
from gref.train.steps import data_meta

REWARDS = {"structured": "reward-pre-context_members0", "context": "reward-pre", "pairs": "reward-pre-context_pairsTrue",
           "pairs_prefix": "reward-pre-context_pairsTrue-context_prefixTrue", "value_pairs": "reward-pre-value_pairs8",
           "page_coverage": "reward-pre-page_coverageTrue"}


def oracle_clicks(world: World, part, lists: torch.Tensor) -> np.ndarray:
    """The world's exact E[clicks] [B] of lists [B, n] of candidate indices (-1 = none) of the
    requests of Arrow table ``part``."""
    items = padded(part.column("item_id"), -1).astype(np.int64)
    users = np.asarray(part.column("user_id").to_numpy(), dtype=np.int64)
    idx = lists.numpy()
    ids = np.where(idx >= 0, np.take_along_axis(items, np.clip(idx, 0, None), axis=1), -1)
    return expected_feedback(world, users, ids)["click"]


@torch.no_grad()
def audit_reward(model, table, meta: dict, world: World) -> dict[str, float]:
    """The oracle-free figures and the oracle's verdict of one reward on ``table``."""
    model.eval()
    nll_sum = slots = 0.0
    values = {k: [] for k in ("search_mean", "search_pess", "search_std", "logged_mean", "oracle_search", "oracle_logged",
                              "oracle_structured", "oracle_appeal_sort")}
    for part in iter_tables(table, 256, shuffle=False):
        b = collate(part, meta["num_features"], len(meta["cat_sizes"]), meta["feedback_weights"])
        out = model(b)
        shown = float(b.lengths.sum())
        nll_sum, slots = nll_sum + float(out["click_nll"]) * shown, slots + shown
        n = int(b.exposure.shape[1])
        valid = torch.arange(n)[None] < b.lengths[:, None]
        logged = torch.where(valid, b.exposure, -1)
        search = model.search(b.num, b.cat, b.cand_mask, n)
        search = torch.where(valid[:, : search.shape[1]], search, -1)
        per_member = {name: model.marginals(b.num, b.cat, b.cand_mask, lists).sum(-1)  # [K, B]
                      for name, lists in (("search", search), ("logged", logged))}
        s = per_member["search"]
        values["search_mean"].append(s.mean(0))
        values["search_std"].append(s.std(0) if s.shape[0] > 1 else torch.zeros_like(s[0]))
        values["search_pess"].append(model.list_values(b.num, b.cat, b.cand_mask, search[:, None])[:, 0])
        values["logged_mean"].append(per_member["logged"].mean(0))
        fx = model.effects(b.num, b.cat, b.cand_mask)
        structured = torch.where(valid, beam_search(fx, n, model.cfg.beam_width)[0], -1)
        appeal_sort = torch.where(valid, pointwise_order(fx, n), -1)
        for name, lists in (("search", search), ("logged", logged), ("structured", structured),
                            ("appeal_sort", appeal_sort)):
            values[f"oracle_{name}"].append(oracle_clicks(world, part, lists))
    v = {k: float(np.concatenate([np.asarray(x) for x in parts]).mean()) for k, parts in values.items()}
    delivered = v["oracle_search"] / v["oracle_logged"] - 1
    promised_mean = v["search_mean"] / v["logged_mean"] - 1
    promised_pess = v["search_pess"] / v["logged_mean"] - 1
    return {"click_nll": nll_sum / slots, "promised_mean": promised_mean, "promised_pessimistic": promised_pess,
            "member_std": v["search_std"] / v["search_mean"], "delivered": delivered,
            "delivered_structured": v["oracle_structured"] / v["oracle_logged"] - 1,
            "delivered_appeal_sort": v["oracle_appeal_sort"] / v["oracle_logged"] - 1,
            "optimism_mean": promised_mean - delivered, "optimism_pessimistic": promised_pess - delivered}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs/families", help="a jobs.experiments out directory")
    p.add_argument("--requests", type=int, default=2000, help="test requests per world and seed")
    p.add_argument("--out", default="", help="also write the JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    units = {}
    for root in sorted(Path(args.runs).glob("*/seed*")):
        found = {k: root / "ray" / name / "model" for k, name in REWARDS.items()
                 if (root / "ray" / name / "model" / "model.json").exists()}
        if not found:
            continue
        meta = data_meta(root / "prep")
        table = read_split(root / "prep" / "sequences" / "test")
        table = table.slice(0, min(args.requests, table.num_rows))
        world = World.load(root / "sim" / "world")
        units[f"{root.parent.name}/{root.name}"] = {k: audit_reward(load_reranker(d), table, meta, world)
                                                   for k, d in found.items()}
        print(json.dumps({f"{root.parent.name}/{root.name}": units[f"{root.parent.name}/{root.name}"]}), flush=True)
    if not units:
        raise SystemExit(f"no trained rewards (ray/reward-pre*/model) under {args.runs}")
    summary = {}
    for k in REWARDS:
        have = [u[k] for u in units.values() if k in u]
        if have:
            summary[k] = {m: float(np.mean([a[m] for a in have])) for m in have[0]}
    for k, other in (("context", "structured"), ("pairs", "context"), ("pairs_prefix", "pairs"),
                     ("value_pairs", "context"), ("page_coverage", "context")):
        # the oracle-free signal of each added part: does its better held-out fit go with a better teacher?
        both = [u for u in units.values() if k in u and other in u]
        if both:
            summary[f"{k}_fits_better_than_{other}_share"] = float(np.mean([u[k]["click_nll"] < u[other]["click_nll"]
                                                                          for u in both]))
    result = {"runs": args.runs, "requests": args.requests, "units": units, "mean_over_units": summary}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
