"""Driver side of a training job: one MLflow run, one TorchTrainer.fit, the best model exported.

The MLflow run id is stored beside the Ray Train run (``<storage>/<name>/mlflow_run_id``),
so re-running a job with the same run name resumes both the training and its MLflow run; a run
that already finished with the same config is not trained, logged or registered again
(``outcome.json`` beside it holds what it produced). A driver stopped by SIGTERM / Ctrl-C ends
its MLflow run as KILLED (a SIGKILLed one stays RUNNING until the same command resumes it).
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from gref import tracking
from gref.cli import log
from gref.config import ConfigError, flatten, to_dict
from gref.data.sequences import imitation_requests
from gref.reranker_io import model_from_config, save_reranker
from gref.train.ray_loop import NON_FINITE, epochs_callback, train_loop
from gref.train.steps import data_meta, metric_mode, selection_metric, validation_metrics


def _use_gpu(requested: bool | None) -> bool:
    import ray

    if requested is not None:
        return requested
    return ray.cluster_resources().get("GPU", 0) > 0


def _worker_count(scaling: Any) -> int | tuple[int, int]:
    """Ray Train's ``num_workers``: a fixed count, or (min, max) for an elastic group."""
    if scaling.min_workers and scaling.num_workers:
        return (scaling.min_workers, scaling.num_workers)
    return scaling.num_workers


def train_split(stage: str, cfg: Any) -> Path:
    """What ``stage`` trains on: the prepared sequences, or for Rerank-DPO on logged pairs the
    Eq. 7 pairs."""
    data = Path(cfg.data).resolve()
    if stage == "dpo" and cfg.objective == "dpo" and cfg.pairs == "logged":
        return data / "pairs" / "train"
    return data / "sequences" / "train"


def check_config(stage: str, cfg: Any, gref_model: bool) -> str:
    """Fail before any work on a setting the loop could only trip over later. -> selection metric."""
    metric = selection_metric(cfg.eval.metric, bool(cfg.eval.world))
    post = {"objective": cfg.objective, "pairs": cfg.pairs} if stage == "dpo" else None
    known = validation_metrics(stage, gref_model, bool(cfg.eval.world), post)
    if metric not in known:
        raise ConfigError(f"eval.metric '{metric}' is not produced by {stage} validation "
                          f"(one of: {', '.join(sorted(known))})")
    scaling = cfg.scaling
    if scaling.placement not in ("PACK", "SPREAD", "STRICT_SPREAD"):
        raise ConfigError(f"scaling.placement must be PACK | SPREAD | STRICT_SPREAD, got '{scaling.placement}'")
    if scaling.min_workers and not 0 < scaling.min_workers <= scaling.num_workers:
        raise ConfigError(f"scaling.min_workers must be 0 (fixed) or in 1..num_workers={scaling.num_workers}, "
                          f"got {scaling.min_workers}")
    if stage == "pretrain" and cfg.target not in ("exposure", "eq7"):
        raise ConfigError(f"target must be exposure | eq7, got '{cfg.target}'")
    if stage == "dpo":
        if cfg.objective not in ("dpo", "distill") or cfg.pairs not in ("logged", "onpolicy"):
            raise ConfigError(f"objective must be dpo | distill and pairs logged | onpolicy "
                              f"(got objective={cfg.objective}, pairs={cfg.pairs})")
        if cfg.needs_reward and not cfg.reward:
            raise ConfigError(f"objective={cfg.objective} pairs={cfg.pairs} needs a list-level reward: "
                              "reward=<list click model dir or URI (jobs.reward)> or reward=oracle")
        if cfg.reward == "oracle" and not cfg.eval.world:
            raise ConfigError("reward=oracle needs the simulated world (eval.world=DIR/world)")
    return metric


