"""Evaluate rerankers on a prepared split: AUC / NDCG (gref.metrics); the expected clicks of
every row's lists estimated by click models (PBM, DBN) fitted by EM on the split's logged
clicks, with bootstrap 95 % CIs -- no oracle needed, so real logs get it too; where the logs
mark a randomisation bucket (``randomized``), an inverse-propensity estimate on it beside them
(``ips_clicks``, ``ips_lift`` over production: gref.evaluation.randomized_ips); and with a
simulated world the oracle's expected clicks / likes / long views, beside the logged exposure
order and the upstream order (and how far the estimate agrees with the oracle:
estimate_audit.json). Writes report.json, report.md and a bar chart, and logs them to MLflow.

    python -m jobs.evaluate --data OUT/prep --model gref=models:/gref-reranker@champion \
        [--model pre=runs/.../model] [--world DIR/world] [--split test] [--out DIR]
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from gref.cli import log, parser, print_json, resolve_config
from gref.tracking import TrackingConfig


def mlflow_key(name: str) -> str:
    """A row / model name as an MLflow metric or param key (its charset: letters, digits, _ - .)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name.replace("+", "plus")).strip("_")


def run(data: str | Path, models: dict[str, Any], out: str | Path, world_dir: str = "",
        split: str = "test", max_requests: int = 0, device: str = "auto",
        estimate: bool = True, compare_to: str = "") -> dict[str, dict[str, float]]:
    """Evaluate ``models`` ({name: GenReranker}) and the reference orders; write the report and
    log it to the active MLflow run. ``device``: auto = the GPU when there is one; ``estimate``:
    the click-model estimate of every row (fitted on the split's own logged clicks, cross-fitted);
    ``compare_to``: a model's name, every other model's paired gain over it (gref.evaluation.add_gains)."""
    import mlflow
    import torch

    from gref.clickmodel.estimate import ClickEstimator
    from gref.data.batch import read_split
    from gref.evaluation import bar_chart, estimate_audit, markdown_table, report_rows
    from gref.train.steps import data_meta

    data, out = Path(data), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = read_split(data / "sequences" / split)
    if max_requests:
        table = table.slice(0, min(max_requests, table.num_rows))
    world = None
    if world_dir:
        from gref.sim.world import World

        world = World.load(world_dir)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    log("evaluate", f"{table.num_rows} {split} requests, {len(models)} model(s) on {device}"
                    + (", oracle on" if world is not None else ""))
    fit_table = read_split(data / "sequences" / "train") if world is not None else None  # features-only ceiling
    meta = data_meta(data)
    estimator = None
    if estimate:
        context = meta["click_model_context"]
        estimator = ClickEstimator(table, meta, context)
        log("evaluate", "click models (PBM, DBN, feature PBM) fitted by EM on the split's logged clicks (2-fold cross-fit)"
                        + (f", documents keyed by ({context}, item_id)" if context else ""))
    rows = report_rows(models, table, meta, world, device=device, fit_table=fit_table, estimator=estimator,
                       compare_to=compare_to)
    (out / "report.json").write_text(json.dumps(rows, indent=2))
    md = markdown_table(rows)
    audit = estimate_audit(rows) if world is not None and estimate else {}
    if audit:
        (out / "estimate_audit.json").write_text(json.dumps(audit, indent=2))
        md += "\n\nClick-model estimate vs the oracle over these rows: " + "; ".join(
            f"{k.upper()} Kendall tau {a['kendall_tau']:.2f}, bias on the logged order {a['logged_bias']:+.1%}, "
            f"mean |lift error| {a['mean_abs_lift_error']:.1%}" for k, a in audit.items() if k != "ips")
        if "ips" in audit:
            a = audit["ips"]
            md += (f"\n\nIPS on the randomisation bucket ({a['requests']} requests) vs the oracle over {a['rows']} "
                   f"rows: Kendall tau {a['kendall_tau']:.2f}, mean |relative error| {a['mean_abs_rel_error']:.1%} "
                   f"(mean {a['mean_rel_error']:+.1%})")
    (out / "report.md").write_text(f"# Offline evaluation ({split} split, {table.num_rows} requests)\n\n{md}\n")
    if world is not None or estimate:
        bar_chart(rows, out / "expected_clicks.png")
    for name, r in rows.items():
        key = mlflow_key(name)
        mlflow.log_metrics({f"{key}.{k}": v for k, v in r.items() if v == v})
    for f in ("report.json", "report.md", "expected_clicks.png", "estimate_audit.json"):
        if (out / f).exists():
            mlflow.log_artifact(str(out / f), artifact_path="evaluation")
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = parser("jobs.evaluate", __doc__)
    p.add_argument("--data", required=True, help="prepared data dir")
    p.add_argument("--model", action="append", default=[], metavar="NAME=URI",
                   help="a model to evaluate: directory, models:/name@alias or runs:/... (repeatable)")
    p.add_argument("--world", default="", help="simulated world dir, for oracle metrics")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--max-requests", type=int, default=0, help="evaluate the first N requests (0 = all)")
    p.add_argument("--out", default="runs/evaluate", help="report directory")
    p.add_argument("--device", default="auto", help="auto (the GPU when there is one) | cpu | cuda")
    p.add_argument("--no-estimate", action="store_true", help="skip the click-model estimate")
    args = p.parse_args(argv)
    tracking_cfg = resolve_config(TrackingConfig, args)
    import mlflow

    from gref import tracking

    tracking.setup(tracking_cfg)
    mlflow.set_experiment(tracking_cfg.experiment)
    models = {}
    for spec in args.model:
        name, _, uri = spec.partition("=")
        if not uri:
            raise SystemExit(f"--model must be NAME=URI, got '{spec}'")
        models[name] = tracking.load_reranker_uri(uri)
    with mlflow.start_run(run_name="evaluate"):
        mlflow.log_params({"data": str(Path(args.data).resolve()), "split": args.split,
                           **{f"model.{mlflow_key(k)}": v for k, v in (s.partition("=")[::2] for s in args.model)}})
        rows = run(args.data, models, args.out, args.world, args.split, args.max_requests, args.device,
                   estimate=not args.no_estimate)
    print((Path(args.out) / "report.md").read_text(), flush=True)
    print_json({"report": str(Path(args.out).resolve() / "report.md")})
    return rows


if __name__ == "__main__":
    main()
