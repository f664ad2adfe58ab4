"""The Ray Train worker loop shared by pre-training (L_omtp), post-training (the DPO stage:
Rerank-DPO on logged or on-policy pairs, or distillation of a list-wise reward's best lists) and
the baselines (each a gref.baselines model whose forward returns its own losses).

Runs on every worker of a TorchTrainer (DDP via prepare_model; gloo on CPU, NCCL on GPU):
reads its shard of the train dataset, trains an epoch, validates on rank 0, checkpoints
(model, optimizer, schedule, epoch, best-so-far weights, metric history) and reports on every
rank; the epoch's MLflow metrics are logged once the checkpoint is reported, so a crash in
between re-runs the epoch without logging it twice (a resumed run logs whatever epochs of its
history MLflow lacks). Post-training first validates the initial model (history epoch -1): the
exported model is never worse on validation than the one post-training started from.
Resuming (worker failure, or the job re-run with the same run name) continues after the last
reported epoch; an in-process run (``scaling.num_workers=0``) keeps its checkpoint in the run's
directory (``local_checkpoint``) and resumes from it the same way.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from gref.data.batch import collate, group_by_length, read_split
from gref.losses import OMTPLoss, RerankDPOLoss
from gref.reranker_io import model_from_config
from gref.train import objectives as obj
from gref.train.steps import better, build_baseline_model, build_model, evaluate, lr_schedule, selection_metric


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


def _log_epoch(tracking: dict | None, entry: dict[str, Any]) -> None:
    """One history entry to MLflow: epoch e at step e; the initial model's validation (epoch -1)
    as ``init.<metric>``."""
    metrics = {k: v for k, v in entry.items() if k != "epoch"}
    if entry["epoch"] < 0:
        metrics = {f"init.{k}": v for k, v in metrics.items()}
    log_mlflow(tracking, metrics, max(entry["epoch"], 0))


class EpochsToMlflow:
    """Logs an epoch's metrics to MLflow once the Train controller holds every worker's report of
    it (and its checkpoint). Logged from rank 0 instead, an epoch could reach MLflow while another
    worker's report never came (its node lost): the group restarts from the last checkpoint the
    controller registered and logs that epoch again (benchmarks.multinode saw step 0 twice).
    A ``ray.train.UserCallback`` (subclassed where Ray is imported: ``epochs_callback``)."""

    def __init__(self, tracking: dict | None):
        self.tracking = tracking

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        entry = metrics[0]  # rank 0's: the validation metrics are its
        if self.tracking and "epoch" in entry:
            _log_epoch(self.tracking, {k: v for k, v in entry.items() if isinstance(v, (int, float))})


def epochs_callback(tracking: dict | None):
    """EpochsToMlflow as the ray.train.UserCallback the trainer takes."""
    from ray.train import UserCallback

    class _Callback(EpochsToMlflow, UserCallback):
        pass

    return _Callback(tracking)


def _relog_missing(tracking: dict | None, history: list[dict[str, Any]]) -> None:
    """After a resume: log the history entries MLflow does not have yet (a crash after the
    checkpoint was reported but before the metrics were logged)."""
    if not tracking:
        return
    from mlflow import MlflowClient

    client = MlflowClient(tracking["uri"])
    logged = {m.step for m in client.get_metric_history(tracking["run_id"], "train_samples")}
    has_init = bool(client.get_metric_history(tracking["run_id"], "init.requests"))
    for entry in history:
        if (entry["epoch"] < 0 and not has_init) or (entry["epoch"] >= 0 and entry["epoch"] not in logged):
            _log_epoch(tracking, entry)


def _say(message: str) -> None:
    """Progress line. Not print(): Train V2 patches print in workers to tee it into its logger,
    and with Ray's wrapped stdout every line reached the driver twice."""
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def _initial_model(stage: str, cfg, meta: dict, config: dict[str, Any]) -> torch.nn.Module:
    if config.get("init_state") is not None:
        model = model_from_config(config["init_model_cfg"])
        model.load_state_dict(config["init_state"])
    else:
        model = build_baseline_model(cfg.model, meta) if stage == "baseline" else build_model(cfg.model, meta)
    rank = config.get("reward_model_cfg", {}).get("value_pairs", 0)
    if stage == "dpo" and cfg.grow_value_pairs and rank and not model.cfg.value_pairs and model.list_bias is not None:
        # the reward has effects between attribute values: give the student the words to say them
        # (zero at start: post-training starts from the same policy)
        _say(f"[{stage}] the reward has value-pair tables (rank {rank}): the student gains its own")
        model = model.with_value_pairs(rank)
    return model