def _best_entry(history: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    sign = -1.0 if metric_mode(metric) == "min" else 1.0
    return max(history, key=lambda h: sign * h.get(metric, -sign * float("inf")))


class _Stopped(BaseException):
    """SIGTERM reached the driver. A BaseException, like KeyboardInterrupt: the handler raises it
    wherever the main thread happens to be, and library code there may catch ``Exception`` --
    Ray Data's iteration stats did, logging "signal 15" and training on to the last epoch."""


def _raise_stopped(signum, frame):
    raise _Stopped(f"signal {signum}")


def run_training(stage: str, cfg: Any, init: torch.nn.Module | None = None,
                 callbacks: list | None = None) -> dict[str, Any]:
    """Fit ``stage`` ("pretrain" | "dpo" | "baseline") on ``train_split(stage, cfg)`` and
    export/log the best model. Returns an outcome dict.

    ``init``: the initial model (post-training's policy and reference; a reward model with its
    anchor loaded). ``callbacks``: Ray Train ``UserCallback``s (a Tune sweep passes TuneReportCallback)."""
    import mlflow
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from gref.ray_utils import data_context, init_ray

    data = Path(cfg.data).resolve()
    cfg.data = str(data)
    if cfg.eval.world:
        cfg.eval.world = str(Path(cfg.eval.world).resolve())
    metric = check_config(stage, cfg, gref_model=stage != "baseline")
    label = cfg.model.kind if stage == "baseline" else stage
    name = cfg.run.name or f"{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage = Path(cfg.run.storage).resolve()
    run_dir = storage / name
    run_dir.mkdir(parents=True, exist_ok=True)
    params = flatten(to_dict(cfg))
    done = run_dir / "outcome.json"
    if done.exists() and json.loads(done.read_text()).get("params") == json.loads(json.dumps(params, default=str)):
        log(stage, f"run {name} already finished with this config: nothing trained or registered again")
        return json.loads(done.read_text())["outcome"]
    if done.exists():  # finished before with another config: an in-process run starts over
        shutil.rmtree(run_dir / "local_checkpoint", ignore_errors=True)
    meta = data_meta(data)
    if meta["n_max"] > cfg.model.max_length or meta["m_max"] > cfg.model.max_candidates:
        log(stage, f"the data's lists are longer than the config's (shown up to {meta['n_max']}, "
                   f"candidates up to {meta['m_max']}): the model is sized for them")

    init_ray()
    tracking.setup(cfg.tracking)
    mlflow.set_experiment(cfg.tracking.experiment)
    nested = mlflow.active_run() is not None  # under the pipeline's run when there is one
    active, resumed = tracking.resumable_run(run_dir / "mlflow_run_id", name, nested=nested)
    # (signal handlers can only be set from the main thread; a Tune trial runs elsewhere)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_stopped) if main_thread else None
    try:
        if not resumed:
            mlflow.log_params({k: ("" if v is None else str(v))[:500] for k, v in params.items()}
                              | {k: str(v) for k, v in tracking.data_lineage(data).items()} | {"stage": stage})
            mlflow.log_artifact(str(data / "summary.json"), artifact_path="data")
            tracking.log_training_inputs(data, train_split(stage, cfg))
        use_gpu = _use_gpu(cfg.scaling.use_gpu)
        workers = cfg.scaling.num_workers
        resources = {"CPU": cfg.scaling.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
        data_context(whole_split_reads=True)
        train_ds = ray.data.read_parquet(str(train_split(stage, cfg)), num_cpus=cfg.scaling.read_cpus)
        if stage == "pretrain":  # imitation of production's order: not random (bucket) or sampled (explored) orders
            train_ds = train_ds.map_batches(imitation_requests, batch_format="pyarrow", batch_size=None)
        if cfg.scaling.materialize:  # epochs then read the object store, not Parquet (docs/benchmarks.md)
            train_ds = train_ds.materialize()
        loop_config = {"stage": stage, "cfg": cfg, "meta": meta,
                       "train_rows": train_ds.count(),
                       "tracking": {"uri": tracking.tracking_uri(cfg.tracking), "run_id": active.info.run_id},
                       **({"local_checkpoint_dir": str(run_dir / "local_checkpoint")} if workers == 0 else {})}
        if init is not None:
            loop_config["init_state"] = {k: v.cpu() for k, v in init.state_dict().items()}
            loop_config["init_model_cfg"] = asdict(init.cfg)
        if stage == "dpo" and cfg.reward and cfg.reward != "oracle":
            reward = tracking.load_reranker_uri(cfg.reward)
            loop_config["reward_state"] = reward.state_dict()
            loop_config["reward_model_cfg"] = asdict(reward.cfg)
        trainer = TorchTrainer(
            train_loop,
            train_loop_config=loop_config,
            datasets={"train": train_ds},
            scaling_config=ScalingConfig(num_workers=_worker_count(cfg.scaling), use_gpu=use_gpu,
                                         resources_per_worker=resources if workers else None,
                                         placement_strategy=cfg.scaling.placement),
            run_config=RunConfig(name=name, storage_path=str(storage),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2),
                                 failure_config=FailureConfig(max_failures=cfg.run.max_failures),
                                 # Train's INFO lines (a TrainingReport dump per epoch) go to the
                                 # session's log files only; the console gets our progress lines
                                 logging_config=LoggingConfig(log_level="WARNING"),
                                 callbacks=[*(callbacks or []),
                                            *([epochs_callback(loop_config["tracking"])] if workers else [])]),
        )
        try:
            result = trainer.fit()
        except Exception as err:  # noqa: BLE001 -- re-raised unless it is the loop's own non-finite loss check
            if NON_FINITE not in str(err):
                raise
            line = next(ln for ln in str(err).splitlines() if NON_FINITE in ln)
            raise SystemExit(f"[{stage}] stopped: {line.split('FloatingPointError: ')[-1].strip()}") from None
        if result.checkpoint is None:
            raise RuntimeError(f"{stage} run {name} finished without a checkpoint")
        with result.checkpoint.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=False)
        best = model_from_config(state["model_cfg"])
        best.load_state_dict(state["best_model"])
        best_epoch = _best_entry(state["history"], metric)
        model_dir = save_reranker(run_dir / "model", best, data / "features.json",
                                  extra={"stage": stage, "run_name": name, "metric": metric,
                                         "best_epoch": best_epoch})
        plot = tracking.plot_curves(state["history"], ["train_loss", "val_nll", "val_loss", "val_dpo_loss",
                                                       "val_distill_nll", "val_kl", "ndcg", "oracle_clicks"],
                                    run_dir / "curves.png", f"{label} {name} (epoch -1 = the initial model)")
        mlflow.log_artifact(str(plot))
        (run_dir / "history.json").write_text(json.dumps(state["history"], indent=2))
        mlflow.log_artifact(str(run_dir / "history.json"))
        register = getattr(cfg, "register", False)
        registry_name = cfg.registry_name() if stage == "baseline" else cfg.tracking.registered_model
        logged = tracking.log_reranker(model_dir, registry_name if register else None)
        if stage == "baseline" and logged["version"] is not None:  # the version baselines are compared against
            tracking.set_aliases(registry_name, {"champion": logged["version"]})
        mlflow.set_tags({"gref.stage": stage, "gref.best_epoch": best_epoch["epoch"],
                         **({"gref.baseline": cfg.model.kind} if stage == "baseline" else {})})
        mlflow.end_run("FINISHED")
    except (_Stopped, KeyboardInterrupt):
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    outcome = {"stage": stage, "run_name": name, "run_dir": str(run_dir), "model_dir": str(model_dir),
               "mlflow_run_id": active.info.run_id, "model_uri": logged["model_uri"],
               "checkpoint": result.checkpoint.path,
               "registered_version": logged["version"], "selection_metric": metric,
               "best": best_epoch, "history": state["history"]}
    done.write_text(json.dumps({"params": params, "outcome": outcome}, default=str, indent=2))
    return outcome
