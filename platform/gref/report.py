"""The offline report of rerankers on a prepared split (``python -m jobs.evaluate`` runs it):
AUC / NDCG (gref.metrics); the expected clicks of every row's lists estimated by click models
(PBM, DBN) fitted by EM on the split's logged clicks, with bootstrap 95 % CIs -- no oracle needed, so real logs get it too; where the logs
mark a randomisation bucket (``randomized``), an inverse-propensity estimate on it beside them
(``ips_clicks``, ``ips_lift`` over production: gref.evaluation.randomized_ips); where they mark
the endpoint's explored requests (``explored``) and the exploring model is given, the off-policy
estimates of gref.offpolicy (``ope_*``); and with a
simulated world the oracle's expected clicks / likes / long views, beside the logged exposure
order and the upstream order (and how far the estimate agrees with the oracle:
estimate_audit.json). Writes report.json, report.md and a bar chart, and logs them to MLflow.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from gref.cli import log


def mlflow_key(name: str) -> str:
    """A row / model name as an MLflow metric or param key (its charset: letters, digits, _ - .)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name.replace("+", "plus")).strip("_")


def evaluate(data: str | Path, models: dict[str, Any], out: str | Path, world_dir: str = "",
             split: str = "test", max_requests: int = 0, device: str = "auto",
             estimate: bool = True, compare_to: str = "", logging=None) -> dict[str, dict[str, float]]:
    """Evaluate ``models`` ({name: GenReranker}) and the reference orders; write the report and
    log it to the active MLflow run. ``device``: auto = the GPU when there is one; ``estimate``:
    the click-model estimate of every row (fitted on the split's own logged clicks, cross-fitted);
    ``compare_to``: a model's name, every other model's paired gain over it (gref.evaluation.add_gains);
    ``logging``: a gref.offpolicy.LoggingPolicy, the off-policy estimates from the split's explored requests."""
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
    if logging is not None:
        explored = int(sum(table.column("explored").to_pylist())) if "explored" in table.column_names else 0
        log("evaluate", f"off-policy estimates from {explored} explored requests (logging policy at temperature "
                        f"{logging.temperature}, {logging.samples} samples per request for its marginals)")
    rows = report_rows(models, table, meta, world, device=device, fit_table=fit_table, estimator=estimator,
                       compare_to=compare_to, logging=logging)
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