def _reward(cfg, config: dict[str, Any], device: torch.device):
    """The list-level reward of post-training: a frozen list click model, or the simulated oracle."""
    from gref.train.onpolicy import ModelReward, OracleReward

    if cfg.reward == "oracle":
        from gref.sim.world import World

        return OracleReward(World.load(cfg.eval.world), cfg.search_width)
    model = model_from_config(config["reward_model_cfg"])
    model.load_state_dict(config["reward_state"])
    return ModelReward(model.to(device), cfg.search_width)


def _objective(stage: str, cfg, model, reference, config: dict[str, Any], device: torch.device,
               seed: int) -> obj.Objective:
    if stage == "baseline":
        return obj.BaselineLoss()
    if stage == "pretrain":
        return obj.Pretrain(OMTPLoss(model.k, cfg.lambda1, cfg.lambda2, window=cfg.lo_window).to(device),
                            cfg.target, config["meta"]["alpha"], config["meta"]["gamma"])
    heads = cfg.decode_heads or model.k
    if cfg.objective == "distill":
        return obj.Distill(_reward(cfg, config, device), cfg.search_horizon)
    loss_fn = RerankDPOLoss(cfg.beta, cfg.sft_weight, cfg.loss_type, cfg.label_smoothing, cfg.length_norm)
    if cfg.pairs == "onpolicy":
        from gref.train.onpolicy import OnPolicyConfig

        return obj.OnPolicyDPO(reference, loss_fn, heads, _reward(cfg, config, device),
                               OnPolicyConfig(**asdict(cfg.onpolicy)),
                               torch.Generator(device=device).manual_seed(seed))
    return obj.LoggedDPO(reference, loss_fn, heads)


class _Validation:
    """Rank 0's validation: metrics of the decoded lists (oracle ones with a world) and, for
    post-training, the instrumentation of its loss (gref.train.objectives.post_validation)."""

    def __init__(self, stage: str, cfg, meta: dict, device: torch.device):
        self.stage, self.cfg, self.meta, self.device = stage, cfg, meta, device
        data = Path(cfg.data)
        valid = read_split(data / "sequences" / "valid")
        self.valid = valid.slice(0, min(cfg.eval.max_requests, valid.num_rows))
        self.world = self.logged_clicks = self.estimator = None
        if not cfg.eval.world:  # no oracle: click models fitted on the valid split judge the lists
            from gref.clickmodel.estimate import ClickEstimator

            self.estimator = ClickEstimator(self.valid, meta, meta["click_model_context"], features=False)
        else:
            from gref.evaluation import evaluate_ranker, logged_ranker
            from gref.sim.world import World

            self.world = World.load(cfg.eval.world)
            # the logged order does not change between epochs: score it once
            self.logged_clicks = evaluate_ranker(logged_ranker, self.valid, meta, self.world,
                                                 cfg.eval.batch_size)["oracle_clicks"]
        self.pairs = self.sequences = None
        if stage == "dpo":
            F, C, w = meta["num_features"], len(meta["cat_sizes"]), meta["feedback_weights"]
            self.sequences = collate(self.valid.slice(0, 512), F, C, w).to(device)
            if (data / "pairs" / "valid").exists():
                pairs = read_split(data / "pairs" / "valid")
                self.pairs = collate(pairs.slice(0, min(512, pairs.num_rows)), F, C, w).to(device)

    def __call__(self, net, reference, objective) -> dict[str, Any]:
        net.eval()
        out = evaluate(net, self.valid, self.meta, self.cfg.eval.batch_size, self.world, self.device,
                       self.logged_clicks, self.estimator)
        if self.stage == "dpo":
            heads = self.cfg.decode_heads or net.k
            out.update(obj.post_validation(net, reference, objective, self.pairs, self.sequences, heads))
        return out


