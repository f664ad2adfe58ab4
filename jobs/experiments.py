"""The paper's tables on simulated worlds, over several seeds: Table 1 (GReF vs the baselines),
Table 3 (training stages; L_n / L_o) and the OMTP head count k (quality and latency).

    python -m jobs.experiments [--config configs/experiments.yaml] [key=value ...]
    python -m jobs.experiments tables=[ablations] worlds='{default: {}}'   # the ablations only

For every world (a named set of WorldConfig overrides) and seed: simulate ``requests`` with
world seed = seed, prepare them (Ray Data), train every model a requested table needs through
the same Ray Train runner as jobs.pretrain / jobs.dpo / jobs.baseline (one MLflow run each,
nested under this job's run), evaluate all of them on the test split (jobs.evaluate's report),
then aggregate over seeds: mean +- std per row and metric -> ``out/tables.md``,
``out/tables.json`` and a bar chart of expected clicks per world, logged to MLflow.

Re-running with the same ``out`` skips every model already trained and every seed already
evaluated, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from gref.cli import log, parser, resolve_config
from gref.config import flatten, override, save_yaml, to_dict
from gref.data.schema import DatasetConfig
from gref.tracking import TrackingConfig
from gref.train.config import DPOConfig, PretrainConfig

TABLES = ("baselines", "ablations", "heads")


@dataclass
class ExperimentConfig:
    out: str = "runs/experiments"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # world + log seeds; >= 3 for a spread
    worlds: dict = field(default_factory=lambda: {  # name -> WorldConfig overrides (dotted keys)
        "default": {}, "strong": {"series_boost": 3.0, "category_fatigue": 0.7}})
    tables: list[str] = field(default_factory=lambda: list(TABLES))  # baselines | ablations | heads
    ablation_worlds: list[str] = field(default_factory=lambda: ["default"])  # worlds of the ablation / heads tables
    requests: int = 15_000  # simulated requests per world and seed
    heads: list[int] = field(default_factory=lambda: [1, 2, 4, 8])  # k of the heads table
    baselines: list[str] = field(default_factory=lambda: ["all"])  # kinds of the baselines table
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)  # the GReF row; ablations change one knob
    dpo: DPOConfig = field(default_factory=DPOConfig)
    baseline_overrides: dict = field(default_factory=dict)  # dotted keys for every baseline config
    eval_max_requests: int = 0  # test requests evaluated per seed (0 = all)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# GReF training recipes: row id -> (pre-training overrides or None = no pre-training, with DPO?)
GREF_RECIPES: dict[str, tuple[dict | None, bool]] = {
    "pre": ({}, False), "gref": ({}, True), "dpo_only": (None, True),
    "ln_only": ({"lambda2": 0.0}, True), "lo_only": ({"lambda1": 0.0}, True),
}

# table rows: (row label, model id) in display order; model ids resolve via ``recipes``
TABLE_ROWS = {
    "baselines": [("GReF (pre-train + DPO)", "gref"), ("GReF (pre-train only)", "pre")],  # after the baselines
    "ablations": [("pre-train only", "pre"), ("DPO only", "dpo_only"), ("pre-train + DPO", "gref"),
                  ("L_n only (+ DPO)", "ln_only"), ("L_o only (+ DPO)", "lo_only"), ("L_n + L_o (+ DPO)", "gref")],
}
REFERENCES = ("logged exposure", "upstream order")


def recipes(cfg: ExperimentConfig, world: str) -> dict[str, tuple[str, Any]]:
    """Models this world needs: id -> ("gref", (pretrain overrides | None, dpo)) or ("baseline", kind)."""
    from jobs.pipeline import baseline_kinds

    need: dict[str, tuple[str, Any]] = {}
    if "baselines" in cfg.tables:
        need.update({i: ("gref", GREF_RECIPES[i]) for _, i in TABLE_ROWS["baselines"]})
        need.update({k: ("baseline", k) for k in baseline_kinds(cfg.baselines)})
    if world in cfg.ablation_worlds:
        if "ablations" in cfg.tables:
            need.update({i: ("gref", GREF_RECIPES[i]) for _, i in TABLE_ROWS["ablations"]})
        if "heads" in cfg.tables:
            k4 = cfg.pretrain.model.omtp_heads  # the GReF row itself is the k = k4 entry
            need.update({f"k{k}": ("gref", ({"model.omtp_heads": k}, True)) for k in cfg.heads if k != k4})
            if k4 in cfg.heads:
                need["gref"] = ("gref", GREF_RECIPES["gref"])
    return need


def _trained(storage: Path, name: str) -> str | None:
    model = storage / name / "model"
    return str(model) if (model / "model.json").exists() else None


def train_models(cfg: ExperimentConfig, world: str, prep: Path, world_dir: Path, root: Path) -> dict[str, str]:
    """Train (or find) every model of ``recipes``; -> id -> model dir."""
    from gref.model.io import load_reranker
    from gref.train.runner import run_training
    from jobs.baseline import baseline_config, train

    storage = root / "ray"
    seed = int(root.name.removeprefix("seed"))  # training seed = the world's seed

    def stage_cfg(base, name: str):
        """A job config on this seed's data, world, storage and tracking, as Train run ``name``."""
        return replace(base, data=str(prep), tracking=cfg.tracking, eval=replace(base.eval, world=str(world_dir)),
                       run=replace(base.run, name=name, storage=str(storage), seed=seed))

    dirs: dict[str, str] = {}
    for model_id, (family, spec) in recipes(cfg, world).items():
        if family == "baseline":
            name = model_id
            if not (found := _trained(storage, name)):
                bcfg = override(replace(baseline_config(spec, prep), scaling=replace(cfg.pretrain.scaling)),
                                cfg.baseline_overrides)
                found = train(stage_cfg(bcfg, name))["model_dir"]
            dirs[model_id] = found
            continue
        pre_overrides, with_dpo = spec
        init = None
        if pre_overrides is not None:
            pre_name = "pre" if not pre_overrides else f"pre-{model_id}"
            if not (pre_dir := _trained(storage, pre_name)):
                pre_dir = run_training("pretrain", stage_cfg(override(cfg.pretrain, pre_overrides), pre_name),
                                       prep / "sequences" / "train")["model_dir"]
            init = load_reranker(pre_dir)
            if not with_dpo:
                dirs[model_id] = pre_dir
                continue
        name = f"dpo-{model_id}"
        if not (found := _trained(storage, name)):
            # DPO only starts from a random model of the GReF row's architecture
            dcfg = stage_cfg(replace(cfg.dpo, register=False, model=cfg.pretrain.model), name)
            found = run_training("dpo", dcfg, prep / "pairs" / "train", init=init)["model_dir"]
        dirs[model_id] = found
    return dirs


