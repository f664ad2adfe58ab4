"""Ray Tune sweep of GReF's hyper-parameters; every trial runs pair construction -> pre-training -> Rerank-DPO.

    python -m tune.sweep --data OUT/prep [--config tune/laptop.yaml] [key=value ...]

Without --config the laptop sweep (tune/laptop.yaml) runs. The search space (``space:``, see
tune/space.py) varies alpha/gamma (a trial re-derives its Eq. 7 pairs from the sequences),
lambda1/lambda2 and the OMTP head count k (pre-training), beta (DPO) and learning rates.
Grid keys are crossed, random ones sampled ``num_samples`` times; ``scheduler: asha`` stops
weak trials early on the per-epoch validation objective (``metric``; auto = oracle expected
clicks when the data is simulated, NDCG otherwise).

Each trial runs Ray Train V2 inside a function trainable (fractional CPUs so trials share a
laptop; GPUs per trial worker on a cluster via pretrain/dpo.scaling.use_gpu). MLflow: one parent
run for the sweep, one nested run per trial (its params, live curves ``pretrain.*``, ``dpo.*``,
``objective``), and the trial's pretrain/dpo runs nested under it. The parent run gets
results.csv, params_vs_objective.png and best/{pretrain,dpo,dataset}.yaml, which
jobs.pretrain / jobs.dpo / jobs.prepare accept as they are.

Outputs in ``<storage>/<name>/``: tune/ (Tune's state and TensorBoard logs), trials/<id>/
(derived pairs, Ray Train runs), results.csv, params_vs_objective.png, best/. Running again
with the same ``name`` resumes the sweep (Tuner.restore): finished trials are kept, unfinished
and errored ones continue from their last Train checkpoint.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from gref.cli import log, parser
from gref.config import ConfigError, flatten, load_config, override, save_yaml, to_dict
from gref.tracking import TrackingConfig
from gref.train.config import DPOConfig, PretrainConfig
from tune.space import PairsConfig, TrialConfig, check_space, is_log_scale, rerank_dpo, to_tune

DEFAULT_CONFIG = Path(__file__).parent / "laptop.yaml"


@dataclass
class SweepConfig:
    data: str = ""  # prepared data dir (jobs.prepare --out); --data overrides
    world: str = "auto"  # simulated world for oracle metrics; auto = world/ beside the logs the data came from
    name: str = ""  # sweep name; "" = sweep-<time>. The same name again = resume (Tuner.restore)
    storage: str = "runs/tune"  # sweeps live in <storage>/<name>/
    metric: str = "auto"  # objective (validation, maximised): auto = oracle_clicks with a world, else ndcg
    num_samples: int = 8  # trials of the random keys (with grid keys: repeats of the whole grid)
    max_concurrent: int = 2  # trials running at once
    scheduler: Literal["asha", "fifo"] = "asha"  # asha (early stopping per epoch) | fifo (every trial runs to the end)
    asha_grace: int = 1  # ASHA: epochs every trial gets before it can be stopped
    asha_reduction: int = 2  # ASHA: about 1/reduction of the trials go on at each rung
    trial_cpus: float = 0.1  # CPUs reserved by a trial's driver (its Train workers ask for their own)
    max_failures: int = 1  # a failed trial is retried this often (it resumes from its checkpoints)
    seed: int = 0  # random-search seed
    space: dict = field(default_factory=dict)  # key -> {grid|choice|uniform|loguniform|randint: ...}
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)  # every trial's base, before `space`
    dpo: DPOConfig = field(default_factory=rerank_dpo)  # Rerank-DPO on the trial's pairs; dpo.optim.epochs=0: pre-training only
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


@dataclass
class TrialSetup:
    """What every trial needs besides its sampled params (passed with tune.with_parameters)."""

    root: str  # the sweep's directory
    data: str  # prepared data (absolute)
    world: str  # oracle world ("" = none)
    metric: str  # objective
    base: TrialConfig  # pairs default to the data's alpha/gamma
    tracking: TrackingConfig  # absolute URI: trials run in other processes and directories
    parent_run_id: str  # the sweep's MLflow run


def find_world(setting: str, data: Path) -> str:
    """``auto``: the simulator writes DIR/logs and DIR/world side by side."""
    if setting != "auto":
        return str(Path(setting).resolve()) if setting else ""
    logs = json.loads((data / "summary.json").read_text()).get("logs", "")
    world = Path(logs).parent / "world"
    return str(world) if logs and (world / "world.json").exists() else ""


def _mirror_callback(uri: str, run_id: str, stage: str, step_offset: int, metric: str):
    """A Ray Train callback copying each epoch's validation metrics onto the trial's MLflow run,
    so the trial run shows live curves (``<stage>.<metric>`` and ``objective`` over all epochs)."""
    from ray.train import UserCallback

    from gref.train.ray_loop import log_mlflow

    class MirrorToTrialRun(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            m = metrics[0]  # rank 0 validates
            if metric not in m:
                return
            keep = {f"{stage}.{k}": v for k, v in m.items()
                    if k in (metric, "train_loss", "val_nll", "val_dpo_loss", "ndcg", "oracle_clicks")}
            log_mlflow({"uri": uri, "run_id": run_id}, {**keep, "objective": m[metric]},
                       step_offset + int(m["epoch"]))

    return MirrorToTrialRun()


def run_trial(params: dict[str, Any], setup: TrialSetup) -> None:
    """One Tune trial: derive pairs for its alpha/gamma, pre-train, DPO; Tune hears every epoch
    (TuneReportCallback) and a last result with the exported model's objective (``final`` = 1)."""
    import mlflow
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from gref import tracking
    from gref.data.pairs import rederive
    from gref.reranker_io import load_reranker
    from gref.train.runner import run_training

    trial_id = tune.get_context().get_trial_id()
    root = Path(setup.root) / "trials" / trial_id
    root.mkdir(parents=True, exist_ok=True)
    cfg = override(setup.base, params)
    data = Path(setup.data)
    if (cfg.pairs.alpha, cfg.pairs.gamma) != (setup.base.pairs.alpha, setup.base.pairs.gamma):
        data = rederive(data, root / "data", cfg.pairs.alpha, cfg.pairs.gamma)
    stages = {name: replace(stage, data=str(data), tracking=setup.tracking,
                            eval=replace(stage.eval, world=setup.world, metric=setup.metric),
                            run=replace(stage.run, name=f"{trial_id}-{name}", storage=str(root / "train")))
              for name, stage in (("pretrain", cfg.pretrain), ("dpo", cfg.dpo))}
    stages["dpo"].register = False  # the sweep registers nothing; its best config can

    tracking.setup(setup.tracking)
    run, resumed = tracking.resumable_run(
        root / "mlflow_run_id", f"trial-{trial_id}", parent_run_id=setup.parent_run_id,
        experiment_id=mlflow.get_experiment_by_name(setup.tracking.experiment).experiment_id)
    uri = tracking.tracking_uri(setup.tracking)
    try:
        if not resumed:
            mlflow.log_params({**{k: str(v) for k, v in params.items()}, "trial_id": trial_id,
                               "pairs.alpha": cfg.pairs.alpha, "pairs.gamma": cfg.pairs.gamma})
        outcomes: dict[str, dict] = {}
        offset = 0
        for name, stage in stages.items():
            if name == "dpo" and stage.optim.epochs == 0:
                break
            done = root / f"{name}.json"  # a resumed trial skips the stages it finished
            if done.exists():
                outcomes[name] = json.loads(done.read_text())
            else:
                callbacks = [TuneReportCallback(), _mirror_callback(uri, run.info.run_id, name, offset, setup.metric)]
                init = load_reranker(outcomes["pretrain"]["model_dir"]) if name == "dpo" else None
                out = run_training(name, stage, init=init, callbacks=callbacks)
                outcomes[name] = {k: out[k] for k in ("model_dir", "best", "mlflow_run_id")}
                done.write_text(json.dumps(outcomes[name]))
            offset += stage.optim.epochs
        last = outcomes.get("dpo", outcomes["pretrain"])
        score = last["best"][setup.metric]
        mlflow.log_metric("objective_final", score)
        mlflow.end_run("FINISHED")
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    tune.report({setup.metric: score, "final": 1, "trial_id": trial_id, "model_dir": last["model_dir"],
                 "pretrained_model_dir": outcomes["pretrain"]["model_dir"], "trial_data": str(data)})


