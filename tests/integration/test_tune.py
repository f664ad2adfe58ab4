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


def test_sweep_nests_runs_resumes_and_its_best_config_trains(ray_cluster, prep_dir, sim_dir, tmp_path):
    from mlflow import MlflowClient

    from jobs import dpo, pretrain
    from tune import sweep

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_SWEEP))
    args = ["--config", str(config), "--data", str(prep_dir), "name=tiny", f"storage={tmp_path / 'tune'}",
            f"tracking.uri={uri}"]

    first = sweep.main(args)
    assert first["metric"] == "oracle_clicks"  # the world beside the logs was found
    assert first["counts"] == {"finished": 0, "stopped early": 0, "error": 1}
    (failed,) = first["trials"]
    assert "injected failure after epoch 0" in failed["error"]

    client = MlflowClient(uri)
    parent = client.get_run(first["mlflow_run_id"])
    exp = parent.info.experiment_id

    def children(run_id):
        return {r.info.run_name: r for r in client.search_runs([exp], f"tags.mlflow.parentRunId = '{run_id}'")}

    trial_run = children(parent.info.run_id)[f"trial-{failed['trial_id']}"]
    assert trial_run.info.status == "FAILED"
    assert trial_run.data.params["pretrain.run.fail_once_at_epoch"] == "0" and trial_run.data.params["pairs.alpha"] == "0.5"

    # the same name again resumes: the failed trial continues from its epoch-0 checkpoint (so the
    # injected failure does not fire again), in the same MLflow runs, without redoing epoch 0
    second = sweep.main(args)
    assert second["restored"] and second["mlflow_run_id"] == first["mlflow_run_id"]
    assert second["counts"] == {"finished": 1, "stopped early": 0, "error": 0}
    (done,) = second["trials"]
    resumed = client.get_run(trial_run.info.run_id)
    assert resumed.info.status == "FINISHED"
    objective_steps = [m.step for m in client.get_metric_history(resumed.info.run_id, "objective")]
    assert sorted(set(objective_steps)) == [0, 1, 2]  # live curve: 2 pre-training epochs, then 1 DPO epoch
    runs = children(resumed.info.run_id)
    assert {r.info.status for r in runs.values()} == {"FINISHED"} and len(runs) == 2  # its pretrain and dpo runs
    assert [m.step for m in client.get_metric_history(runs[f"{done['trial_id']}-pretrain"].info.run_id,
                                                      "train_loss")] == [0, 1]
    assert resumed.data.metrics["objective_final"] == pytest.approx(done["objective"])
    dpo_scores = [m.value for key in ("init.oracle_clicks", "oracle_clicks")  # init: the pre-trained model
                  for m in client.get_metric_history(runs[f"{done['trial_id']}-dpo"].info.run_id, key)]
    assert max(dpo_scores) == pytest.approx(done["objective"])  # the trial's score is its exported DPO model's

    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"results.csv", "params_vs_objective.png", "best", "summary.json"} <= artifacts
    best = second["best"]
    assert best["objective"] == max(r["objective"] for r in second["trials"])
    dpo_yaml = yaml.safe_load(Path(best["files"]["dpo"]).read_text())
    assert json.loads((Path(dpo_yaml["data"]) / "summary.json").read_text())["config"]["alpha"] == 0.5
    assert yaml.safe_load(Path(best["files"]["dataset"]).read_text())["alpha"] == 0.5

    quick = ["scaling.num_workers=0", "optim.epochs=1", f"run.storage={tmp_path / 'best-runs'}"]
    out = pretrain.main(["--config", best["files"]["pretrain"], *quick])
    assert len(out["history"]) == 1 and out["history"][0]["oracle_clicks"] > 0
    out = dpo.main(["--config", best["files"]["dpo"], *quick, "register=false"])
    assert [h["epoch"] for h in out["history"]] == [-1, 0]  # the initial model's validation, then 1 epoch
    assert out["history"][-1]["val_dpo_loss"] > 0
