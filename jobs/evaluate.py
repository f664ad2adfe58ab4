"""Evaluate rerankers on a prepared split: AUC / NDCG (gref.metrics), and with a simulated
world the oracle's expected clicks / likes / long views of the generated lists, beside the
logged exposure order and the upstream order. Writes report.json, report.md and a bar chart,
and logs them to MLflow.

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
        split: str = "test", max_requests: int = 0, device: str = "auto") -> dict[str, dict[str, float]]:
    """Evaluate ``models`` ({name: GenReranker}) and the reference orders; write the report and
    log it to the active MLflow run. ``device``: auto = the GPU when there is one."""
    import mlflow
    import torch

    from gref.data.batch import read_split
    from gref.evaluation import bar_chart, markdown_table, report_rows
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
    rows = report_rows(models, table, data_meta(data), world, device=device, fit_table=fit_table)
    (out / "report.json").write_text(json.dumps(rows, indent=2))
    md = markdown_table(rows)
    (out / "report.md").write_text(f"# Offline evaluation ({split} split, {table.num_rows} requests)\n\n{md}\n")
    if world is not None:
        bar_chart(rows, out / "expected_clicks.png")
    for name, r in rows.items():
        key = mlflow_key(name)
        mlflow.log_metrics({f"{key}.{k}": v for k, v in r.items() if v == v})
    for f in ("report.json", "report.md", "expected_clicks.png"):
        if (out / f).exists():
            mlflow.log_artifact(str(out / f), artifact_path="evaluation")
    print(md, flush=True)
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
        rows = run(args.data, models, args.out, args.world, args.split, args.max_requests, args.device)
    print_json({"report": str(Path(args.out).resolve() / "report.md")})
    return rows


if __name__ == "__main__":
    main()