NON_FINITE = "non-finite training loss"  # the runner turns a worker's error with it into one line
# batches pooled per length group (gref.data.batch.group_by_length): the shuffle buffer's size
LENGTH_GROUP = 4
SHOWN = ("train_loss", "val_nll", "val_loss", "val_dpo_loss", "val_distill_nll", "val_kl", "ndcg",
         "oracle_clicks", "oracle_click_lift", "est_clicks_dbn", "reward_clicks")


def _quiet_train_reports() -> None:
    """Ray Train logs each ray.train.report as a full ``TrainingReport(...)`` dump at INFO on the
    worker (a logger named by its file path, outside Train's LoggingConfig): our own epoch line says
    it in one line, so that logger goes to WARNING here. Ray is pinned; if the module moves, nothing breaks."""
    try:
        from ray.train.v2._internal.execution import context as train_context
    except ImportError:
        return
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


def train_loop(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    stage, cfg, meta = config["stage"], config["cfg"], config["meta"]
    tracking = config.get("tracking")
    _quiet_train_reports()
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.manual_seed(cfg.run.seed + rank)
    if cfg.scaling.threads_per_worker:
        torch.set_num_threads(cfg.scaling.threads_per_worker)
    device = ray.train.torch.get_device()

    model = _initial_model(stage, cfg, meta, config)
    # pi_ref: frozen copy of the initial model
    reference = copy.deepcopy(model).to(device).eval().requires_grad_(False) if stage == "dpo" else None
    objective = _objective(stage, cfg, model, reference, config, device, cfg.run.seed + rank)
    model = ray.train.torch.prepare_model(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.optim.lr,
                            weight_decay=cfg.optim.weight_decay)
    # per the group's size now: an elastic group that lost a node takes more steps per epoch
    steps_per_epoch = math.ceil(config.get("train_rows", 1) / max(ctx.get_world_size(), 1) / cfg.optim.batch_size)
    schedule = lr_schedule(opt, cfg.optim, steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg.scaling.mixed_precision == "fp16")
    metric_name = selection_metric(cfg.eval.metric, bool(cfg.eval.world))

    start_epoch, best, best_state, history = 0, None, None, []
    local_dir = config.get("local_checkpoint_dir")  # in-process runs (num_workers 0): Ray keeps no checkpoints
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and local_dir and (Path(local_dir) / "state.pt").exists():
        checkpoint = ray.train.Checkpoint.from_directory(local_dir)  # a killed in-process run resumes too
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=False)
        obj.unwrap(model).load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start_epoch, best, best_state, history = state["epoch"] + 1, state["best"], state["best_model"], state["history"]
        if rank == 0:
            _say(f"[{stage}] resumed from the checkpoint of epoch {state['epoch']}")
            _relog_missing(tracking, history)

    validate = _Validation(stage, cfg, meta, device) if rank == 0 else None
    if rank == 0 and stage == "dpo" and start_epoch == 0:  # the initial model is a candidate too
        net = obj.unwrap(model)
        init = {"epoch": -1, **validate(net, reference, objective)}
        best, best_state = init[metric_name], {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        history.append({k: v for k, v in init.items() if isinstance(v, (int, float))})
        _relog_missing(tracking, history)  # once: a group restarted from scratch validates it again
        _say(f"[{stage}] initial model: " + ", ".join(f"{k}={v:.4f}" for k, v in init.items() if k in SHOWN))

    shard = ray.train.get_dataset_shard("train")
    F, C, weights = meta["num_features"], len(meta["cat_sizes"]), meta["feedback_weights"]
    for epoch in range(start_epoch, cfg.optim.epochs):
        model.train()
        t0, seen, sums, steps = time.time(), 0, {}, 0
        batches = shard.iter_batches(batch_size=cfg.optim.batch_size, batch_format="pyarrow",
                                     local_shuffle_buffer_size=4 * cfg.optim.batch_size,
                                     local_shuffle_seed=cfg.run.seed + epoch)
        for table in group_by_length(batches, LENGTH_GROUP, seed=cfg.run.seed + epoch):
            batch = collate(table, F, C, weights).to(device)
            with _autocast(device, cfg.scaling.mixed_precision):
                out = objective(model, batch)
            if not torch.isfinite(out["loss"]):
                raise FloatingPointError(
                    f"{NON_FINITE} in {stage}, epoch {epoch + 1}, step {steps + 1} (a batch of {batch.size} requests, "
                    f"candidates m up to {int(batch.cand_mask.sum(1).max())}, shown n up to {int(batch.lengths.max())}): "
                    "the model's numbers broke on these shapes; please report it with the data profile "
                    "(prepare's summary.json)")
            opt.zero_grad(set_to_none=True)
            scaler.scale(out["loss"]).backward()
            if cfg.optim.grad_clip:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            scaler.step(opt)
            scaler.update()
            schedule.step()
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + v.detach().item() * batch.size
            seen += batch.size
            steps += 1
            if rank == 0 and cfg.run.log_every_steps and steps % cfg.run.log_every_steps == 0:
                _say(f"[{stage}] epoch {epoch + 1} step {steps}: loss {sums['loss'] / seen:.4f}, "
                     f"{seen / (time.time() - t0):.0f} samples/s")
        metrics: dict[str, Any] = {"epoch": epoch, "train_samples": seen, "lr": schedule.get_last_lr()[0],
                                   "samples_per_s": seen / max(time.time() - t0, 1e-9)}
        metrics.update({f"train_{k}": v / max(seen, 1) for k, v in sums.items()})

        checkpoint = None
        if rank == 0:
            net = obj.unwrap(model)
            metrics.update(validate(net, reference, objective))
            if metric_name not in metrics:
                raise KeyError(f"eval.metric '{metric_name}' is not a validation metric of this stage "
                               f"(it has: {', '.join(sorted(k for k in metrics if k != 'epoch'))})")
            if better(metrics[metric_name], best, metric_name):
                best = metrics[metric_name]
                best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
            metrics["best_" + metric_name] = best
            history.append({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
            shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k in SHOWN)
            _say(f"[{stage}] epoch {epoch + 1}/{cfg.optim.epochs} ({seen} samples, "
                 f"{metrics['samples_per_s']:.0f}/s): {shown}")
            # in-process: one directory of the run, overwritten each epoch (Ray's local mode uploads
            # nothing, so a fresh temp dir per epoch would be left behind); else a temp dir that
            # Ray removes once it is uploaded to the run's storage
            tmp = Path(local_dir) if local_dir else Path(tempfile.mkdtemp(prefix="gref-ckpt-"))
            tmp.mkdir(parents=True, exist_ok=True)
            torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "schedule": schedule.state_dict(),
                        "epoch": epoch, "best": best, "best_model": best_state, "history": history,
                        "model_cfg": asdict(net.cfg), "metric": metric_name}, tmp / "state.pt.partial")
            (tmp / "state.pt.partial").replace(tmp / "state.pt")  # a kill mid-write keeps the last epoch's
            checkpoint = ray.train.Checkpoint.from_directory(str(tmp))
        ray.train.report(metrics, checkpoint=checkpoint, delete_local_checkpoint_after_upload=not local_dir)
        if epoch == cfg.run.fail_once_at_epoch and start_epoch == 0:  # after the checkpoint, before MLflow hears
            raise RuntimeError(f"injected failure after epoch {epoch} (run.fail_once_at_epoch)")
        if rank == 0 and local_dir:  # in-process; a worker group's epochs: EpochsToMlflow, on the controller
            _log_epoch(tracking, history[-1])
