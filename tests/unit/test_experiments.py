"""gref.experiments without Ray: the aggregate over seeds, paired lifts by hand, the recipes per table."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gref.config import ConfigError
from gref.experiments import ExperimentConfig, Recipe, aggregate, paired_lift, recipes, table_md


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




def test_the_heads_table_says_each_k_against_the_default_paired_over_seeds(tmp_path):
    from gref.experiments import write_tables

    cfg = ExperimentConfig(tables=["heads"], heads=[4, 10], seeds=[0, 1], worlds={"default": {}})
    reports = [{"logged exposure": {"oracle_clicks": 2.0}, "GReF": {"oracle_clicks": 2.2},
                "GReF (k = 10)": {"oracle_clicks": 2.2 * 0.99}},
               {"logged exposure": {"oracle_clicks": 2.0}, "GReF": {"oracle_clicks": 2.1},
                "GReF (k = 10)": {"oracle_clicks": 2.1 * 0.97}}]
    text = write_tables(cfg, {"default": aggregate(reports)}, {"default": reports}, tmp_path)
    half = 12.706 * np.std([-0.01, -0.03], ddof=1) / np.sqrt(2)  # t(1) 97.5 %: 12.706
    assert f"- k = 10 vs k = 4, paired over seeds: E[clicks] -2.00% ± {half:.2%} (higher on 0 of 2 seeds)" in text
    assert "k = 4 vs k = 4" not in text


def test_a_cached_student_of_another_teacher_is_refused_not_reported(tmp_path):
    """The cache is keyed by run name: a post-training run whose recorded teacher is not the
    recipe's (the recipe changed since it ran) stops the table with a clear error."""
    from gref.experiments import _cached_student

    run = tmp_path / "post-gref"
    (run / "model").mkdir(parents=True)
    (run / "model" / "model.json").write_text("{}")
    (run / "outcome.json").write_text(json.dumps({"params": {"reward": "/r/reward-pre/model"}, "outcome": {}}))
    assert _cached_student(tmp_path, "post-gref", "/r/reward-pre/model") == str(run / "model")
    assert _cached_student(tmp_path, "post-gref", "") == str(run / "model")  # no teacher to compare
    assert _cached_student(tmp_path, "post-other", "/r/reward-pre/model") is None
    with pytest.raises(ConfigError, match="reward-pre-value_pairs8.*new directory"):
        _cached_student(tmp_path, "post-gref", "/r/reward-pre-value_pairs8/model")
