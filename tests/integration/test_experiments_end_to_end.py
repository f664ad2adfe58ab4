"""gref.experiments (through jobs.experiments) end to end on a tiny world: two seeds through simulate -> prepare -> Ray Train
(GReF + a baseline) -> evaluate, aggregated into mean ± std tables; a re-run trains nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest


TINY = ["model.d_model=32", "model.enc_layers=1", "model.dec_layers=1", "model.omtp_heads=2",
        "optim.batch_size=128", "eval.max_requests=200", "optim.epochs=1", "scaling.num_workers=0"]


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
    assert runs_before == 1 + 2 * 5  # the parent + per seed: pretrain, two rewards (the default's candidate), post-train, dnn
    again = experiments.main(args)  # every seed is cached: nothing trains again
    assert len(client.search_runs([experiment.experiment_id])) == runs_before + 1
    assert again["tables"] == result["tables"]


def test_the_reward_chosen_by_held_out_nll_trains_only_what_differs(ray_cluster, tmp_path):
    """The default recipe fits the value-pair reward beside the configured one, which teaches unless
    the value-pair one fits the validation clicks better beyond chance; the one_reward ablation
    distils the configured reward alone. When it is the one chosen the ablation's inputs are the
    GReF row's and it is that model (no second training); otherwise GReF's student has the chosen
    reward's tables and the ablation is trained from the configured reward."""
    from gref.experiments import LABELS
    from gref.recipe import held_out_click_nll, preferred_reward
    from gref.reranker_io import load_reranker
    from jobs import experiments

    args = [f"out={tmp_path / 'exp'}", "seeds=[0]", "requests=600", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            "worlds={tiny: {n_users: 200, n_items: 1000, n_series: 40, n_creators: 150, days: 4}}",
            "tables=[ablations]", "ablation_worlds=[tiny]", "ablation_rows=[one_reward]",
            "dataset.valid_days=1", "dataset.test_days=1", *[f"{stage}.{o}" for stage in ("pretrain", "dpo") for o in TINY],
            "reward.optim.epochs=1", "reward.scaling.num_workers=0", "reward.eval.max_requests=200"]
    experiments.main(args)
    ray_dir = tmp_path / "exp" / "tiny" / "seed0" / "ray"
    prep = tmp_path / "exp" / "tiny" / "seed0" / "prep"
    nll = [held_out_click_nll(ray_dir / name / "model", prep) for name in ("reward-pre", "reward-pre-value_pairs8")]
    report = json.loads((tmp_path / "exp" / "tiny" / "seed0" / "report-ablations+one_reward" / "report.json").read_text())
    alone = report[LABELS["one_reward"]]
    teacher = json.loads((ray_dir / "post-gref" / "outcome.json").read_text())["params"]["reward"]
    if preferred_reward(nll) == 0:
        assert teacher == str(ray_dir / "reward-pre" / "model")
        assert not (ray_dir / "post-one_reward").exists()
        assert alone["oracle_clicks"] == report["GReF"]["oracle_clicks"]
    else:
        assert teacher == str(ray_dir / "reward-pre-value_pairs8" / "model")
        assert load_reranker(ray_dir / "post-gref" / "model").cfg.value_pairs == 8
        own = json.loads((ray_dir / "post-one_reward" / "outcome.json").read_text())["params"]["reward"]
        assert own == str(ray_dir / "reward-pre" / "model")
