"""The paper's tables on simulated worlds, over several seeds (``python -m jobs.experiments``):
Table 1 (GReF vs the baselines, beside the ceilings no model can reach), Table 3 and the options
beyond the paper (training stages, the OMTP loss, post-training signals, reward models), and the
OMTP head count k.

Without a config file the config is ExperimentConfig's defaults: every stage's own defaults (the
job's, not configs/pipeline.yaml's recipe) and one unit at a time.

For every world (a named set of WorldConfig overrides) and seed: simulate ``requests`` with
world seed = seed, prepare them (Ray Data), train every model a requested table needs through
the same Ray Train runner as the jobs (pretrain -> reward -> post-train, and the baselines; one
MLflow run each, nested under this job's run), evaluate all of them on the test split beside the
reference rows (gref.report), then aggregate over seeds -> ``tables.md``,
``tables.json`` and a bar chart per world in ``out/report-<tables>/`` (one folder per table set,
so the ablation run beside the main one overwrites nothing), logged to MLflow. Cells are mean ± sample std over
seeds; "vs logged" is the per-seed lift over the logged order, mean ± the half-width of its 95 %
confidence interval (t distribution, seeds - 1 degrees of freedom).

Re-running with the same ``out`` skips every model already trained and every seed already
evaluated, so an interrupted run continues where it stopped and the ablation run reuses the main
run's models.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from gref.cli import log
from gref.config import ConfigError, flatten, override, save_yaml, to_dict
from gref.stats import t_half_width
from gref.data.schema import DatasetConfig
from gref.tracking import TrackingConfig
from gref.train.config import DPOConfig, PretrainConfig, RewardConfig

TABLES = ("baselines", "ablations", "heads")


@dataclass
class ExperimentConfig:
    out: str = "runs/experiments"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # world + log seeds; >= 3 for a spread
    worlds: dict = field(default_factory=lambda: {  # name -> WorldConfig overrides (dotted keys)
        "default": {}, "strong": {"series_boost": 3.0, "category_fatigue": 0.7}})
    tables: list[str] = field(default_factory=lambda: ["baselines"])  # baselines | ablations | heads
    ablation_worlds: list[str] = field(default_factory=lambda: ["default"])  # worlds of the ablation / heads tables
    requests: int = 40_000  # simulated requests per world and seed
    heads: list[int] = field(default_factory=lambda: [1, 2, 4, 8])  # k of the heads table
    ablation_rows: list[str] = field(default_factory=list)  # the ablation rows to train (RECIPES ids); [] = all
    baselines: list[str] = field(default_factory=lambda: ["all"])  # kinds of the baselines table
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)  # the GReF row; ablations change one knob
    reward: RewardConfig = field(default_factory=RewardConfig)  # the list-wise reward of post-training
    dpo: DPOConfig = field(default_factory=DPOConfig)  # post-training of the GReF row
    baseline_overrides: dict = field(default_factory=dict)  # dotted keys for every baseline config
    eval_max_requests: int = 0  # test requests evaluated per seed (0 = all)
    parallel: int = 1  # (world, seed) units trained at once (Ray tasks), the torch threads split between them
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


@dataclass(frozen=True)
class Recipe:
    """How one GReF row is trained: overrides of the experiment's pre-training and post-training
    configs (None = the stage is skipped), and whether its reward (always fitted on the default
    pre-trained GReF's data) anchors on that GReF or is a DCN over the features."""

    pretrain: dict | None = field(default_factory=dict)
    post: dict | None = field(default_factory=dict)
    anchored_reward: bool = True
    reward: dict = field(default_factory=dict)  # overrides of the experiment's reward config (its teacher)


# The paper's Rerank-DPO (Eq. 7 pairs, Eq. 8) at the learning rate the DPO stage measured best here
PAPER_POST = {"objective": "dpo", "pairs": "logged", "optim.lr": 2e-5, "optim.epochs": 1, "optim.schedule": "constant"}
RECIPES: dict[str, Recipe] = {
    "gref": Recipe(),  # the default recipe: pre-train, fit the reward and its candidates (the data choose), distil
    "pre": Recipe(post=None),
    "paper": Recipe(pretrain={"lambda2": 1.0, "model.list_bias": False}, post=PAPER_POST),
    "post_only": Recipe(pretrain=None),
    "no_list_bias": Recipe(pretrain={"model.list_bias": False}),
    "ln_lo": Recipe(pretrain={"lambda2": 1.0}),
    "lo_single": Recipe(pretrain={"model.omtp_heads": 1, "lambda2": 1.0, "lo_window": 4}),
    "onpolicy": Recipe(post={"objective": "dpo", "pairs": "onpolicy", "optim.lr": 3e-4, "optim.epochs": 2}),
    "oracle_teacher": Recipe(post={"reward": "oracle"}),
    # the reward's parts (issue 33), each fitted alone (no candidate to choose): the configured reward
    # without its value-pair candidate; no neural list context (the structured form alone), one context
    # network (no ensemble), the ensemble searched by its mean (no pessimism)
    "one_reward": Recipe(reward={"candidates": []}),
    "structured_reward": Recipe(reward={"model.context_members": 0, "candidates": []}),
    "context_single": Recipe(reward={"model.context_members": 1, "candidates": []}),
    "context_mean": Recipe(reward={"model.pessimism": 0.0, "candidates": []}),
    "context_pairs": Recipe(reward={"model.context_pairs": True, "candidates": []}),
    "context_pairs_prefix": Recipe(reward={"model.context_pairs": True, "model.context_prefix": True, "candidates": []}),
    # effects between attribute values (rank 8), whatever the data say: in the reward only; in the reward
    # and the student's list-context logits (so one OMTP pass can place what goes together); the
    # pre-trained student alone
    "value_pairs_reward": Recipe(post={"grow_value_pairs": False}, reward={"model.value_pairs": 8, "candidates": []}),
    "value_pairs": Recipe(pretrain={"model.value_pairs": 8}, reward={"model.value_pairs": 8, "candidates": []}),
    "pre_value_pairs": Recipe(pretrain={"model.value_pairs": 8}, post=None),
    # the default recipe since issue 33, under the name its tables were first run with
    # (benchmarks/results/families-chosen-*.yaml): the same models as "gref"
    "chosen_reward": Recipe(reward={"candidates": [{"model.value_pairs": 8}]}),
    # examination moved by the page's coverage of each attribute's values (issue 33): forced, and as a
    # third reward the held-out NLL may choose
    "coverage_reward": Recipe(reward={"model.page_coverage": True, "candidates": []}),
    "chosen_coverage": Recipe(reward={"candidates": [{"model.value_pairs": 8}, {"model.page_coverage": True}]}),
    "dcn_reward": Recipe(anchored_reward=False, reward={"candidates": []}),
    "dpo": Recipe(post=PAPER_POST),
    "ipo": Recipe(post={**PAPER_POST, "loss_type": "ipo"}),
    "cdpo": Recipe(post={**PAPER_POST, "label_smoothing": 0.1}),
    "rpo": Recipe(post={**PAPER_POST, "sft_weight": 1.0}),
    "dpo_lnorm": Recipe(post={**PAPER_POST, "length_norm": True}),
}
LABELS = {
    "gref": "GReF", "pre": "GReF (pre-train only)",
    "paper": "GReF, paper recipe (L_n + L_o; Rerank-DPO on Eq. 7 pairs)",
    "post_only": "GReF (post-train only: distillation from scratch)",
    "no_list_bias": "GReF without list-context logits", "ln_lo": "GReF with L_n + L_o (lambda2 = 1)",
    "lo_single": "GReF with L_o on one head (k = 1, Eq. 6 + Eq. 10)",
    "onpolicy": "GReF, on-policy DPO on the reward (instead of distillation)",
    "oracle_teacher": "GReF distilled from the oracle's best lists (diagnostic)",
    "one_reward": "GReF distilled from the configured reward alone (no value-pair candidate)",
    "structured_reward": "GReF distilled from the structured list click model alone (no list context)",
    "context_single": "GReF distilled from a reward with one list-context network (no ensemble)",
    "context_mean": "GReF distilled from the list-context ensemble's mean (no pessimism)",
    "context_pairs": "GReF distilled from a list context with pairwise terms (candidate x each item above)",
    "context_pairs_prefix": "GReF distilled from a list context with pairwise terms and the items above in context",
    "value_pairs_reward": "GReF distilled from a reward with effects between attribute values (rank 8)",
    "value_pairs": "GReF with effects between attribute values (rank 8) in its logits and its reward",
    "pre_value_pairs": "GReF (pre-train only) with effects between attribute values in its logits",
    "chosen_reward": "GReF distilled from the reward of lower held-out click NLL (default | + value pairs)",
    "coverage_reward": "GReF distilled from a reward whose examination follows the page's coverage",
    "chosen_coverage": "GReF distilled from the reward of lowest held-out click NLL (default | + value pairs | + coverage)",
    "dcn_reward": "GReF distilled from a reward without the GReF anchor (DCN appeal)",
    "dpo": "GReF, Rerank-DPO on Eq. 7 pairs (instead of distillation)",
    "ipo": "GReF, Rerank-DPO with the IPO loss", "cdpo": "GReF, conservative Rerank-DPO (label smoothing 0.1)",
    "rpo": "GReF, Rerank-DPO + the winner's NLL (RPO, weight 1)",
    "dpo_lnorm": "GReF, Rerank-DPO on length-normalised log-probs",
    "reward": "list click model + beam search (GReF's teacher)",
}
TEACHER = "reward"  # the default recipe's reward model, evaluated as a reranker of its own

TABLE_ROWS = {
    "baselines": ["gref", "pre", TEACHER],  # after the references and the baselines
    "post": ["gref", "pre", "post_only", "onpolicy", "dcn_reward", "oracle_teacher", "one_reward", "structured_reward",
             "context_single", "context_mean", "context_pairs", "context_pairs_prefix", "value_pairs_reward",
             "value_pairs", "pre_value_pairs", "chosen_reward", "coverage_reward", "chosen_coverage", "dpo", "ipo", "cdpo",
             "rpo", "dpo_lnorm"],
    "pretraining": ["gref", "no_list_bias", "ln_lo", "lo_single", "paper"],
}
REFERENCES = ("logged exposure", "upstream order", "oracle best list", "oracle pointwise sort",
              "features-only best list", "features-only pointwise sort")


def report_tag(cfg: ExperimentConfig) -> str:
    """The folder name of a table set's reports: per seed and aggregated."""
    return "report-" + "+".join(sorted(cfg.tables) + sorted(cfg.ablation_rows))


def ablation_rows(cfg: ExperimentConfig, table: str) -> list[str]:
    """The rows of ablation table ``table`` ("post" | "pretraining") that ``cfg.ablation_rows``
    keeps; the GReF row, every table's reference, always stays."""
    return [i for i in TABLE_ROWS[table] if not cfg.ablation_rows or i == "gref" or i in cfg.ablation_rows]


def recipes(cfg: ExperimentConfig, world: str) -> dict[str, tuple[str, Any]]:
    """Models this world needs: id -> ("gref", Recipe) or ("baseline", kind)."""
    from gref.recipe import baseline_kinds

    need: dict[str, tuple[str, Any]] = {}
    if "baselines" in cfg.tables:
        need.update({i: ("gref", RECIPES[i]) for i in TABLE_ROWS["baselines"] if i != TEACHER})
        need.update({k: ("baseline", k) for k in baseline_kinds(cfg.baselines)})
    if world in cfg.ablation_worlds:
        if "ablations" in cfg.tables:
            need.update({i: ("gref", RECIPES[i]) for i in ablation_rows(cfg, "post") + ablation_rows(cfg, "pretraining")})
        if "heads" in cfg.tables:
            k0 = cfg.pretrain.model.omtp_heads  # the GReF row itself is the k = k0 entry
            need.update({f"k{k}": ("gref", Recipe(pretrain={"model.omtp_heads": k})) for k in cfg.heads if k != k0})
            if k0 in cfg.heads:
                need["gref"] = ("gref", RECIPES["gref"])
    return need


def _trained(storage: Path, name: str) -> str | None:
    model = storage / name / "model"
    return str(model) if (model / "model.json").exists() else None


def _cached_student(storage: Path, name: str, teacher: str) -> str | None:
    """Post-training run ``name``'s model when it exists; a ConfigError when it was distilled from
    another reward than ``teacher`` ("" = none): a recipe changed since it ran (the default reward's
    candidates, say), and the cache, keyed by run name, would report the old recipe's model."""
    found = _trained(storage, name)
    if found and teacher:
        taught = json.loads((storage / name / "outcome.json").read_text())["params"].get("reward", "")
        if taught != teacher:
            raise ConfigError(f"{storage / name} was distilled from {taught}, this recipe's teacher is {teacher} "
                              "(the recipe changed since that run): give `out` a new directory or remove that run")
    return found


def train_models(cfg: ExperimentConfig, world: str, prep: Path, world_dir: Path, root: Path) -> dict[str, str]:
    """Train (or find) every model of ``recipes``; -> id -> model dir (and TEACHER: the default
    recipe's reward model)."""
    from gref.reranker_io import load_reranker
    from gref.recipe import (baseline_config, choose_reward, reward_variants, train_baseline, train_reward,
                             variant_name)
    from gref.train.runner import run_training

    storage = root / "ray"
    seed = int(root.name.removeprefix("seed"))  # training seed = the world's seed

    def stage_cfg(base, name: str):
        """A job config on this seed's data, world, storage and tracking, as Train run ``name``."""
        return replace(base, data=str(prep), tracking=cfg.tracking, eval=replace(base.eval, world=str(world_dir)),
                       run=replace(base.run, name=name, storage=str(storage), seed=seed))

    def pretrained(overrides: dict) -> str:
        name = variant_name("pre", overrides)
        return _trained(storage, name) or run_training("pretrain", stage_cfg(override(cfg.pretrain, overrides), name))["model_dir"]

    teachers: dict[str, str] = {}  # reward() per resolved reward config: the choice's held-out NLL once per unit

    def reward(anchored: bool, overrides: dict) -> str:
        """The teacher: anchored on the default pre-trained GReF, or a DCN appeal (an ablation);
        ``overrides`` of the reward config (the reward's own ablations). With ``candidates`` each
        variant is its own cached run (shared with the rows that fit it alone) and
        gref.recipe.choose_reward picks the teacher, as train_reward does."""
        key = json.dumps([anchored, to_dict(override(cfg.reward, overrides))], sort_keys=True, default=str)
        if key not in teachers:
            teachers[key] = _teacher(anchored, overrides)
        return teachers[key]

    def _teacher(anchored: bool, overrides: dict) -> str:
        prefix = "reward-pre" if anchored else "reward-dcn"
        plain = {k: v for k, v in overrides.items() if k != "candidates"}
        outcomes, base = [], override(cfg.reward, overrides)
        for extra, rcfg in reward_variants(base):
            name = variant_name(prefix, {**plain, **extra})
            if not _trained(storage, name):
                train_reward(stage_cfg(replace(rcfg, init=pretrained({}) if anchored else ""), name))
            outcomes.append(json.loads((storage / name / "outcome.json").read_text())["outcome"])
        return outcomes[choose_reward(outcomes, stage_cfg(base, prefix))[0] if len(outcomes) > 1 else 0]["model_dir"]

    dirs: dict[str, str] = {}
    trained_as: dict[str, str] = {}  # (pre-trained dir, post-training config) as JSON -> the model trained on them
    for model_id, (family, spec) in recipes(cfg, world).items():
        if family == "baseline":
            if not (found := _trained(storage, model_id)):
                bcfg = override(replace(baseline_config(spec, prep), scaling=replace(cfg.pretrain.scaling)),
                                cfg.baseline_overrides)
                found = train_baseline(stage_cfg(bcfg, model_id))["model_dir"]
            dirs[model_id] = found
            continue
        recipe: Recipe = spec
        pre_dir = None if recipe.pretrain is None else pretrained(recipe.pretrain)
        if recipe.post is None:
            dirs[model_id] = pre_dir
            continue
        post = override(replace(cfg.dpo, register=False, model=cfg.pretrain.model), recipe.post)
        if post.needs_reward and not post.reward:
            # one teacher for every row: the reward anchored on the default pre-trained GReF, so a
            # pre-training ablation changes the student alone
            post = replace(post, reward=reward(recipe.anchored_reward, recipe.reward))
        # a row whose every input is an earlier row's (chosen_reward when it chose the default
        # reward) is that row's model, not a second training of it
        inputs = json.dumps([pre_dir, to_dict(post)], sort_keys=True, default=str)
        name = f"post-{model_id}"
        found = _cached_student(storage, name, post.reward) or trained_as.get(inputs) or run_training(
            "dpo", stage_cfg(post, name), init=load_reranker(pre_dir) if pre_dir else None)["model_dir"]
        trained_as.setdefault(inputs, found)
        dirs[model_id] = found
    if "gref" in dirs:
        dirs[TEACHER] = reward(True, {})
    return dirs


def run_seed(cfg: ExperimentConfig, world: str, seed: int) -> dict[str, dict[str, float]]:
    """One world and seed: simulate, prepare, train, evaluate -> the test report (cached)."""
    from gref.reranker_io import load_reranker
    from gref.sim import World, generate_logs
    from gref.data import prepare
    from gref.report import evaluate
    from gref.sim.world import WorldConfig

    root = Path(cfg.out).resolve() / world / f"seed{seed}"
    # the models are shared, the reports per table set (and row subset)
    report_dir = root / report_tag(cfg)
    if (report_dir / "report.json").exists():
        return json.loads((report_dir / "report.json").read_text())
    world_dir, prep = root / "sim" / "world", root / "prep"
    if not (prep / "summary.json").exists():
        w = World.generate(override(WorldConfig(seed=seed), cfg.worlds[world]))
        w.save(world_dir)
        for _ in generate_logs(w, cfg.requests, root / "sim" / "logs", progress=False):
            pass
        prepare.run(str(root / "sim" / "logs"), str(prep), cfg.dataset)
    dirs = train_models(cfg, world, prep, world_dir, root)
    models = {_label(i): load_reranker(d) for i, d in dirs.items()}
    return evaluate(prep, models, report_dir, str(world_dir), "test", cfg.eval_max_requests)


def _unit(cfg: ExperimentConfig, world: str, seed: int, parent_run_id: str | None) -> dict[str, dict[str, float]]:
    """One (world, seed) unit in a Ray task: its runs nest under the experiments run."""
    import mlflow

    from gref import tracking

    tracking.setup(cfg.tracking)
    mlflow.set_experiment(cfg.tracking.experiment)
    mlflow.start_run(run_id=parent_run_id)  # this process's runs nest under it
    try:
        return run_seed(cfg, world, seed)
    finally:
        mlflow.end_run("RUNNING")  # leave this process; the driver ends the run


def run_units(cfg: ExperimentConfig, units: list[tuple[str, int]], parent_run_id: str,
              started: float) -> dict[tuple[str, int], dict]:
    """Every (world, seed) unit; ``cfg.parallel`` of them at once as Ray tasks, the torch threads
    of the in-process training split between them."""
    if cfg.parallel <= 1:
        out = {}
        for world, seed in units:
            log("experiments", f"--- world {world}, seed {seed} ({time.time() - started:.0f}s so far)")
            out[(world, seed)] = run_seed(cfg, world, seed)
        return out
    import ray

    from gref.ray_utils import init_ray

    init_ray()
    threads = max(1, cfg.pretrain.scaling.threads_per_worker // cfg.parallel)
    # (baselines train with the pre-training's scaling)
    unit_cfg = override(cfg, {f"{stage}.scaling.threads_per_worker": threads for stage in ("pretrain", "reward", "dpo")})
    # fractional CPUs: the Ray Data and Train work inside each unit must still find a CPU to run on
    task = ray.remote(num_cpus=0.5 / cfg.parallel)(_unit)
    pending, out = {}, {}
    queue = list(units)
    while queue or pending:
        while queue and len(pending) < cfg.parallel:
            world, seed = queue.pop(0)
            log("experiments", f"--- world {world}, seed {seed} starts ({time.time() - started:.0f}s so far)")
            pending[task.remote(unit_cfg, world, seed, parent_run_id)] = (world, seed)
        done, _ = ray.wait(list(pending), num_returns=1)
        unit = pending.pop(done[0])
        out[unit] = ray.get(done[0])
        log("experiments", f"--- world {unit[0]}, seed {unit[1]} done ({time.time() - started:.0f}s so far)")
    return out


def _label(model_id: str) -> str:
    """Report row name of a model id."""
    from gref.baselines import LABELS as BASELINE_LABELS

    if model_id in BASELINE_LABELS:
        return BASELINE_LABELS[model_id]
    if model_id.startswith("k") and model_id[1:].isdigit():
        return f"GReF (k = {model_id[1:]})"
    return LABELS[model_id]


def aggregate(reports: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per row and metric over seeds: {"mean", "std" (sample, ddof=1), "ci95" (half-width of the
    mean's 95 % t interval), "n"}; NaN (undefined) and missing values are left out."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for row in dict.fromkeys(r for report in reports for r in report):
        metrics = dict.fromkeys(m for report in reports for m in report.get(row, {}))
        out[row] = {}
        for metric in metrics:
            values = np.array([v for report in reports
                               if (v := report.get(row, {}).get(metric)) is not None and v == v], dtype=float)
            if len(values):
                std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
                out[row][metric] = {"mean": float(values.mean()), "std": std, "n": len(values),
                                    "ci95": t_half_width(values)}
    return out


def paired_lift(reports: list[dict], row: str, other: str) -> dict[str, float] | None:
    """Per-seed relative lift of ``row`` over ``other`` in expected clicks: mean, 95 % CI
    half-width, and on how many seeds it is positive."""
    lifts = np.array([r[row]["oracle_clicks"] / r[other]["oracle_clicks"] - 1.0 for r in reports
                      if row in r and other in r])
    if not len(lifts):
        return None
    return {"mean": float(lifts.mean()), "ci95": t_half_width(lifts), "positive": int((lifts > 0).sum()), "n": len(lifts)}


COLUMNS = [("oracle_clicks", "E[clicks]", "{:.4f}"), ("click_lift", "vs logged (95% CI)", "{:+.2%}"),
           ("headroom_share", "headroom share", "{:.0%}"), ("oracle_likes", "E[likes]", "{:.4f}"),
           ("ndcg", "NDCG", "{:.4f}"), ("auc_click", "AUC click", "{:.4f}"), ("auc_exposure", "AUC exposure", "{:.4f}"),
           ("diversity", "diversity", "{:.3f}"), ("latency_ms_b1", "ms/request", "{:.2f}")]


def table_md(agg: dict, rows: list[tuple[str, str]], columns=COLUMNS) -> str:
    """Markdown: one line per (label, report row); cells mean ± std over seeds, the lift column
    mean ± its 95 % CI half-width."""
    lines = ["| model | " + " | ".join(c[1] for c in columns) + " |", "|---|" + "---:|" * len(columns)]
    for label, key in rows:
        if key not in agg:
            continue
        cells = []
        for metric, _, fmt in columns:
            v = agg[key].get(metric)
            if v is None:
                cells.append("–")
            else:  # one seed has no spread to show
                spread = v["ci95"] if metric == "click_lift" else v["std"]
                cells.append(fmt.format(v["mean"]) + (f" ± {fmt.format(spread).lstrip('+')}" if v["n"] > 1 else ""))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdicts(reports: list[dict], baseline_labels: list[str]) -> list[str]:
    """The comparisons the issue's targets are stated in, per seed and paired."""
    gref = _label("gref")
    if not reports or gref not in reports[0]:
        return []
    lines = []
    rivals = ["logged exposure", *[b for b in baseline_labels if b in reports[0]]]
    top = sum(all(r[gref]["oracle_clicks"] > r[x]["oracle_clicks"] for x in rivals) for r in reports)
    lines.append(f"GReF is the top row (above the logged order and every baseline) on {top} of {len(reports)} seeds.")
    if baseline_labels:
        best = max((b for b in baseline_labels if b in reports[0]),
                   key=lambda b: np.mean([r[b]["oracle_clicks"] for r in reports]))
        d = paired_lift(reports, gref, best)
        gap = np.mean([r[gref]["click_lift"] - r[best]["click_lift"] for r in reports])
        lines.append(f"GReF vs the best baseline ({best}): {d['mean']:+.2%} ± {d['ci95']:.2%} relative, "
                     f"{gap * 100:+.2f} points of lift over the logged order; positive on {d['positive']}/{d['n']} seeds.")
    pre = _label("pre")
    if pre in reports[0]:  # issue 33's targets: what post-training adds over the pre-trained model
        d = np.array([(r[gref]["click_lift"] - r[pre]["click_lift"]) * 100 for r in reports])
        ci = t_half_width(d)
        ref = "features-only best list"
        gap = [(r[gref]["oracle_clicks"] - r[pre]["oracle_clicks"]) / (r[ref]["oracle_clicks"] - r[pre]["oracle_clicks"])
               for r in reports if ref in r and r[ref]["oracle_clicks"] > r[pre]["oracle_clicks"]]
        lines.append(f"Post-training adds {d.mean():+.2f} ± {ci:.2f} points of lift over the pre-trained GReF "
                     f"(per seed: {', '.join(f'{x:+.2f}' for x in d)}; below it on {int((d < 0).sum())} of {len(d)} seeds)"
                     + (f"; it captures {np.mean(gap):.0%} of the gap from the pre-trained GReF to the features-only "
                        f"best list (per seed: {', '.join(f'{g:.0%}' for g in gap)})." if gap else "."))
    shares = [r[gref].get("headroom_share") for r in reports if r[gref].get("headroom_share") is not None]
    if shares:
        lines.append(f"GReF captures {np.mean(shares):.0%} of the features-only list-aware headroom "
                     f"(per seed: {', '.join(f'{s:.0%}' for s in shares)}).")
    div = {row: np.mean([r[row]["diversity"] for r in reports]) for row in reports[0]
           if "diversity" in reports[0][row] and row not in REFERENCES[2:]}
    if gref in div:
        lines.append(f"Diversity: GReF {div[gref]:.3f}; least diverse row: {min(div, key=div.get)} ({min(div.values()):.3f}).")
    return lines


def write_tables(cfg: ExperimentConfig, aggs: dict[str, dict], per_seed: dict[str, list], out: Path) -> str:
    from gref.recipe import baseline_kinds

    seeds = len(cfg.seeds)
    parts = [f"# GReF on simulated worlds: mean ± std over {seeds} seeds ({', '.join(map(str, cfg.seeds))})\n",
             (f"{cfg.requests:,} simulated requests per world and seed; test split = the last "
              f"{cfg.dataset.test_days} days. E[·] = expected feedback of the generated list under the world's "
              "hidden user model; vs logged = per-seed lift over the logged order, mean ± 95 % CI; headroom share = "
              "(row - logged) / (features-only best list - logged); NDCG / AUC on logged clicks (docs/evaluation.md: "
              "evaluation protocol); ms/request = `rerank` one request at a time on this machine's CPU. The "
              "oracle and features-only rows are references, not bounds (gref.sim.reference).\n")]
    kinds = baseline_kinds(cfg.baselines)
    for world, agg in aggs.items():
        overrides = ", ".join(f"{k}={v}" for k, v in cfg.worlds[world].items()) or "WorldConfig defaults"
        parts.append(f"## World `{world}` ({overrides})\n")
        if "baselines" in cfg.tables:
            rows = [(r, r) for r in REFERENCES]
            rows += [(_label(k), _label(k)) for k in kinds]
            rows += [(_label(i), _label(i)) for i in TABLE_ROWS["baselines"]]
            parts.append(f"### Table 1 analogue: GReF vs the baselines\n\n{table_md(agg, rows)}\n")
            parts.append("\n".join(f"- {line}" for line in verdicts(per_seed[world], [_label(k) for k in kinds])) + "\n")
        if world in cfg.ablation_worlds and "ablations" in cfg.tables:
            refs = [("logged exposure", "logged exposure"), ("features-only best list", "features-only best list")]
            for title, key in (("post-training signal (every row pre-trained as GReF)", "post"),
                               ("pre-training (every row post-trained as GReF)", "pretraining")):
                rows = refs + [(_label(i), _label(i)) for i in ablation_rows(cfg, key)]
                parts.append(f"### Ablations: {title}\n\n{table_md(agg, rows)}\n")
        if world in cfg.ablation_worlds and "heads" in cfg.tables:
            k0 = cfg.pretrain.model.omtp_heads
            rows = [(f"k = {k}", _label("gref" if k == k0 else f"k{k}")) for k in cfg.heads]
            cols = [c for c in COLUMNS if c[0] in ("oracle_clicks", "click_lift", "ndcg", "auc_exposure")]
            cols += [("latency_ms", "ms/req (batch)", "{:.3f}"), ("latency_ms_b1", "ms/request", "{:.2f}")]
            parts.append(f"### OMTP heads k (the default recipe): quality and latency\n\n{table_md(agg, rows, cols)}\n")
            paired = [(label, paired_lift(per_seed[world], key, _label("gref"))) for label, key in rows
                      if key != _label("gref")]
            parts.append("\n".join(f"- {label} vs k = {k0}, paired over seeds: E[clicks] {p['mean']:+.2%} ± "
                                   f"{p['ci95']:.2%} (higher on {p['positive']} of {p['n']} seeds)"
                                   for label, p in paired if p) + "\n")
    text = "\n".join(parts)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tables.md").write_text(text)
    (out / "tables.json").write_text(json.dumps(aggs, indent=2))
    return text


def chart(aggs: dict[str, dict], path: Path) -> Path:
    """Expected clicks per row (mean ± std over seeds), one panel per world; ceilings hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gref.evaluation import CEILINGS, bar_color

    fig, axes = plt.subplots(len(aggs), 1, figsize=(13, 4.6 * len(aggs)), squeeze=False)
    for ax, (world, agg) in zip(axes[:, 0], aggs.items()):
        names = [n for n in agg if "oracle_clicks" in agg[n]]
        means = [agg[n]["oracle_clicks"]["mean"] for n in names]
        stds = [agg[n]["oracle_clicks"]["std"] for n in names]
        ax.bar(names, means, yerr=stds, capsize=3, color=[bar_color(n) for n in names],
               hatch=["//" if n in CEILINGS else "" for n in names])
        ax.set_ylim(min(means) * 0.93, max(means) * 1.03)
        ax.set_title(f"world '{world}': E[clicks] / request (mean ± std over seeds; hatched: ceilings)")
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(cfg: ExperimentConfig) -> dict[str, Any]:
    """Every (world, seed) unit, then the tables over seeds: {out, mlflow_run_id, tables, text}."""
    import mlflow

    from gref import tracking

    unknown = sorted(set(cfg.tables) - set(TABLES))
    if unknown:
        raise ConfigError(f"tables: unknown {unknown} (known: {', '.join(TABLES)})")
    missing = sorted(set(cfg.ablation_worlds) - set(cfg.worlds))
    if missing and {"ablations", "heads"} & set(cfg.tables):
        raise ConfigError(f"ablation_worlds {missing} are not in worlds ({', '.join(cfg.worlds)})")
    unknown = sorted(set(cfg.ablation_rows) - set(RECIPES))
    if unknown:
        raise ConfigError(f"ablation_rows: unknown {unknown} (known: {', '.join(RECIPES)})")
    for world in cfg.worlds:
        recipes(cfg, world)  # unknown baseline kinds / world keys fail before any work
    out = Path(cfg.out).resolve() / report_tag(cfg)
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "experiments.yaml")
    tracking.setup(cfg.tracking)
    mlflow.set_experiment(cfg.tracking.experiment)
    started = time.time()
    aggs, per_seed = {}, {}
    with mlflow.start_run(run_name=f"experiments-{time.strftime('%Y%m%d-%H%M%S')}") as parent:
        mlflow.log_params({k: str(v)[:500] for k, v in flatten(to_dict(cfg)).items()})
        units = [(world, seed) for world in cfg.worlds for seed in cfg.seeds]
        reports = run_units(cfg, units, parent.info.run_id, started)
        for world in cfg.worlds:
            per_seed[world] = [reports[(world, seed)] for seed in cfg.seeds]
            aggs[world] = aggregate(per_seed[world])
        text = write_tables(cfg, aggs, per_seed, out)
        chart(aggs, out / "expected_clicks.png")
        for f in ("tables.md", "tables.json", "expected_clicks.png", "experiments.yaml"):
            mlflow.log_artifact(str(out / f))
        mlflow.log_metric("time_s", time.time() - started)
    log("experiments", f"done in {time.time() - started:.0f}s; tables in {out / 'tables.md'}")
    return {"out": str(out), "mlflow_run_id": parent.info.run_id, "tables": aggs, "text": text}