def run_seed(cfg: ExperimentConfig, world: str, seed: int) -> dict[str, dict[str, float]]:
    """One world and seed: simulate, prepare, train, evaluate -> the test report (cached)."""
    from gref.model.io import load_reranker
    from gref.sim import World, generate_logs
    from gref.sim.world import WorldConfig
    from jobs import evaluate, prepare

    root = Path(cfg.out).resolve() / world / f"seed{seed}"
    report = root / "report" / "report.json"
    if report.exists():
        return json.loads(report.read_text())
    world_dir, prep = root / "sim" / "world", root / "prep"
    if not (prep / "summary.json").exists():
        w = World.generate(override(WorldConfig(seed=seed), cfg.worlds[world]))
        w.save(world_dir)
        for _ in generate_logs(w, cfg.requests, root / "sim" / "logs", progress=False):
            pass
        prepare.run(str(root / "sim" / "logs"), str(prep), cfg.dataset)
    dirs = train_models(cfg, world, prep, world_dir, root)
    models = {_label(i): load_reranker(d) for i, d in dirs.items()}
    return evaluate.run(prep, models, root / "report", str(world_dir), "test", cfg.eval_max_requests)


GREF_LABELS = {"pre": "GReF (pre-train only)", "gref": "GReF (pre-train + DPO)", "dpo_only": "GReF (DPO only)",
               "ln_only": "GReF (L_n only + DPO)", "lo_only": "GReF (L_o only + DPO)"}


