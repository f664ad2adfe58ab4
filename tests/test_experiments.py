"""gref.experiments (through jobs.experiments) end to end on a tiny world: two seeds through simulate -> prepare -> Ray Train
(GReF + a baseline) -> evaluate, aggregated into mean ± std tables; a re-run trains nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gref.config import ConfigError
from gref.experiments import ExperimentConfig, Recipe, aggregate, paired_lift, recipes, table_md

TINY = ["model.d_model=32", "model.enc_layers=1", "model.dec_layers=1", "model.omtp_heads=2",
        "optim.batch_size=128", "eval.max_requests=200", "optim.epochs=1", "scaling.num_workers=0"]


def test_aggregate_is_mean_sample_std_and_a_t_interval_over_seeds():
    reports = [{"A": {"oracle_clicks": 1.0, "auc_exposure": float("nan")}}, {"A": {"oracle_clicks": 2.0}},
               {"A": {"oracle_clicks": 4.0}}]
    agg = aggregate(reports)
    sd = np.std([1, 2, 4], ddof=1)
    assert agg["A"]["oracle_clicks"] == {"mean": pytest.approx(7 / 3), "std": pytest.approx(sd), "n": 3,
                                         "ci95": pytest.approx(4.303 * sd / np.sqrt(3), rel=1e-4)}  # t(2): 4.303
    assert "auc_exposure" not in agg["A"]  # NaN (undefined) is not averaged in
    md = table_md(agg, [("row A", "A")], [("oracle_clicks", "E[clicks]", "{:.2f}")])
    assert "| row A | 2.33 ± 1.53 |" in md


def test_paired_lift_by_hand():
    reports = [{"G": {"oracle_clicks": 2.2}, "B": {"oracle_clicks": 2.0}},
               {"G": {"oracle_clicks": 2.1}, "B": {"oracle_clicks": 2.1}}]
    out = paired_lift(reports, "G", "B")
    lifts = np.array([0.1, 0.0])
    assert out["mean"] == pytest.approx(0.05) and out["positive"] == 1 and out["n"] == 2
    assert out["ci95"] == pytest.approx(12.706 * lifts.std(ddof=1) / np.sqrt(2), rel=1e-4)  # t(1) 97.5 %: 12.706


def test_recipes_per_table():
    cfg = ExperimentConfig(tables=["ablations", "heads"], heads=[1, 4], ablation_worlds=["default"])
    need = recipes(cfg, "default")
    assert {"gref", "pre", "post_only", "ln_lo", "lo_single", "onpolicy", "ipo", "k1"} <= set(need)
    assert need["post_only"] == ("gref", Recipe(pretrain=None))
    assert need["k1"] == ("gref", Recipe(pretrain={"model.omtp_heads": 1}))
    assert recipes(cfg, "strong") == {}  # ablations run on ablation_worlds only


def test_a_subset_of_ablation_rows_keeps_the_gref_reference_and_its_own_report(tmp_path):
    from dataclasses import replace

    from gref import experiments

    cfg = ExperimentConfig(tables=["ablations"], ablation_rows=["dpo", "no_list_bias"])
    assert experiments.ablation_rows(cfg, "post") == ["gref", "dpo"]
    assert experiments.ablation_rows(cfg, "pretraining") == ["gref", "no_list_bias"]
    assert set(recipes(cfg, "default")) == {"gref", "dpo", "no_list_bias"}
    assert experiments.report_tag(cfg) == "report-ablations+dpo+no_list_bias"  # never the full table's folder
    with pytest.raises(ConfigError, match="ablation_rows: unknown"):
        experiments.run(replace(cfg, ablation_rows=["nope"], out=str(tmp_path)))


def test_two_seeds_end_to_end_then_resume(ray_cluster, tmp_path):
    from mlflow import MlflowClient

    from jobs import experiments

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [f"out={tmp_path / 'exp'}", "seeds=[0, 1]", "requests=600", f"tracking.uri={uri}",
            "worlds={tiny: {n_users: 200, n_items: 1000, n_series: 40, n_creators: 150, days: 4}}",
            "tables=[baselines]", "baselines=[dnn]", "dataset.valid_days=1", "dataset.test_days=1",
            *[f"{stage}.{o}" for stage in ("pretrain", "dpo") for o in TINY], "dpo.objective=distill",
            "reward.optim.epochs=1", "reward.scaling.num_workers=0", "reward.eval.max_requests=200",
            "baseline_overrides={optim.epochs: 1, model.hidden: [16], scaling.num_workers: 0}",
            "parallel=2", "pretrain.scaling.threads_per_worker=2"]  # the two seeds as two Ray tasks
    result = experiments.main(args)
    agg = result["tables"]["tiny"]
    per_seed = [json.loads((tmp_path / "exp" / "tiny" / f"seed{s}" / "report-baselines" / "report.json").read_text())
                for s in (0, 1)]
    rows = ("logged exposure", "upstream order", "oracle best list", "features-only best list", "DNN", "GReF",
            "GReF (pre-train only)", "list click model + beam search (GReF's teacher)")
    for row in rows:
        values = [r[row]["oracle_clicks"] for r in per_seed]
        assert agg[row]["oracle_clicks"]["n"] == 2
        assert agg[row]["oracle_clicks"]["mean"] == pytest.approx(np.mean(values))
        assert agg[row]["oracle_clicks"]["std"] == pytest.approx(np.std(values, ddof=1))
    assert per_seed[0]["logged exposure"]["oracle_clicks"] != per_seed[1]["logged exposure"]["oracle_clicks"]
    text = (tmp_path / "exp" / "report-baselines" / "tables.md").read_text()
    assert "| DNN |" in text and "| GReF |" in text and " ± " in text
    assert "GReF is the top row" in text and "GReF vs the best baseline (DNN)" in text
    assert (tmp_path / "exp" / "report-baselines" / "expected_clicks.png").stat().st_size > 0

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("gref")
    runs_before = len(client.search_runs([experiment.experiment_id]))
    assert runs_before == 1 + 2 * 4  # the parent + per seed: pretrain, reward, post-train, dnn
    again = experiments.main(args)  # every seed is cached: nothing trains again
    assert len(client.search_runs([experiment.experiment_id])) == runs_before + 1
    assert again["tables"] == result["tables"]
