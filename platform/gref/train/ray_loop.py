"""The Ray Train worker loop shared by pre-training (L_omtp), Rerank-DPO and the baselines
(each a gref.baselines model whose forward returns its own losses).

Runs on every worker of a TorchTrainer (DDP via prepare_model; gloo on CPU, NCCL on GPU):
reads its shard of the train dataset, trains an epoch, validates on rank 0, checkpoints
(model, optimizer, epoch, best-so-far weights, metric history) and reports on every rank.
Resuming (worker failure, or the job re-run with the same run name) continues after the
last reported epoch.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from gref.data.batch import collate, read_split
from gref.losses import OMTPLoss, RerankDPOLoss
from gref.model.io import model_from_config
from gref.train.steps import (
    build_baseline_model,
    build_model,
    dpo_loss,
    evaluate,
    pretrain_loss,
    selection_metric,
    unwrap,
)


def _autocast(device: torch.device, mode: str):
    if device.type != "cuda" or mode == "off":
        return contextlib.nullcontext()
    dtype = torch.float16 if mode == "fp16" or (mode == "auto" and not torch.cuda.is_bf16_supported()) else torch.bfloat16
    return torch.autocast("cuda", dtype=dtype)


def log_mlflow(tracking: dict | None, metrics: dict[str, float], step: int) -> None:
    if not tracking:
        return
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items()
             if isinstance(v, (int, float)) and v == v]
    MlflowClient(tracking["uri"]).log_batch(tracking["run_id"], metrics=batch)


def _say(message: str) -> None:
    """Progress line. Not print(): Train V2 patches print in workers to tee it into its logger,
    and with Ray's wrapped stdout every line reached the driver twice."""
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def train_loop(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    stage, cfg, meta = config["stage"], config["cfg"], config["meta"]
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.manual_seed(cfg.run.seed + rank)
    if cfg.scaling.threads_per_worker:
        torch.set_num_threads(cfg.scaling.threads_per_worker)
    device = ray.train.torch.get_device()

    if config.get("init_state") is not None:
        model = model_from_config(config["init_model_cfg"])
        model.load_state_dict(config["init_state"])
    elif stage == "baseline":
        model = build_baseline_model(cfg.model, meta)
    else:
        model = build_model(cfg.model, meta)
    reference = None
    if stage == "dpo":  # pi_ref: frozen copy of the initial model
        reference = copy.deepcopy(model).to(device).eval().requires_grad_(False)
        dpo_fn = RerankDPOLoss(cfg.beta, cfg.sft_weight)
        heads = cfg.decode_heads or model.k
    elif stage == "pretrain":
        omtp_fn = OMTPLoss(model.k, cfg.lambda1, cfg.lambda2).to(device)
    model = ray.train.torch.prepare_model(model)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg.scaling.mixed_precision == "fp16")

    start_epoch, best, best_state, history = 0, None, None, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=False)
        unwrap(model).load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, best, best_state, history = state["epoch"] + 1, state["best"], state["best_model"], state["history"]
        if rank == 0:
            _say(f"[{stage}] resumed from the checkpoint of epoch {state['epoch']}")

    valid = valid_pairs = world = logged_clicks = None
    if rank == 0:
        data = Path(cfg.data)
        valid = read_split(data / "sequences" / "valid")
        valid = valid.slice(0, min(cfg.eval.max_requests, valid.num_rows))
        if stage == "dpo" and (data / "pairs" / "valid").exists():
            valid_pairs = read_split(data / "pairs" / "valid")
            valid_pairs = valid_pairs.slice(0, min(cfg.eval.max_requests, valid_pairs.num_rows))
        if cfg.eval.world:
            from gref.evaluation import evaluate_ranker, logged_ranker
            from gref.sim.world import World

            world = World.load(cfg.eval.world)
            # the logged order does not change between epochs: score it once
            logged_clicks = evaluate_ranker(logged_ranker, valid, meta, world, cfg.eval.batch_size)["oracle_clicks"]
    metric_name = selection_metric(cfg.eval.metric, bool(cfg.eval.world))
    shard = ray.train.get_dataset_shard("train")
    F, C, weights = meta["num_features"], len(meta["cat_sizes"]), meta["feedback_weights"]

    for epoch in range(start_epoch, cfg.optim.epochs):
        model.train()
        t0, seen, sums, steps = time.time(), 0, {}, 0
        for table in shard.iter_batches(batch_size=cfg.optim.batch_size, batch_format="pyarrow",
                                        local_shuffle_buffer_size=4 * cfg.optim.batch_size,
                                        local_shuffle_seed=cfg.run.seed + epoch):
            batch = collate(table, F, C, weights).to(device)
            with _autocast(device, cfg.scaling.mixed_precision):
                if stage == "dpo":
                    out = dpo_loss(model, reference, dpo_fn, batch, heads)
                elif stage == "pretrain":
                    out = pretrain_loss(model, omtp_fn, batch)
                else:  # a baseline's forward is its training loss
                    out = model(batch)
            out = {k: (v if k == "loss" else v.detach()) for k, v in out.items()}
            opt.zero_grad(set_to_none=True)
            scaler.scale(out["loss"]).backward()
            if cfg.optim.grad_clip:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            scaler.step(opt)
            scaler.update()
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + v.detach().item() * batch.size
            seen += batch.size
            steps += 1
            if rank == 0 and cfg.run.log_every_steps and steps % cfg.run.log_every_steps == 0:
                _say(f"[{stage}] epoch {epoch + 1} step {steps}: loss {sums['loss'] / seen:.4f}, "
                     f"{seen / (time.time() - t0):.0f} samples/s")
        metrics: dict[str, Any] = {"epoch": epoch, "train_samples": seen,
                                   "samples_per_s": seen / max(time.time() - t0, 1e-9)}
        metrics.update({f"train_{k}": v / max(seen, 1) for k, v in sums.items()})

        checkpoint = None
        if rank == 0:
            net = unwrap(model)
            metrics.update(evaluate(net, valid, meta, cfg.eval.batch_size, world, device, logged_clicks))
            if valid_pairs is not None and valid_pairs.num_rows:
                with torch.no_grad():
                    vb = collate(valid_pairs, F, C, weights).to(device)
                    metrics["val_dpo_loss"] = float(dpo_loss(net, reference, dpo_fn, vb, heads)["loss"])
            if best is None or metrics[metric_name] > best:
                best = metrics[metric_name]
                best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
            metrics["best_" + metric_name] = best
            history.append({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
            log_mlflow(config.get("tracking"), {k: v for k, v in metrics.items() if k != "epoch"}, epoch)
            shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()
                              if k in ("train_loss", "val_nll", "val_dpo_loss", "ndcg", "auc_exposure",
                                       "oracle_clicks", "oracle_click_lift"))
            _say(f"[{stage}] epoch {epoch + 1}/{cfg.optim.epochs} ({seen} samples, "
                 f"{metrics['samples_per_s']:.0f}/s): {shown}")
            tmp = Path(tempfile.mkdtemp(prefix="gref-ckpt-"))
            torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                        "best": best, "best_model": best_state, "history": history,
                        "model_cfg": asdict(net.cfg), "metric": metric_name}, tmp / "state.pt")
            checkpoint = ray.train.Checkpoint.from_directory(str(tmp))
        # the temp dir is removed once uploaded to storage (in-process mode keeps it: it is the checkpoint)
        ray.train.report(metrics, checkpoint=checkpoint, delete_local_checkpoint_after_upload=True)
        if epoch == cfg.run.fail_once_at_epoch and start_epoch == 0:
            raise RuntimeError(f"injected failure after epoch {epoch} (run.fail_once_at_epoch)")
