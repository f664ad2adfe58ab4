"""How much each user-model family rewards list awareness, by its exact oracle: the logged order,
the oracle's pointwise sort and its best list (beam search), on fresh simulated requests. Prints JSON.

    python -m benchmarks.families [--requests 1000] [--seed 11] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from gref.sim import World, WorldConfig, expected_feedback, simulate_requests
from gref.sim.reference import hidden_logit, oracle_search
from gref.sim.user_model import FAMILIES


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--json", default="", help="also write the result to this file")
    args = p.parse_args()
    out = {"requests": args.requests, "seed": args.seed, "families": {}}
    for family in FAMILIES:
        world = World.generate(WorldConfig(family=family, seed=args.seed))
        b = simulate_requests(world, args.requests, 0, np.random.default_rng(args.seed + 1))

        def value(lists):
            return float(expected_feedback(world, b.user_id, np.take_along_axis(b.candidates, lists, 1))["click"].mean())

        t0 = time.time()
        best = oracle_search(world, b.user_id, b.candidates, world.config.exposed, 8)
        search_s = time.time() - t0
        sort = np.argsort(-hidden_logit(world, b.user_id, b.candidates), 1)[:, : world.config.exposed]
        logged = value(b.exposure)
        out["families"][family] = {"logged_clicks": logged, "pointwise_sort_lift": value(sort) / logged - 1,
                                   "best_list_lift": value(best) / logged - 1, "search_s": round(search_s, 2)}
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
