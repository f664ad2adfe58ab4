"""Table 2 analogue: per-request rerank latency of trained models, side by side (prints JSON).

    python -m benchmarks.latency --models runs/experiments/default/seed0/ray [--rounds 10] [--device cpu|cuda]

Loads every ``<dir>/*/model`` under --models (the Train runs of one jobs.experiments seed:
baselines, GReF with k = 1 / 2 / 4 / 8 heads) and times ``rerank`` on the same test requests
(m candidates, n = 10), one request at a time and in batches of 64. Models are interleaved
round by round and the median per request is reported, so machine noise hits all alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from gref.data.batch import collate, read_split
from gref.evaluation import timed_rerank
from gref.reranker_io import load_reranker
from gref.train.steps import data_meta


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", required=True, help="directory of Train runs (<run>/model/model.json)")
    p.add_argument("--data", help="prepared data dir (default: ../prep beside --models)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--requests", type=int, default=20, help="single requests timed per round")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    root = Path(args.models)
    data = Path(args.data) if args.data else root.parent / "prep"
    device = torch.device(args.device)
    models = {d.parent.name: load_reranker(d, device) for d in sorted(root.glob("*/model")) if (d / "model.json").exists()}
    meta = data_meta(data)
    table = read_split(data / "sequences" / "test").slice(0, 64)
    full = collate(table, meta["num_features"], len(meta["cat_sizes"]), meta["feedback_weights"]).to(device)
    singles = [collate(table.slice(i, 1), meta["num_features"], len(meta["cat_sizes"]),
                       meta["feedback_weights"]).to(device) for i in range(args.requests)]

    def timed(model, b) -> float:
        return timed_rerank(model, b, 10)[1]

    one: dict[str, list[float]] = {name: [] for name in models}
    batch: dict[str, list[float]] = {name: [] for name in models}
    for name, model in models.items():  # warm-up
        timed(model, singles[0])
    for _ in range(args.rounds):
        for name, model in models.items():
            one[name].append(1000 * sum(timed(model, b) for b in singles) / len(singles))
            batch[name].append(1000 * timed(model, full) / full.size)
    out = {name: {"ms_per_request_b1": round(statistics.median(one[name]), 3),
                  "ms_per_request_b64": round(statistics.median(batch[name]), 4)} for name in models}
    print(json.dumps({"device": str(device), "threads": torch.get_num_threads(), "models": out}, indent=2))


if __name__ == "__main__":
    main()
