"""Served traffic back to training data: the Serve app's feedback store -> raw-log Parquet.

    python -m jobs.export_served --db runs/serve/feedback.db --out runs/served/logs
    python -m jobs.prepare --logs runs/served/logs --out runs/served/prep

One row per candidate of every answered /rerank request (upstream_rank = its place in the
request, position 1..n for the items shown, click/like/long_view from /feedback, 0 when a shown
item got none, null when not shown), with the raw features the request carried and the arm
and model that served it, whether the list was explored (sampled from the model) and its
log-propensity (extra columns jobs.prepare ignores). --since-ms / --until-ms export one window
(jobs.continuous exports each round's traffic so).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gref.cli import print_json


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m jobs.export_served", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", required=True, help="the feedback store (serve config 'feedback_db')")
    p.add_argument("--out", required=True, help="output directory of raw-log Parquet")
    p.add_argument("--since-ms", type=int, default=0, help="only lists served at or after this time (epoch ms)")
    p.add_argument("--until-ms", type=int, default=2**62, help="only lists served before this time (epoch ms)")
    args = p.parse_args(argv)
    if not Path(args.db).exists():
        raise SystemExit(f"no feedback store at '{args.db}'")
    from gref.serving.feedback import FeedbackStore

    store = FeedbackStore(args.db)
    out = Path(args.out) / "served.parquet"
    rows = store.export_logs(out, since_ms=args.since_ms, until_ms=args.until_ms)
    summary = {"rows": rows, **store.counts(), "file": str(out.resolve())}
    print_json(summary)
    return summary


if __name__ == "__main__":
    main()
