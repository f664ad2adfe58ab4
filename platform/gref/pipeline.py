"""The whole story in one call (``python -m jobs.pipeline``): simulate -> prepare -> pretrain ->
reward -> post-train [-> baselines] -> evaluate -> register.

Everything lands under ``out`` (data, Ray Train runs, the report) and in MLflow (one parent
run with each job's run nested under it). Post-training is the ``dpo`` section: the default
recipe (configs/pipeline.yaml) fits a list click model to the logged clicks (``reward``,
anchored on the pre-trained GReF; gref.recipe.train_reward) and distils its beam-search lists into GReF;
configs/paper.yaml is the paper's Rerank-DPO on Eq. 7 pairs. The post-trained model is registered as
``tracking.registered_model``; the new version gets the alias ``challenger``, and also
``champion`` when there is none yet or it is shown better than the current champion on this run's
test split, paired on the same requests: by the oracle on a simulated world, and on real logs only when
every click model's 95 % interval of the gain lies above 0 (gref.serving.promotion.offline_decision);
otherwise the online A/B test (jobs.continuous) decides.
``baselines`` (kinds of gref.baselines, or ``all``) are trained on the same data by the same
Ray Train machinery (configs/baselines/<kind>.yaml + ``baseline_overrides``), registered as
gref-<kind>@champion and evaluated beside GReF. Writes ``out/summary.json``.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from gref.cli import log
from gref.config import flatten, override, save_yaml, to_dict
from gref.data.schema import DatasetConfig
from gref.sim.world import WorldConfig
from gref.tracking import TrackingConfig
from gref.train.config import DPOConfig, PretrainConfig, RewardConfig


@dataclass
class PipelineConfig:
    out: str = "runs/pipeline"  # output root: sim/, prep/, ray/, report/, summary.json
    requests: int = 40_000  # simulated requests (the embedded default data source)
    logs: str = ""  # raw logs to use instead of simulating ("" = simulate; no oracle with real logs)
    world: WorldConfig = field(default_factory=WorldConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)  # trained when post-training needs a learned reward
    dpo: DPOConfig = field(default_factory=DPOConfig)  # post-training (distillation of the reward's lists by default)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval_max_requests: int = 0  # test requests evaluated (0 = all)
    # baseline kinds to train + evaluate too ([all] = every one); NAR4Rec is the A/B test's B arm (paper Table 4)
    baselines: list[str] = field(default_factory=lambda: ["nar4rec"])
    baseline_overrides: dict = field(default_factory=dict)  # dotted keys for every baseline config, e.g. {optim.epochs: 2}


GREF_ROW = "GReF (pre-train + post-train)"  # the model this pipeline registers
ESTIMATORS = ("pbm", "dbn", "pbm_features")  # the click models an offline promotion must all convince
TEACHER_ROW = "list click model + beam search (GReF's teacher)"  # the reward model as a reranker of its own


def baselines_step(cfg: PipelineConfig, prep: Path, world_dir: Path | None, out: Path) -> dict[str, dict]:
    """Train each requested baseline like the GReF stages (same scaling, storage, tracking, world)."""
    from dataclasses import replace

    from gref.recipe import baseline_config, baseline_kinds, train_baseline

    outcomes = {}
    for kind in baseline_kinds(cfg.baselines):
        bcfg = replace(baseline_config(kind, prep), scaling=replace(cfg.pretrain.scaling), tracking=cfg.tracking,
                       eval=replace(cfg.pretrain.eval, world=str(world_dir or "")),
                       run=replace(cfg.pretrain.run, name="", storage=str(out / "ray")))
        bcfg = override(bcfg, cfg.baseline_overrides)
        log("pipeline", f"baseline {kind}")
        outcomes[kind] = train_baseline(bcfg)
    return outcomes


def _timed(timings: dict, step: str, fn, *args, **kwargs):
    log("pipeline", f"--- {step}")
    t0 = time.time()
    result = fn(*args, **kwargs)
    timings[step] = round(time.time() - t0, 1)
    log("pipeline", f"--- {step} done in {timings[step]}s")
    return result


def simulate_step(cfg: PipelineConfig, out: Path) -> tuple[Path, Path]:
    from gref.sim import World, generate_logs

    world = World.generate(cfg.world)
    world.save(out / "sim" / "world")
    for _ in generate_logs(world, cfg.requests, out / "sim" / "logs"):
        pass
    return out / "sim" / "logs", out / "sim" / "world"


def register_step(cfg: PipelineConfig, version: int, rows: dict, champion_row: str) -> dict:
    """challenger = the new version; champion = the new version when there is no champion yet or
    gref.serving.promotion.offline_decision says it is better than the current one on this test
    split (the oracle's gain on a simulated world; else every click model's paired interval)."""
    from gref import tracking
    from gref.serving.promotion import offline_decision

    name = cfg.tracking.registered_model
    aliases = {"challenger": version}
    decision = ({"promote": True, "why": "no champion yet"} if not champion_row
                else offline_decision(rows[GREF_ROW], ESTIMATORS))
    if decision["promote"]:
        aliases["champion"] = version
    tracking.set_aliases(name, aliases)
    return {"registered_model": name, "version": version, "aliases": aliases, "previous_champion": champion_row or None,
            "promoted": decision["promote"], "decision": decision}


def current_champion(name: str):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return MlflowClient().get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None


def run(cfg: PipelineConfig) -> dict:
    import mlflow

    from gref import tracking
    from gref.data import prepare
    from gref.recipe import post_train
    from gref.report import evaluate
    from gref.train.runner import run_training

    cfg = copy.deepcopy(cfg)  # the stages below fill in paths: the caller's config stays as given
    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "pipeline.yaml")
    timings: dict[str, float] = {}
    tracking.setup(cfg.tracking)
    mlflow.set_experiment(cfg.tracking.experiment)
    started = time.time()
    with mlflow.start_run(run_name=f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}") as parent:
        mlflow.log_params({k: str(v)[:500] for k, v in flatten(to_dict(cfg)).items()})
        if cfg.logs:
            logs, world_dir = Path(cfg.logs), None
        else:
            logs, world_dir = _timed(timings, "simulate", simulate_step, cfg, out)
        prep = out / "prep"
        data_summary = _timed(timings, "prepare", prepare.run, str(logs), str(prep), cfg.dataset)
        mlflow.log_artifact(str(prep / "summary.json"), artifact_path="data")

        for stage_cfg in (cfg.pretrain, cfg.reward, cfg.dpo):
            stage_cfg.data = str(prep)
            stage_cfg.tracking = cfg.tracking
            stage_cfg.eval.world = str(world_dir) if world_dir else ""
            stage_cfg.run.storage = str(out / "ray")
        pre = _timed(timings, "pretrain", run_training, "pretrain", cfg.pretrain)
        from gref.reranker_io import load_reranker

        pretrained = load_reranker(pre["model_dir"])
        models = {"GReF (pre-train only)": pretrained}
        cfg.reward.init = pre["model_dir"]  # the reward (when post-training needs one) anchors on it
        cfg.dpo.register = True
        dpo, reward = _timed(timings, "post-train", post_train, cfg.dpo, pretrained, cfg.reward)
        if reward:
            models[TEACHER_ROW] = load_reranker(reward["model_dir"])
        models[GREF_ROW] = load_reranker(dpo["model_dir"])
        baselines = {}
        if cfg.baselines:
            from gref.baselines import LABELS

            baselines = _timed(timings, "baselines", baselines_step, cfg, prep, world_dir, out)
            models.update({LABELS[k]: load_reranker(o["model_dir"]) for k, o in baselines.items()})

        champion, champion_row = current_champion(cfg.tracking.registered_model), ""
        if champion is not None and int(champion.version) != dpo["registered_version"]:
            champion_row = f"champion v{champion.version}"
            models[champion_row] = tracking.load_reranker_uri(f"models:/{cfg.tracking.registered_model}@champion")
        rows = _timed(timings, "evaluate", evaluate, prep, models, out / "report",
                      str(world_dir or ""), "test", cfg.eval_max_requests, compare_to=champion_row)
        registry = register_step(cfg, dpo["registered_version"], rows, champion_row)
        timings["total"] = round(time.time() - started, 1)
        summary = {"out": str(out), "mlflow_run_id": parent.info.run_id, "timings_s": timings,
                   "data": {k: data_summary[k] for k in ("requests_read", "sequences", "pairs",
                                                         "quarantined", "quarantined_by_reason")},
                   "pretrain": {k: pre[k] for k in ("run_name", "model_dir", "mlflow_run_id", "best")},
                   **({"reward": {k: reward[k] for k in ("run_name", "model_dir", "mlflow_run_id", "best", "candidates")
                                  if k in reward}} if reward else {}),
                   "dpo": {k: dpo[k] for k in ("run_name", "model_dir", "mlflow_run_id", "best")},
                   "baselines": {kind: {k: o[k] for k in ("run_name", "model_dir", "mlflow_run_id", "registered_version")}
                                 for kind, o in baselines.items()},
                   "test": rows, "registry": registry}
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        mlflow.log_artifact(str(out / "summary.json"))
        mlflow.log_metrics({f"time.{k}": v for k, v in timings.items()})
    return summary
