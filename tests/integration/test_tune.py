"""Ray Tune sweeps: re-derived Eq. 7 pairs, and a real sweep on the session's local Ray -- nested
MLflow runs, a trial that fails and resumes with Tuner.restore, and a best config that jobs.pretrain /
jobs.dpo train from as it is. The resumed trial re-runs its Ray Train job under the same run name:
this is also the test that a re-run job continues its Train run and its MLflow run without redoing
finished epochs."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

TINY_SWEEP = {
    "scheduler": "fifo", "num_samples": 1, "max_concurrent": 2, "max_failures": 0,
    "space": {
        # the one trial fails after its first pre-training epoch; the second run resumes it
        "pretrain.run.fail_once_at_epoch": {"grid": [0]},
        "pairs.alpha": 0.5,  # not the prepared data's alpha: every trial re-derives its pairs
        "dpo.beta": {"choice": [0.1]},
    },
    "pretrain": {"model": {"d_model": 32, "enc_layers": 1, "dec_layers": 1, "omtp_heads": 2},
                 "optim": {"batch_size": 128, "epochs": 2}, "eval": {"max_requests": 300},
                 "run": {"max_failures": 0},
                 "scaling": {"num_workers": 1, "cpus_per_worker": 0.5, "threads_per_worker": 1, "read_cpus": 0.1}},
    "dpo": {"optim": {"batch_size": 128, "epochs": 1}, "eval": {"max_requests": 300},
            "scaling": {"num_workers": 1, "cpus_per_worker": 0.5, "threads_per_worker": 1, "read_cpus": 0.1}},
}


def _sorted_pairs(path):
    table = pq.read_table(path, columns=["request_id", "winner", "loser"]).to_pylist()
    return sorted(table, key=lambda r: r["request_id"])


def test_rederived_pairs_match_the_prepare_job(prep_dir, tmp_path):
    from gref.data.pairs import rederive

    summary = json.loads((prep_dir / "summary.json").read_text())
    alpha, gamma = summary["config"]["alpha"], summary["config"]["gamma"]
    same = rederive(prep_dir, tmp_path / "same", alpha, gamma)
    for split in ("train", "valid"):
        assert _sorted_pairs(same / "pairs" / split) == _sorted_pairs(prep_dir / "pairs" / split)
    other = rederive(prep_dir, tmp_path / "other", 20.0, gamma)  # position dominates: fewer reorders
    counts = json.loads((other / "summary.json").read_text())["pairs"]
    assert counts["train"] < summary["pairs"]["train"]
    assert (other / "sequences").resolve() == (prep_dir / "sequences").resolve()


@pytest.fixture(scope="module")
def sweep_runs(ray_cluster, prep_dir, sim_dir, tmp_path_factory) -> dict:
    """The tiny sweep run twice under one name: its one trial fails after epoch 0, then resumes."""
    from mlflow import MlflowClient

    from tune import sweep

    tmp = tmp_path_factory.mktemp("tune")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    config = tmp / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_SWEEP))
    args = ["--config", str(config), "--data", str(prep_dir), "name=tiny", f"storage={tmp / 'tune'}",
            f"tracking.uri={uri}"]
    client = MlflowClient(uri)

    def children(run_id: str) -> dict:
        experiment = client.get_run(run_id).info.experiment_id
        return {r.info.run_name: r for r in client.search_runs([experiment], f"tags.mlflow.parentRunId = '{run_id}'")}

    first = sweep.main(args)
    trial_runs_after_first = children(first["mlflow_run_id"])  # before the resume finishes them
    second = sweep.main(args)
    return {"first": first, "trial_runs_after_first": trial_runs_after_first, "second": second, "client": client,
            "children": children, "tmp": tmp}


def test_a_failed_trial_is_reported_and_its_mlflow_run_failed(sweep_runs):
    first = sweep_runs["first"]
    assert first["metric"] == "oracle_clicks"  # the world beside the logs was found
    assert first["counts"] == {"finished": 0, "stopped early": 0, "error": 1}
    (failed,) = first["trials"]
    assert "injected failure after epoch 0" in failed["error"]
    trial_run = sweep_runs["trial_runs_after_first"][f"trial-{failed['trial_id']}"]
    assert trial_run.info.status == "FAILED"
    assert trial_run.data.params["pretrain.run.fail_once_at_epoch"] == "0" and trial_run.data.params["pairs.alpha"] == "0.5"


def test_the_same_name_resumes_the_failed_trial_in_its_runs_without_redoing_an_epoch(sweep_runs):
    """The failed trial continues from its epoch-0 checkpoint (so the injected failure does not
    fire again), in the same MLflow runs."""
    first, second, client = sweep_runs["first"], sweep_runs["second"], sweep_runs["client"]
    assert second["restored"] and second["mlflow_run_id"] == first["mlflow_run_id"]
    assert second["counts"] == {"finished": 1, "stopped early": 0, "error": 0}
    (done,) = second["trials"]
    trial_run = sweep_runs["children"](first["mlflow_run_id"])[f"trial-{done['trial_id']}"]
    assert trial_run.info.status == "FINISHED"
    objective_steps = [m.step for m in client.get_metric_history(trial_run.info.run_id, "objective")]
    assert sorted(set(objective_steps)) == [0, 1, 2]  # live curve: 2 pre-training epochs, then 1 DPO epoch
    runs = sweep_runs["children"](trial_run.info.run_id)
    assert {r.info.status for r in runs.values()} == {"FINISHED"} and len(runs) == 2  # its pretrain and dpo runs
    assert [m.step for m in client.get_metric_history(runs[f"{done['trial_id']}-pretrain"].info.run_id,
                                                      "train_loss")] == [0, 1]


def test_a_trials_score_is_its_exported_dpo_models(sweep_runs):
    second, client = sweep_runs["second"], sweep_runs["client"]
    (done,) = second["trials"]
    trial_run = sweep_runs["children"](second["mlflow_run_id"])[f"trial-{done['trial_id']}"]
    assert trial_run.data.metrics["objective_final"] == pytest.approx(done["objective"])
    dpo_run = sweep_runs["children"](trial_run.info.run_id)[f"{done['trial_id']}-dpo"]
    dpo_scores = [m.value for key in ("init.oracle_clicks", "oracle_clicks")  # init: the pre-trained model
                  for m in client.get_metric_history(dpo_run.info.run_id, key)]
    assert max(dpo_scores) == pytest.approx(done["objective"])


def test_the_sweep_logs_its_results_and_a_best_config_with_the_trials_pairs(sweep_runs):
    second = sweep_runs["second"]
    artifacts = {a.path for a in sweep_runs["client"].list_artifacts(second["mlflow_run_id"])}
    assert {"results.csv", "params_vs_objective.png", "best", "summary.json"} <= artifacts
    best = second["best"]
    assert best["objective"] == max(r["objective"] for r in second["trials"])
    dpo_yaml = yaml.safe_load(Path(best["files"]["dpo"]).read_text())
    assert json.loads((Path(dpo_yaml["data"]) / "summary.json").read_text())["config"]["alpha"] == 0.5
    assert yaml.safe_load(Path(best["files"]["dataset"]).read_text())["alpha"] == 0.5


def test_the_best_config_trains_with_the_jobs_as_it_is(sweep_runs):
    from jobs import dpo, pretrain

    best = sweep_runs["second"]["best"]
    quick = ["scaling.num_workers=0", "optim.epochs=1", f"run.storage={sweep_runs['tmp'] / 'best-runs'}"]
    out = pretrain.main(["--config", best["files"]["pretrain"], *quick])
    assert len(out["history"]) == 1 and out["history"][0]["oracle_clicks"] > 0
    out = dpo.main(["--config", best["files"]["dpo"], *quick, "register=false"])
    assert [h["epoch"] for h in out["history"]] == [-1, 0]  # the initial model's validation, then 1 DPO epoch
    assert out["history"][-1]["val_dpo_loss"] > 0