def _last_line(text: str) -> str:
    """The exception's own message: Ray wraps it under lines of actor and traceback context."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def _status(result) -> str:
    if result.error is not None:
        return "error"
    return "finished" if result.metrics.get("final") else "stopped early"


def results_table(grid, space: dict[str, Any], metric: str) -> list[dict[str, Any]]:
    """One row per trial: id, status, swept params, objective (the exported model's score for a
    finished trial; the last epoch's for one stopped early), epochs reported, seconds."""
    rows = []
    for result in grid:
        m = result.metrics or {}
        rows.append({"trial_id": m.get("trial_id") or Path(result.path).name, "status": _status(result),
                     **{k: result.config.get(k) for k in space},
                     "objective": m.get(metric, math.nan), "iterations": m.get("training_iteration", 0),
                     "seconds": round(m.get("time_total_s", 0.0), 1),
                     "error": "" if result.error is None else _last_line(str(result.error))})
    finite = [r for r in rows if not math.isnan(r["objective"])]
    return (sorted(finite, key=lambda r: (r["status"] != "finished", -r["objective"]))
            + [r for r in rows if math.isnan(r["objective"])])


def plot_params(rows: list[dict[str, Any]], space: dict[str, Any], metric: str, path: Path, title: str) -> Path:
    """Objective against each swept parameter; filled = finished, hollow = stopped early."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    keys = [k for k, spec in space.items() if isinstance(spec, dict)]
    cols = min(max(len(keys), 1), 4)
    rows_n = math.ceil(max(len(keys), 1) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.6 * cols, 3.0 * rows_n), squeeze=False, sharey=True)
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    for ax, key in zip(axes.flat, keys):
        values = [r[key] for r in rows]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        labels = sorted({str(v) for v in values})
        for finished in (True, False):
            pts = [(v if numeric else labels.index(str(v)), r["objective"]) for v, r in zip(values, rows)
                   if (r["status"] == "finished") == finished and r["objective"] == r["objective"]]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=36,
                           facecolors="tab:blue" if finished else "none", edgecolors="tab:blue",
                           label="finished" if finished else "stopped early")
        if not numeric:
            ax.set_xticks(range(len(labels)), labels)
        if is_log_scale(space[key]):
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel(metric)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_best(best, setup: TrialSetup, data_summary: dict, out: Path) -> dict[str, str]:
    """The best trial's configs as files the jobs accept unchanged."""
    out.mkdir(parents=True, exist_ok=True)
    cfg = override(setup.base, best.config)
    m = best.metrics
    # a new run name each time; fault injection is a test device, never part of a best config
    pretrain = replace(cfg.pretrain, data=setup.data, tracking=setup.tracking,
                       eval=replace(cfg.pretrain.eval, world=setup.world),
                       run=replace(cfg.pretrain.run, name="", fail_once_at_epoch=-1))
    dpo = replace(cfg.dpo, data=m["trial_data"], init=m["pretrained_model_dir"], tracking=setup.tracking,
                  eval=replace(cfg.dpo.eval, world=setup.world), run=replace(cfg.dpo.run, name="", fail_once_at_epoch=-1))
    files = {"pretrain": out / "pretrain.yaml", "dpo": out / "dpo.yaml", "dataset": out / "dataset.yaml",
             "trial": out / "trial.json"}
    save_yaml(pretrain, files["pretrain"])
    save_yaml(dpo, files["dpo"])
    save_yaml({**data_summary["config"], "alpha": cfg.pairs.alpha, "gamma": cfg.pairs.gamma}, files["dataset"])
    files["trial"].write_text(json.dumps({"trial_id": m["trial_id"], "params": best.config,
                                          "objective": m[setup.metric], "model_dir": m["model_dir"]}, indent=2))
    return {k: str(v) for k, v in files.items()}


def close_orphan_runs(parent_run_id: str, uri: str) -> int:
    """Trials stopped early (ASHA) are killed mid-epoch and leave their MLflow runs RUNNING:
    mark those under this sweep KILLED. Returns how many."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_run(parent_run_id).info.experiment_id
    closed, parents = 0, [parent_run_id]
    while parents:
        children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parents.pop()}'")
        for run in children:
            parents.append(run.info.run_id)
            if run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, "KILLED")
                closed += 1
    return closed


def _scheduler(cfg: SweepConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if cfg.scheduler == "fifo":
        return FIFOScheduler()
    if cfg.scheduler != "asha":
        raise ConfigError(f"config key 'scheduler' must be asha or fifo, got {cfg.scheduler!r}")
    epochs = cfg.pretrain.optim.epochs + cfg.dpo.optim.epochs + 1  # + the final report
    return ASHAScheduler(max_t=epochs, grace_period=cfg.asha_grace, reduction_factor=cfg.asha_reduction)


def _open_parent_run(root: Path, name: str, cfg: SweepConfig, setup_params: dict[str, Any]):
    import mlflow

    from gref import tracking

    run, resumed = tracking.resumable_run(root / "mlflow_run_id", name, tags={"gref.kind": "sweep"})
    if not resumed:
        mlflow.log_params({k: str(v)[:500] for k, v in setup_params.items()})
        mlflow.log_text(yaml.safe_dump(cfg.space, sort_keys=False), "space.yaml")
    return run


def run(cfg: SweepConfig) -> dict[str, Any]:
    import mlflow
    from ray import tune

    from gref import tracking
    from gref.ray_utils import init_ray
    from gref.train.steps import selection_metric

    check_space(cfg.space, TrialConfig(pretrain=cfg.pretrain, dpo=cfg.dpo))  # config errors first
    if cfg.dpo.optim.epochs and (cfg.dpo.objective != "dpo" or cfg.dpo.pairs != "logged"):
        raise ConfigError("a sweep post-trains with Rerank-DPO on each trial's Eq. 7 pairs (it fits no reward): "
                          f"dpo.objective=dpo dpo.pairs=logged, got {cfg.dpo.objective}/{cfg.dpo.pairs}")
    _scheduler(cfg)
    for stage in ("pretrain", "dpo"):
        if getattr(cfg, stage).scaling.num_workers < 1:  # ray.train.get_context() raises inside Tune
            raise ConfigError(f"config key '{stage}.scaling.num_workers' must be >= 1 in a sweep: "
                              "Ray Train's in-process mode (0) cannot run inside a Tune trial")
    if not cfg.data or not (Path(cfg.data) / "sequences" / "train").exists():
        raise SystemExit(f"no prepared data at '{cfg.data}' (give --data OUT of jobs.prepare)")
    name = cfg.name or f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = replace(cfg, name=name, data=str(Path(cfg.data).resolve()))
    root = Path(cfg.storage).resolve() / name
    restoring = tune.Tuner.can_restore(str(root / "tune"))
    if restoring:  # a sweep resumes with the space and base configs it started with
        saved = load_config(SweepConfig, root / "sweep.yaml")
        if to_dict(saved) != to_dict(cfg):
            log("sweep", f"resuming '{name}' with its saved config {root / 'sweep.yaml'} (changes are ignored)")
        cfg = saved
    data = Path(cfg.data)
    data_summary = json.loads((data / "summary.json").read_text())
    world = find_world(cfg.world, data)
    metric = selection_metric(cfg.metric, bool(world))
    base = TrialConfig(PairsConfig(data_summary["config"]["alpha"], data_summary["config"]["gamma"]),
                       cfg.pretrain, cfg.dpo)
    space = check_space(cfg.space, base)
    root.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, root / "sweep.yaml")

    init_ray()
    tracking.setup(cfg.tracking)
    tracking_cfg = replace(cfg.tracking, uri=tracking.tracking_uri(cfg.tracking))
    mlflow.set_experiment(cfg.tracking.experiment)
    params = {"metric": metric, "num_samples": cfg.num_samples, "scheduler": cfg.scheduler, "world": world,
              **tracking.data_lineage(data), **{f"space.{k}": json.dumps(v) for k, v in space.items()},
              **{k: v for k, v in flatten(to_dict(cfg)).items() if not k.startswith("space")}}
    started = time.time()
    with _open_parent_run(root, name, cfg, params) as parent:
        setup = TrialSetup(str(root), str(data), world, metric, base, tracking_cfg, parent.info.run_id)
        trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup), {"cpu": cfg.trial_cpus})
        if restoring:
            log("sweep", f"resuming sweep {name} from {root / 'tune'}")
            tuner = tune.Tuner.restore(str(root / "tune"), trainable, resume_errored=True)
        else:
            log("sweep", f"sweep {name}: {len(space)} keys, objective {metric} (max), scheduler {cfg.scheduler}")
            from ray.tune.search import BasicVariantGenerator

            search = BasicVariantGenerator(random_state=cfg.seed, max_concurrent=cfg.max_concurrent)
            tuner = tune.Tuner(
                trainable, param_space=to_tune(space),
                tune_config=tune.TuneConfig(metric=metric, mode="max", num_samples=cfg.num_samples,
                                            scheduler=_scheduler(cfg), search_alg=search),
                run_config=tune.RunConfig(name="tune", storage_path=str(root),
                                          failure_config=tune.FailureConfig(max_failures=cfg.max_failures)))
        grid = tuner.fit()
        killed = close_orphan_runs(parent.info.run_id, tracking_cfg.uri)
        rows = results_table(grid, space, metric)
        finished = [r for r in grid if _status(r) == "finished"]
        import pandas as pd

        pd.DataFrame(rows).to_csv(root / "results.csv", index=False)
        plot_params(rows, space, metric, root / "params_vs_objective.png", f"sweep {name}: {metric} by parameter")
        mlflow.log_artifact(str(root / "results.csv"))
        mlflow.log_artifact(str(root / "params_vs_objective.png"))
        summary: dict[str, Any] = {
            "name": name, "dir": str(root), "metric": metric, "mlflow_run_id": parent.info.run_id,
            "restored": restoring, "wall_s": round(time.time() - started, 1), "trials": rows,
            "counts": {s: sum(r["status"] == s for r in rows) for s in ("finished", "stopped early", "error")},
            "orphan_runs_killed": killed, "best": None}
        if finished:  # stopped trials have no DPO model: the best is a finished one
            best = max(finished, key=lambda r: r.metrics[metric])
            files = write_best(best, setup, data_summary, root / "best")
            mlflow.log_artifacts(str(root / "best"), artifact_path="best")
            mlflow.log_metric(f"best_{metric}", best.metrics[metric])
            summary["best"] = {"trial_id": best.metrics["trial_id"], "objective": best.metrics[metric],
                               "params": {k: best.config[k] for k in space}, "files": files}
        mlflow.log_metrics({f"trials_{k.replace(' ', '_')}": v for k, v in summary["counts"].items()})
        (root / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        mlflow.log_artifact(str(root / "summary.json"))
    return summary


def _print_summary(summary: dict[str, Any]) -> None:
    import pandas as pd

    print(f"\n== sweep {summary['name']} ({summary['wall_s']} s; {summary['counts']}) ==")
    table = pd.DataFrame(summary["trials"]).drop(columns=["error"])
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for row in summary["trials"]:
        if row["error"]:
            print(f"trial {row['trial_id']} failed: {row['error']}")
    best = summary["best"]
    if best is None:
        print("no trial finished: no best config")
    else:
        print(f"\nbest: trial {best['trial_id']}, {summary['metric']} = {best['objective']:.4f}, {best['params']}")
        print(f"  python -m jobs.pretrain --config {best['files']['pretrain']}")
        print(f"  python -m jobs.dpo --config {best['files']['dpo']}")
    print(f"\nresults: {summary['dir']}/results.csv, params_vs_objective.png; MLflow run {summary['mlflow_run_id']}")
    print(f"TensorBoard: tensorboard --logdir {summary['dir']}/tune")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser("tune.sweep", __doc__)
    p.add_argument("--data", help="prepared data dir (overrides config 'data')")
    args = p.parse_args(argv)
    try:
        cfg = load_config(SweepConfig, args.config or DEFAULT_CONFIG,
                          ([f"data={args.data}"] if args.data else []) + args.overrides)
    except (ConfigError, FileNotFoundError) as err:
        raise SystemExit(f"config error: {err}") from None
    try:
        summary = run(cfg)  # checks the search space before Ray starts
    except ConfigError as err:
        raise SystemExit(f"config error: {err}") from None
    _print_summary(summary)
    return summary


if __name__ == "__main__":
    main()
