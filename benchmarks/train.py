"""Training throughput of the same model and data: (a) a plain single-process PyTorch loop,
(b) Ray Train with 1 worker, (c) Ray Train with 2 workers -- one run, side by side (JSON).

    python -m benchmarks.train --data runs/pipeline/prep [--epochs 2] [--threads 2]
    python -m benchmarks.train --data runs/pipeline/prep --recipes   # the pre-training step, before / after

``--recipes`` instead measures the plain loop's pre-training step as the experiments ran it before
(L_n + L_o, no list-context logits, one unit with 2 threads) and now (L_n with list-context
logits; one unit with 2 threads, and two units side by side with 1 thread each -- what
``jobs.experiments parallel=2`` does -- summed).

All three run the same step (gref.train.objectives.pretrain_loss on collated Arrow batches,
batch 256, L_omtp with k=4). (a) and (b) use ``--threads`` torch threads; (c) gives each of
its 2 workers threads/2. Samples/s is taken from the last epoch (warm), excluding
validation; for (c) it is the sum over both workers (each reports its own shard's rate).
Target: (b) >= 0.9 x (a).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

import torch


def plain_loop(data: Path, epochs: int, threads: int, batch_size: int, lambda2: float = 1.0,
               list_bias: bool = False, max_requests: int = 0) -> float:
    from gref.data.batch import collate, iter_tables, read_split
    from gref.losses import OMTPLoss
    from gref.model.config import ModelConfig
    from gref.train.objectives import pretrain_loss
    from gref.train.steps import build_model, data_meta

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    meta = data_meta(data)
    table = read_split(data / "sequences" / "train")
    if max_requests:
        table = table.slice(0, max_requests)
    model = build_model(ModelConfig(list_bias=list_bias), meta)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = OMTPLoss(model.k, 1.0, lambda2)
    rate = 0.0
    for epoch in range(epochs):
        t0, seen = time.perf_counter(), 0
        for part in iter_tables(table, batch_size, shuffle=True, seed=epoch):
            batch = collate(part, meta["num_features"], len(meta["cat_sizes"]), meta["feedback_weights"])
            out = pretrain_loss(model, loss_fn, batch)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            seen += batch.size
        rate = seen / (time.perf_counter() - t0)
    return rate


def ray_train(data: Path, epochs: int, workers: int, threads: int, batch_size: int, storage: str) -> float:
    from gref.config import load_config
    from gref.train.config import PretrainConfig
    from gref.train.runner import run_training

    cfg = load_config(PretrainConfig, None, [
        f"data={data}", f"optim.epochs={epochs}", f"optim.batch_size={batch_size}",
        f"scaling.num_workers={workers}", f"scaling.cpus_per_worker={1 if workers == 1 else 0.5}",
        f"scaling.threads_per_worker={threads}", "eval.max_requests=64", f"run.storage={storage}",
        f"run.name=bench-{workers}w-{uuid.uuid4().hex[:6]}", f"tracking.uri=sqlite:///{storage}/mlflow.db"])
    out = run_training("pretrain", cfg)
    return out["history"][-1]["samples_per_s"] * workers


def _new_recipe_unit(args: tuple) -> float:
    data, epochs, batch_size, max_requests = args
    return plain_loop(data, epochs, 1, batch_size, lambda2=0.0, list_bias=True, max_requests=max_requests)


def recipes(data: Path, epochs: int, batch_size: int, max_requests: int) -> dict:
    """samples/s of the pre-training step before and after this project's recipe change."""
    import multiprocessing

    before = plain_loop(data, epochs, 2, batch_size, lambda2=1.0, list_bias=False, max_requests=max_requests)
    after = plain_loop(data, epochs, 2, batch_size, lambda2=0.0, list_bias=True, max_requests=max_requests)
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        units = pool.map(_new_recipe_unit, [(data, epochs, batch_size, max_requests)] * 2)
    return {"samples_per_s": {"before: L_n + L_o, 1 unit x 2 threads": round(before, 1),
                              "after: L_n + list-context logits, 1 unit x 2 threads": round(after, 1),
                              "after: 2 units x 1 thread, summed": round(sum(units), 1)},
            "after_over_before": round(sum(units) / before, 2), "epochs": epochs, "requests": max_requests or "all"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="prepared data dir")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--recipes", action="store_true", help="the pre-training step before / after (plain loops only)")
    p.add_argument("--max-requests", type=int, default=8000, help="--recipes: train requests per epoch")
    args = p.parse_args()
    data = Path(args.data).resolve()
    if args.recipes:
        print(json.dumps(recipes(data, args.epochs, args.batch_size, args.max_requests), indent=2))
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    storage = tempfile.mkdtemp(prefix="gref-bench-train-")
    a = plain_loop(data, args.epochs, args.threads, args.batch_size)
    b = ray_train(data, args.epochs, 1, args.threads, args.batch_size, storage)
    c = ray_train(data, args.epochs, 2, max(1, args.threads // 2), args.batch_size, storage)
    print(json.dumps({
        "samples_per_s": {"plain_pytorch": round(a, 1), "ray_train_1_worker": round(b, 1),
                          "ray_train_2_workers": round(c, 1)},
        "ray_1_worker_over_plain": round(b / a, 3), "ray_2_workers_over_plain": round(c / a, 3),
        "target_ray_1_worker_over_plain": 0.9, "threads": args.threads, "epochs": args.epochs,
    }, indent=2))


if __name__ == "__main__":
    main()
