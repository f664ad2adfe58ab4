"""Driver side of a training job: one MLflow run, one TorchTrainer.fit, the best model exported.

The MLflow run id is stored beside the Ray Train run (``<storage>/<name>/mlflow_run_id``),
so re-running a job with the same run name resumes both the training and its MLflow run.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from gref import tracking
from gref.config import flatten, to_dict
from gref.model.io import model_from_config, save_reranker
from gref.train.ray_loop import train_loop
from gref.train.steps import data_meta, selection_metric


def _use_gpu(requested: bool | None) -> bool:
    import ray

    if requested is not None:
        return requested
    return ray.cluster_resources().get("GPU", 0) > 0


def run_training(stage: str, cfg: Any, dataset_path: Path, init: torch.nn.Module | None = None,
                 callbacks: list | None = None) -> dict[str, Any]:
    """Fit ``stage`` ("pretrain" | "dpo" | "baseline") and export/log the best model. Returns an
    outcome dict.

    ``callbacks``: Ray Train ``UserCallback``s (a Tune sweep passes TuneReportCallback)."""
    import mlflow
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from gref.ray_utils import init_ray

    init_ray()
    data = Path(cfg.data).resolve()
    cfg.data = str(data)
    if cfg.eval.world:
        cfg.eval.world = str(Path(cfg.eval.world).resolve())
    label = cfg.model.kind if stage == "baseline" else stage
    name = cfg.run.name or f"{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage = Path(cfg.run.storage).resolve()
    run_dir = storage / name
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = data_meta(data)

    tracking.setup(cfg.tracking)
    mlflow.set_experiment(cfg.tracking.experiment)
    nested = mlflow.active_run() is not None  # under the pipeline's run when there is one
    active, resumed = tracking.resumable_run(run_dir / "mlflow_run_id", name, nested=nested)
    try:
        if not resumed:
            params = flatten(to_dict(cfg))
            params.update(tracking.data_lineage(data))
            params["stage"] = stage
            mlflow.log_params({k: ("" if v is None else str(v))[:500] for k, v in params.items()})
            mlflow.log_artifact(str(data / "summary.json"), artifact_path="data")
        use_gpu = _use_gpu(cfg.scaling.use_gpu)
        workers = cfg.scaling.num_workers
        resources = {"CPU": cfg.scaling.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
        loop_config = {"stage": stage, "cfg": cfg, "meta": meta,
                       "tracking": {"uri": tracking.tracking_uri(cfg.tracking), "run_id": active.info.run_id}}
        if init is not None:
            loop_config["init_state"] = {k: v.cpu() for k, v in init.state_dict().items()}
            loop_config["init_model_cfg"] = asdict(init.cfg)
        train_ds = ray.data.read_parquet(str(dataset_path), num_cpus=cfg.scaling.read_cpus)
        if cfg.scaling.materialize:  # epochs then read the object store, not Parquet (README: benchmarks)
            train_ds = train_ds.materialize()
        trainer = TorchTrainer(
            train_loop,
            train_loop_config=loop_config,
            datasets={"train": train_ds},
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                         resources_per_worker=resources if workers else None),
            run_config=RunConfig(name=name, storage_path=str(storage),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2),
                                 failure_config=FailureConfig(max_failures=cfg.run.max_failures),
                                 callbacks=callbacks or []),
        )
        result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError(f"{stage} run {name} finished without a checkpoint")
        with result.checkpoint.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=False)
        best = model_from_config(state["model_cfg"])
        best.load_state_dict(state["best_model"])
        metric = selection_metric(cfg.eval.metric, bool(cfg.eval.world))
        best_epoch = max(state["history"], key=lambda h: h.get(metric, float("-inf")))
        model_dir = save_reranker(run_dir / "model", best, data / "features.json",
                                  extra={"stage": stage, "run_name": name, "metric": metric,
                                         "best_epoch": best_epoch})
        plot = tracking.plot_curves(state["history"], ["train_loss", "val_nll", "val_dpo_loss", "ndcg",
                                                       "oracle_clicks"], run_dir / "curves.png",
                                    f"{label} {name}")
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
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    return {"stage": stage, "run_name": name, "run_dir": str(run_dir), "model_dir": str(model_dir),
            "mlflow_run_id": active.info.run_id, "model_uri": logged["model_uri"],
            "checkpoint": result.checkpoint.path,
            "registered_version": logged["version"], "selection_metric": metric,
            "best": best_epoch, "history": state["history"]}
