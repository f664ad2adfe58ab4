"""How often continuous training's promotion rule promotes a challenger that *is* the champion
(A/A) -- or, with ``--challenger``, a better one (power) --, on a simulated world's own users and
clicks, replicated many times (prints JSON).

    python -m benchmarks.aa_promotion --world runs/pipeline/sim/world --model <model dir | models:/...>
        [--experiments 1000] [--requests 3000] [--looks 2] [--explore 0.1] [--pool 20000]

The loop's A/A round (``jobs.continuous aa=true``) costs ~3.5 minutes of Serve traffic per round, so
five of them say little about a rate that should be <= 2.5 %. Here the same decision is replayed
offline: the model's greedy lists for a pool of simulated requests are computed once (in an A/A
test both arms serve the same list); every experiment draws ``looks`` x ``requests`` of them, splits
their users between the two arms by the Router's own hash (``gref.serving.ab``), drops the explored
share, draws clicks from the world's user model, and applies ``gref.serving.promotion.decide``.

Variants side by side on the same draws: the interval counts users (the rule's default) or
requests (the previous rule), every experiment has its own salt (what the loop does: one per
round) or all split users alike (one salt: the A/A loop before each round got its own salt), and
the looks share the level by Bonferroni, O'Brien-Fleming's boundary or its Lan-DeMets spending
form on the information each look saw (``--boundaries``). ``--first-look 0.2``: the first look holds
a fifth of a full look's requests (a ``traffic=clients`` look cut short by its timeout); the others
are full, and the spending boundary is told each look's share of ``looks`` full looks.
Rates come with Wilson 95 % intervals; the rule's bound is alpha / 2 (= 2.5 % at alpha 0.05).
``--challenger MODEL``: the challenger arm serves that model's greedy lists for the same requests
(an A/B test): the promotion rate is then the rule's power against that real challenger.
Also reported: the share of the served clicks' variance that E[clicks | user, list] explains -- the
most any pre-assignment covariate (CUPED) could remove; the rest is the clicks' own coin flips.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson interval of a binomial rate k / n."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def greedy_pool(world, model_uri: str, size: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The model's greedy lists for ``size`` simulated requests -> (users [size], items [size, n])."""
    import torch

    from gref import tracking
    from gref.data.features import FeatureSpec
    from gref.serving.requests import encode_batch
    from gref.serving.ab_client import simulated_requests

    model = tracking.load_reranker_uri(model_uri).eval()
    spec = FeatureSpec.load(tracking.reranker_dir(model_uri) / "features.json")
    reqs = simulated_requests(world, size, seed)
    items = []
    for start in range(0, size, 512):
        chunk = reqs[start:start + 512]
        num, cat, mask = encode_batch([r["candidates"] for r in chunk], spec)
        with torch.no_grad():
            placed = model.rerank(torch.from_numpy(num), torch.from_numpy(cat), torch.from_numpy(mask), n).numpy()
        items += [[int(r["candidates"][j]["item_id"]) if j >= 0 else -1 for j in row] for r, row in zip(chunk, placed)]
    return np.array([r["user_id"] for r in reqs], np.int64), np.array(items, np.int64)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", default="runs/pipeline/sim/world")
    p.add_argument("--model", default="models:/gref-reranker@champion", help="the champion (both arms)")
    p.add_argument("--challenger", default="", help="the challenger arm's model (an A/B test); default: the champion")
    p.add_argument("--boundaries", default="bonferroni",
                   help="comma-separated: bonferroni, obrien_fleming, obf_spending")
    p.add_argument("--units", default="user,request", help="comma-separated: user, request")
    p.add_argument("--splits", default="salted,fixed", help="comma-separated: salted, fixed")
    p.add_argument("--experiments", type=int, default=1000)
    p.add_argument("--requests", type=int, default=3000, help="requests per look, both arms together")
    p.add_argument("--looks", type=int, default=2)
    p.add_argument("--first-look", type=float, default=1.0,
                   help="the first look's requests as a share of --requests (the later looks are full)")
    p.add_argument("--explore", type=float, default=0.1, help="share of requests explored (left out of the decision)")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--pool", type=int, default=20000, help="simulated requests whose greedy lists are computed")
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    from gref.serving.ab import assign_arm
    from gref.serving.promotion import PromotionRule, decide
    from gref.sim.user_model import expected_feedback, sample_feedback
    from gref.sim.world import World

    t0 = time.time()
    world = World.load(args.world)
    users, items = greedy_pool(world, args.model, args.pool, args.n, args.seed)
    if args.challenger:  # the same requests (same seed), the challenger's lists
        users_b, items_b = greedy_pool(world, args.challenger, args.pool, args.n, args.seed)
        assert np.array_equal(users, users_b)
    pool_s = time.time() - t0
    expected = expected_feedback(world, users, items)["click"]
    drawn = sample_feedback(world, users, items, np.random.default_rng(args.seed + 2))["click"].sum(axis=1)
    lift = float(expected_feedback(world, users, items_b)["click"].mean() / expected.mean() - 1) \
        if args.challenger else 0.0
    rules = {f"{unit}/{split}" + ("" if boundary == "bonferroni" else f"/{boundary}"):
             PromotionRule(alpha=args.alpha, max_looks=args.looks, unit=unit, boundary=boundary)
             for boundary in args.boundaries.split(",") for unit in args.units.split(",")
             for split in args.splits.split(",")}
    outcomes = {name: {"promote": 0, "rollback": 0, "keep": 0} for name in rules}
    half_widths = {name: [] for name in rules}  # the interval's half-width at the first look
    rng = np.random.default_rng(args.seed + 1)
    # requests seen by the end of each look: a first look of --first-look x --requests, then full ones
    cumulative = [round(args.requests * (look - 1 + args.first_look)) for look in range(1, args.looks + 1)]
    total = cumulative[-1]
    fractions = tuple(c / (args.requests * args.looks) for c in cumulative)  # of the planned information
    distinct = np.unique(users)
    fixed_arm = {u: assign_arm(str(u), {"champion": 1.0, "challenger": 1.0}, "aa-fixed") for u in distinct}
    for e in range(args.experiments):
        rows = rng.choice(len(users), total, replace=False)
        greedy = rng.random(total) >= args.explore
        clicks = sample_feedback(world, users[rows], items[rows], rng)["click"].sum(axis=1).astype(float)
        clicks_b = sample_feedback(world, users[rows], items_b[rows], rng)["click"].sum(axis=1).astype(float) \
            if args.challenger else clicks
        salted = {u: assign_arm(str(u), {"champion": 1.0, "challenger": 1.0}, f"aa-{e}") for u in np.unique(users[rows])}
        for name, rule in rules.items():
            arm_of = fixed_arm if "/fixed" in name else salted
            arm = np.array([arm_of[u] for u in users[rows]])
            action = "keep"
            for look in range(1, args.looks + 1):
                seen = np.arange(total) < cumulative[look - 1]
                a, b = seen & greedy & (arm == "champion"), seen & greedy & (arm == "challenger")
                d = decide(clicks[a], clicks_b[b], look, rule, users[rows][a], users[rows][b],
                           fractions=fractions[:look])
                if look == 1:
                    half_widths[name].append((d.high - d.low) / 2)
                if d.action != "continue":
                    action = d.action
                    break
            outcomes[name][action] += 1
        if (e + 1) % max(1, args.experiments // 10) == 0:
            rates = ", ".join(f"{k} {v['promote'] / (e + 1):.2%}" for k, v in outcomes.items())
            print(f"[aa_promotion] {e + 1}/{args.experiments} experiments: promoted {rates}", flush=True)

    result = {"world": args.world, "model": args.model, "challenger": args.challenger or args.model,
              "oracle_lift_of_the_challenger": lift, "experiments": args.experiments,
              "requests_per_look": args.requests, "looks": args.looks, "first_look": args.first_look,
              "requests_by_look": cumulative, "explore": args.explore, "alpha": args.alpha,
              "bound": args.alpha / 2, "pool": args.pool, "pool_distinct_users": len(distinct),
              "pool_s": round(pool_s, 1), "wall_s": round(time.time() - t0, 1),
              "clicks_per_request": float(drawn.mean()),
              "variance_share_of_expected_clicks": float(expected.var() / drawn.var()), "rules": {}}
    for name, counts in outcomes.items():
        k = counts["promote"]
        low, high = wilson(k, args.experiments)
        rate = "power" if args.challenger else "false_promotion_rate"  # promoted: rightly (A/B) or falsely (A/A)
        result["rules"][name] = {**counts, rate: k / args.experiments, "ci95": [low, high],
                                 "first_look_half_width": float(np.mean(half_widths[name]))}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