def _label(model_id: str) -> str:
    """Report row name of a model id."""
    from gref.baselines import LABELS

    if model_id in LABELS:
        return LABELS[model_id]
    if model_id.startswith("k") and model_id[1:].isdigit():
        return f"GReF (k={model_id[1:]}, + DPO)"
    return GREF_LABELS[model_id]


def aggregate(reports: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per row and metric over seeds: {"mean", "std" (sample, ddof=1), "n"}; NaN (undefined) and
    missing values are left out."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for row in dict.fromkeys(r for report in reports for r in report):
        metrics = dict.fromkeys(m for report in reports for m in report.get(row, {}))
        out[row] = {}
        for metric in metrics:
            values = np.array([v for report in reports
                               if (v := report.get(row, {}).get(metric)) is not None and v == v], dtype=float)
            if len(values):
                out[row][metric] = {"mean": float(values.mean()),
                                    "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0, "n": len(values)}
    return out


COLUMNS = [("oracle_clicks", "E[clicks]", "{:.4f}"), ("click_lift", "vs logged", "{:+.2%}"),
           ("oracle_likes", "E[likes]", "{:.4f}"), ("oracle_long_views", "E[long views]", "{:.4f}"),
           ("ndcg", "NDCG", "{:.4f}"), ("auc_click", "AUC click", "{:.4f}"), ("auc_exposure", "AUC exposure", "{:.4f}"),
           ("diversity", "diversity", "{:.3f}"), ("latency_ms_b1", "ms/request", "{:.2f}")]


def table_md(agg: dict, rows: list[tuple[str, str]], columns=COLUMNS) -> str:
    """Markdown: one line per (label, report row), cells "mean ± std" over seeds."""
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
                spread = f" ± {fmt.format(v['std']).lstrip('+')}" if v["n"] > 1 else ""
                cells.append(fmt.format(v["mean"]) + spread)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_tables(cfg: ExperimentConfig, aggs: dict[str, dict], out: Path) -> str:
    from gref.baselines import LABELS
    from jobs.pipeline import baseline_kinds

    seeds = len(cfg.seeds)
    parts = [f"# GReF on simulated worlds: mean ± std over {seeds} seeds ({', '.join(map(str, cfg.seeds))})\n",
             (f"{cfg.requests:,} simulated requests per world and seed; test split = the last "
             f"{cfg.dataset.test_days} days. E[·] = expected feedback of the generated list under the world's "
             "hidden user model; NDCG / AUC on logged clicks (README: evaluation protocol); ms/request = "
             "`rerank` one request at a time on this machine's CPU.\n")]
    for world, agg in aggs.items():
        overrides = ", ".join(f"{k}={v}" for k, v in cfg.worlds[world].items()) or "WorldConfig defaults"
        parts.append(f"## World `{world}` ({overrides})\n")
        if "baselines" in cfg.tables:
            rows = [(r, r) for r in REFERENCES]
            rows += [(LABELS[k], LABELS[k]) for k in baseline_kinds(cfg.baselines)]
            rows += [(label, _label(i)) for label, i in TABLE_ROWS["baselines"]]
            parts.append(f"### Table 1 analogue: GReF vs the baselines\n\n{table_md(agg, rows)}\n")
        if world in cfg.ablation_worlds and "ablations" in cfg.tables:
            stages, omtp = TABLE_ROWS["ablations"][:3], TABLE_ROWS["ablations"][3:]
            parts.append("### Table 3 analogue: training stages\n\n"
                         f"{table_md(agg, [(label, _label(i)) for label, i in stages])}\n")
            parts.append("### Table 3 analogue: OMTP loss (k = "
                         f"{cfg.pretrain.model.omtp_heads}, every row post-trained)\n\n"
                         f"{table_md(agg, [(label, _label(i)) for label, i in omtp])}\n")
        if world in cfg.ablation_worlds and "heads" in cfg.tables:
            k4 = cfg.pretrain.model.omtp_heads
            rows = [(f"k = {k}", _label("gref" if k == k4 else f"k{k}")) for k in cfg.heads]
            cols = [c for c in COLUMNS if c[0] in ("oracle_clicks", "click_lift", "ndcg", "auc_exposure")]
            cols += [("latency_ms", "ms/req (batch)", "{:.3f}"), ("latency_ms_b1", "ms/request", "{:.2f}")]
            parts.append(f"### OMTP heads k (pre-train + DPO): quality and latency\n\n{table_md(agg, rows, cols)}\n")
    text = "\n".join(parts)
    (out / "tables.md").write_text(text)
    (out / "tables.json").write_text(json.dumps(aggs, indent=2))
    return text


def chart(aggs: dict[str, dict], path: Path) -> Path:
    """Expected clicks per row (mean ± std over seeds), one panel per world; GReF variants orange."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(aggs), figsize=(7 * len(aggs), 4.2), squeeze=False)
    for ax, (world, agg) in zip(axes[0], aggs.items()):
        names = [n for n in agg if "oracle_clicks" in agg[n]]
        means = [agg[n]["oracle_clicks"]["mean"] for n in names]
        stds = [agg[n]["oracle_clicks"]["std"] for n in names]
        colors = ["#999999" if n in REFERENCES else "#d8703b" if n.startswith("GReF") else "#3b7dd8" for n in names]
        ax.bar(names, means, yerr=stds, capsize=3, color=colors)
        ax.set_ylim(min(means) * 0.93, max(means) * 1.03)
        ax.set_title(f"world '{world}': E[clicks] / request (mean ± std over seeds)")
        plt.setp(ax.get_xticklabels(), rotation=35, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(cfg: ExperimentConfig) -> dict[str, Any]:
    import mlflow

    from gref import tracking

    unknown = sorted(set(cfg.tables) - set(TABLES))
    if unknown:
        raise SystemExit(f"config error: tables: unknown {unknown} (known: {', '.join(TABLES)})")
    missing = sorted(set(cfg.ablation_worlds) - set(cfg.worlds))
    if missing and {"ablations", "heads"} & set(cfg.tables):
        raise SystemExit(f"config error: ablation_worlds {missing} are not in worlds ({', '.join(cfg.worlds)})")
    for world in cfg.worlds:
        recipes(cfg, world)  # unknown baseline kinds / world keys fail before any work
    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "experiments.yaml")
    tracking.setup(cfg.tracking)
    mlflow.set_experiment(cfg.tracking.experiment)
    started = time.time()
    aggs = {}
    with mlflow.start_run(run_name=f"experiments-{time.strftime('%Y%m%d-%H%M%S')}") as parent:
        mlflow.log_params({k: str(v)[:500] for k, v in flatten(to_dict(cfg)).items()})
        for world in cfg.worlds:
            reports = []
            for seed in cfg.seeds:
                log("experiments", f"--- world {world}, seed {seed} ({time.time() - started:.0f}s so far)")
                reports.append(run_seed(cfg, world, seed))
            aggs[world] = aggregate(reports)
        text = write_tables(cfg, aggs, out)
        chart(aggs, out / "expected_clicks.png")
        for f in ("tables.md", "tables.json", "expected_clicks.png", "experiments.yaml"):
            mlflow.log_artifact(str(out / f))
        mlflow.log_metric("time_s", time.time() - started)
    log("experiments", f"done in {time.time() - started:.0f}s; tables in {out / 'tables.md'}")
    print(text, flush=True)
    return {"out": str(out), "mlflow_run_id": parent.info.run_id, "tables": aggs}


def main(argv: list[str] | None = None) -> dict:
    p = parser("jobs.experiments", __doc__)
    args = p.parse_args(argv)
    return run(resolve_config(ExperimentConfig, args))


if __name__ == "__main__":
    main()
