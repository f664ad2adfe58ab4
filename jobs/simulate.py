"""Write simulated raw request logs and the hidden world state the oracle needs.

    python -m jobs.simulate --requests 20000 --seed 0 --out data/sim [--config world.yaml] [key=value ...]

Output: DIR/logs/part-*.parquet (raw-log contract, one row per candidate) and DIR/world/
(hidden user/item state + world.json) for gref.sim.expected_feedback.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from gref.cli import log, parser, resolve_config
from gref.sim import World, WorldConfig, generate_logs


def main(argv: list[str] | None = None) -> dict:
    p = parser("jobs.simulate", __doc__)
    p.add_argument("--requests", type=int, default=20_000, help="number of requests to simulate")
    p.add_argument("--seed", type=int, default=None, help="world seed (overrides config 'seed')")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--chunk", type=int, default=10_000, help="requests per Parquet file")
    args = p.parse_args(argv)
    if args.seed is not None:
        args.overrides = [*args.overrides, f"seed={args.seed}"]
    cfg = resolve_config(WorldConfig, args)
    out = Path(args.out).resolve()
    start = time.time()
    world = World.generate(cfg)
    world.save(out / "world")
    files = list(generate_logs(world, args.requests, out / "logs", chunk=args.chunk))
    summary = {"requests": args.requests, "files": len(files), "rows": args.requests * cfg.candidates,
               "seconds": round(time.time() - start, 2), "logs": str(out / "logs"),
               "world": str(out / "world")}
    (out / "simulate.json").write_text(json.dumps(summary, indent=2))
    log("simulate", f"done: {summary}")
    return summary


if __name__ == "__main__":
    main()
