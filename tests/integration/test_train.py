"""Ray Train jobs on tiny data: in-process loops, resume after a failure, 2-worker DDP,
MLflow contents, and a small end-to-end pipeline -- real Ray, real MLflow (sqlite)."""

from __future__ import annotations

import json
import tempfile
import uuid
from pathlib import Path

import pytest
import torch

from gref.config import load_config
from gref.data.batch import collate, read_split
from gref.model.decoding import decode
from gref.reranker_io import load_reranker
from gref.train.config import DPOConfig, PretrainConfig
from gref.train.steps import data_meta

TINY = ["model.d_model=32", "model.enc_layers=1", "model.dec_layers=1", "model.omtp_heads=2",
        "optim.batch_size=128", "eval.max_requests=300", "scaling.cpus_per_worker=0.5"]


@pytest.fixture
def mlflow_uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def pretrain_cfg(prep_dir, sim_dir, tmp_path, mlflow_uri, *extra):
    return load_config(PretrainConfig, None, [
        f"data={prep_dir}", f"eval.world={sim_dir / 'world'}", f"run.storage={tmp_path / 'ray'}",
        f"run.name=pre-{uuid.uuid4().hex[:8]}", f"tracking.uri={mlflow_uri}", *TINY, *extra])


def test_pretrain_in_process_learns_and_checkpoints(ray_cluster, prep_dir, sim_dir, tmp_path, mlflow_uri):
    from gref.train.runner import run_training

    cfg = pretrain_cfg(prep_dir, sim_dir, tmp_path, mlflow_uri, "scaling.num_workers=0", "optim.epochs=3")
    out = run_training("pretrain", cfg)
    losses = [h["train_loss"] for h in out["history"]]
    assert [h["epoch"] for h in out["history"]] == [0, 1, 2]
    assert losses[-1] < losses[0] * 0.98, losses
    assert out["history"][-1]["val_nll"] < out["history"][0]["val_nll"]
    # the exported best model rebuilds as our class and decodes
    model = load_reranker(out["model_dir"])
    meta = data_meta(prep_dir)
    b = collate(read_split(prep_dir / "sequences" / "test").slice(0, 8), meta["num_features"],
                len(meta["cat_sizes"]), meta["feedback_weights"])
    placed = decode(model, b.num, b.cat, b.cand_mask, 10)
    assert placed.shape == (8, 10) and all(len(set(r)) == 10 for r in placed.tolist())
    # checkpoint round trip: the last checkpoint restores model, optimizer and history
    state = torch.load(f"{out['checkpoint']}/state.pt", weights_only=False)
    assert state["epoch"] == 2 and len(state["history"]) == 3
    model.load_state_dict(state["best_model"])
    fresh = load_reranker(out["model_dir"])
    fresh.load_state_dict(state["model"])
    torch.optim.Adam(fresh.parameters()).load_state_dict(state["optimizer"])
    # the prepared splits it read are the run's MLflow datasets
    import mlflow

    mlflow.set_tracking_uri(mlflow_uri)
    inputs = mlflow.get_run(out["mlflow_run_id"]).inputs.dataset_inputs
    assert sorted((i.tags[0].value, i.dataset.name.split("/", 1)[1]) for i in inputs) == [
        ("training", "sequences/train"), ("validation", "sequences/valid")]


def test_dpo_with_vanishing_beta_stays_at_the_reference(ray_cluster, prep_dir, sim_dir, tmp_path, mlflow_uri):
    from gref.model.config import ModelConfig
    from gref.train.runner import run_training
    from gref.train.steps import build_model

    meta = data_meta(prep_dir)
    torch.manual_seed(0)
    init = build_model(ModelConfig(d_model=32, enc_layers=1, dec_layers=1, omtp_heads=2), meta)
    cfg = load_config(DPOConfig, None, [
        f"data={prep_dir}", f"run.storage={tmp_path / 'ray'}", f"run.name=dpo-{uuid.uuid4().hex[:8]}",
        f"tracking.uri={mlflow_uri}", "objective=dpo", "beta=1e-12", "optim.epochs=1", "scaling.num_workers=0",
        "register=false", *TINY])
    out = run_training("dpo", cfg, init=init)
    after = load_reranker(out["model_dir"])
    for (name, p0), p1 in zip(init.state_dict().items(), after.state_dict().values()):
        assert torch.allclose(p0, p1, atol=1e-6), name
    assert out["history"][0]["epoch"] == -1  # the initial model is validated first
    assert out["history"][-1]["train_loss"] == pytest.approx(0.693147, abs=1e-4)  # log 2


def test_dpo_moves_towards_winners(ray_cluster, prep_dir, sim_dir, tmp_path, mlflow_uri):
    from gref.train.runner import run_training

    pre = run_training("pretrain", pretrain_cfg(prep_dir, sim_dir, tmp_path, mlflow_uri,
                                                "scaling.num_workers=0", "optim.epochs=1"))
    cfg = load_config(DPOConfig, None, [
        f"data={prep_dir}", f"run.storage={tmp_path / 'ray'}", f"run.name=dpo-{uuid.uuid4().hex[:8]}",
        f"tracking.uri={mlflow_uri}", "objective=dpo", "optim.epochs=2", "optim.lr=1e-3", "scaling.num_workers=0",
        f"eval.world={sim_dir / 'world'}", *TINY])
    out = run_training("dpo", cfg, init=load_reranker(pre["model_dir"]))
    h = out["history"]
    assert h[-1]["train_accuracy"] > 0.5 and h[-1]["train_reward_margin"] > 0
    assert h[-1]["val_dpo_loss"] < h[0]["val_dpo_loss"] == pytest.approx(0.693147, abs=1e-4)  # init: log 2
    # the instrumentation: the winners' log-prob rises relative to the losers', the KL leaves 0
    assert h[-1]["val_chosen_logp"] - h[-1]["val_rejected_logp"] > h[0]["val_chosen_logp"] - h[0]["val_rejected_logp"]
    assert h[0]["val_kl"] == pytest.approx(0.0, abs=1e-5) and h[-1]["val_kl"] > 0
    assert out["registered_version"] >= 1
    # MLflow: params, per-epoch metrics, artifacts, and the registered model loads and decodes
    from mlflow import MlflowClient

    from gref import tracking

    client = MlflowClient(mlflow_uri)
    run = client.get_run(out["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["beta"] == "0.1" and run.data.params["stage"] == "dpo"
    assert run.data.params["data.path"] == str(prep_dir.resolve())
    assert len(run.data.params["data.summary_sha256"]) == 16
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_dpo_loss")] == [0, 1]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "init.val_dpo_loss")] == [0]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"curves.png", "history.json", "reranker", "data"} <= artifacts
    tracking.setup(tracking.TrackingConfig(uri=mlflow_uri))
    model = tracking.load_reranker_uri(f"models:/gref-reranker/{out['registered_version']}")
    assert isinstance(model, torch.nn.Module) and model.k == 2


def test_two_worker_ddp_resumes_after_a_worker_failure(ray_cluster, prep_dir, sim_dir, tmp_path, mlflow_uri, capfd):
    """Two DDP workers, each on its half of the data; they die after epoch 0's checkpoint, Ray
    restarts them and training resumes at epoch 1 without redoing the finished epoch."""
    from mlflow import MlflowClient

    from gref.train.runner import run_training

    cfg = pretrain_cfg(prep_dir, sim_dir, tmp_path, mlflow_uri, "scaling.num_workers=2", "optim.epochs=2",
                       "run.fail_once_at_epoch=0", "run.max_failures=1")
    out = run_training("pretrain", cfg)
    assert [h["epoch"] for h in out["history"]] == [0, 1]
    assert "resumed from the checkpoint of epoch 0" in capfd.readouterr().out
    steps = [m.step for m in MlflowClient(mlflow_uri).get_metric_history(out["mlflow_run_id"], "train_loss")]
    assert steps == [0, 1]  # each epoch logged once: epoch 0 (checkpointed, not yet logged) by the resume
    n_train = json.loads((prep_dir / "summary.json").read_text())["sequences"]["train"]
    for h in out["history"]:
        assert 0.4 * n_train <= h["train_samples"] <= 0.6 * n_train  # rank 0 trained on its half
        assert h["val_nll"] > 0 and h["oracle_clicks"] > 0


def test_pipeline_end_to_end(ray_cluster, tmp_path, mlflow_uri):
    from gref.pipeline import GREF_ROW, TEACHER_ROW
    from jobs import pipeline

    args = [f"out={tmp_path / 'pipe'}", "requests=1500", f"tracking.uri={mlflow_uri}",
            "world.n_users=300", "world.n_items=1500", "world.n_series=50", "world.n_creators=200",
            "world.days=5", "dataset.test_days=1", "dataset.valid_days=1",
            *[f"{stage}.{o}" for stage in ("pretrain", "dpo") for o in TINY],
            "pretrain.optim.epochs=1", "dpo.optim.epochs=1", "pretrain.scaling.num_workers=0",
            "dpo.scaling.num_workers=0", "dpo.objective=distill", "reward.optim.epochs=1",
            "reward.scaling.num_workers=0", "reward.eval.max_requests=300"]
    baselines = ["baselines=[nar4rec]", "baseline_overrides={optim.epochs: 1, model.d_model: 16, model.layers: 1, "
                 "optim.batch_size: 128, eval.max_requests: 300}"]
    # the default recipe fits two rewards; the value-pair one teaches only if it fits the validation
    # clicks better beyond chance, and then the student gains tables
    summary = pipeline.main(args + baselines)
    assert summary["data"]["requests_read"] == 1500
    candidates = summary["reward"]["candidates"]
    assert [c["overrides"] for c in candidates] == [{}, {"model.value_pairs": 8}]
    assert sum(c["chosen"] for c in candidates) == 1 and all(c["request_nll"] > 0 for c in candidates)
    chosen = next(c for c in candidates if c["chosen"])
    assert not chosen["overrides"] or chosen["request_nll"] < candidates[0]["request_nll"]
    assert summary["reward"]["run_name"] == chosen["run_name"] and chosen["run_name"].endswith("-value_pairs8") == bool(chosen["overrides"])
    from gref.reranker_io import load_reranker

    assert load_reranker(summary["dpo"]["model_dir"]).cfg.value_pairs == (8 if chosen["overrides"] else 0)
    rows = summary["test"]
    assert {"logged exposure", "upstream order", "GReF (pre-train only)", GREF_ROW, TEACHER_ROW,
            "NAR4Rec", "oracle best list", "features-only best list"} <= set(rows)
    headroom = rows["features-only best list"]["oracle_clicks"] - rows["logged exposure"]["oracle_clicks"]
    for r in rows.values():  # the share of the headroom each row captures (undefined when there is none)
        share = (r["oracle_clicks"] - rows["logged exposure"]["oracle_clicks"]) / headroom if headroom > 0 else None
        assert r["headroom_share"] == pytest.approx(share, abs=1e-9) if share is not None else r["headroom_share"] != r["headroom_share"]
    assert summary["baselines"]["nar4rec"]["registered_version"] == 1  # the A/B test's default B arm
    for r in rows.values():
        assert r["oracle_clicks"] > 0
    assert summary["registry"]["aliases"] == {"challenger": 1, "champion": 1}
    assert (tmp_path / "pipe" / "summary.json").exists()
    assert (tmp_path / "pipe" / "report" / "expected_clicks.png").exists()
    # a second pipeline compares its model with the champion before promoting (on the same logs,
    # with the paper's lighter post-training: what it tests is the registry)
    summary2 = pipeline.main(args + [f"out={tmp_path / 'pipe2'}", f"logs={tmp_path / 'pipe' / 'sim' / 'logs'}",
                                     "dpo.objective=dpo", "dpo.optim.lr=2e-5", "baselines=[]"])
    assert summary2["registry"]["version"] == 2 and "champion v1" in summary2["test"]
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    assert int(client.get_model_version_by_alias("gref-reranker", "challenger").version) == 2
    parent = client.get_run(summary["mlflow_run_id"])
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 5  # pretrain, two rewards, post-train and the baseline nested under the pipeline run
    assert int(client.get_model_version_by_alias("gref-nar4rec", "champion").version) == 1


def test_baseline_job_on_a_train_worker_registers_and_evaluates(ray_cluster, prep_dir, sim_dir, tmp_path, mlflow_uri):
    from gref import tracking
    from jobs import baseline, evaluate

    out = baseline.main(["--data", str(prep_dir), "--kind", "nar4rec", f"eval.world={sim_dir / 'world'}",
                         f"run.storage={tmp_path / 'ray'}", f"tracking.uri={mlflow_uri}", "model.d_model=16",
                         "model.layers=1", "optim.epochs=1", "optim.batch_size=128", "eval.max_requests=300",
                         "scaling.num_workers=1", "scaling.cpus_per_worker=0.5"])
    assert out["registered_version"] == 1
    assert {"train_loss", "train_positive_fraction", "oracle_clicks", "diversity"} <= set(out["history"][0])
    tracking.setup(tracking.TrackingConfig(uri=mlflow_uri))
    served = tracking.load_reranker_uri("models:/gref-nar4rec@champion")
    assert served.cfg.kind == "nar4rec" and served.cfg.num_features == data_meta(prep_dir)["num_features"]
    # a row name with spaces, parentheses and "+" (not an MLflow key as it is)
    rows = evaluate.main(["--data", str(prep_dir), "--model", f"NAR4Rec (tiny, +1 epoch)={out['model_dir']}",
                          "--world", str(sim_dir / "world"), "--out", str(tmp_path / "eval"), f"uri={mlflow_uri}"])
    r = rows["NAR4Rec (tiny, +1 epoch)"]
    assert r["latency_ms_b1"] > 0 and r["latency_ms"] > 0 and 0 < r["diversity"] <= 1 and "val_nll" not in r
    assert r["oracle_clicks"] > 0 and 0 <= r["auc_exposure"] <= 1
    assert "| NAR4Rec (tiny, +1 epoch) |" in (tmp_path / "eval" / "report.md").read_text()


def test_failed_in_process_job_ends_failed_and_resumes_from_its_checkpoint(ray_cluster, prep_dir, sim_dir, tmp_path,
                                                                          mlflow_uri, capfd):
    from mlflow import MlflowClient

    from gref.train.runner import run_training

    cfg = pretrain_cfg(prep_dir, sim_dir, tmp_path, mlflow_uri, "scaling.num_workers=0", "optim.epochs=2",
                       "run.fail_once_at_epoch=0", "run.max_failures=0")
    leaked_before = set(Path(tempfile.gettempdir()).glob("gref-ckpt-*"))
    with pytest.raises(Exception, match="injected failure"):
        run_training("pretrain", cfg)
    run_id = (tmp_path / "ray" / cfg.run.name / "mlflow_run_id").read_text()
    client = MlflowClient(mlflow_uri)
    assert client.get_run(run_id).info.status == "FAILED"

    # review defect: in-process runs left a checkpoint directory in /tmp every epoch and could not
    # resume; the checkpoint now lives in the run's directory, and the same job re-run continues
    # after epoch 0 (so the injected failure does not fire again) in the same MLflow run
    assert (tmp_path / "ray" / cfg.run.name / "local_checkpoint" / "state.pt").exists()
    out = run_training("pretrain", cfg)
    assert "resumed from the checkpoint of epoch 0" in capfd.readouterr().out
    assert out["mlflow_run_id"] == run_id and client.get_run(run_id).info.status == "FINISHED"
    assert [h["epoch"] for h in out["history"]] == [0, 1]
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [0, 1]
    assert set(Path(tempfile.gettempdir()).glob("gref-ckpt-*")) == leaked_before


def test_post_training_never_exports_a_model_worse_than_its_start(ray_cluster, prep_dir, sim_dir, tmp_path, mlflow_uri):
    """Review defect: the best epoch was chosen among DPO epochs only. With a learning rate that
    wrecks the policy, the exported model is the initial one (history epoch -1)."""
    from gref.train.runner import run_training

    pre = run_training("pretrain", pretrain_cfg(prep_dir, sim_dir, tmp_path, mlflow_uri, "scaling.num_workers=0",
                                                "optim.epochs=1"))
    init = load_reranker(pre["model_dir"])
    cfg = load_config(DPOConfig, None, [
        f"data={prep_dir}", f"run.storage={tmp_path / 'ray'}", f"run.name=dpo-{uuid.uuid4().hex[:8]}",
        f"tracking.uri={mlflow_uri}", "objective=dpo", "optim.epochs=1", "optim.lr=3.0", "optim.grad_clip=0", "beta=5",
        "scaling.num_workers=0", f"eval.world={sim_dir / 'world'}", "register=false", *TINY])
    out = run_training("dpo", cfg, init=init)
    assert [h["epoch"] for h in out["history"]] == [-1, 0]
    assert out["history"][1]["oracle_clicks"] < out["history"][0]["oracle_clicks"]
    assert out["best"]["epoch"] == -1
    exported = load_reranker(out["model_dir"])
    for (name, p0), p1 in zip(init.state_dict().items(), exported.state_dict().values()):
        assert torch.equal(p0, p1), name


def test_selection_minimises_losses_and_refuses_a_metric_never_produced(ray_cluster, prep_dir, sim_dir, tmp_path,
                                                                        mlflow_uri):
    from gref.config import ConfigError
    from gref.train.runner import run_training

    cfg = pretrain_cfg(prep_dir, sim_dir, tmp_path, mlflow_uri, "scaling.num_workers=0", "optim.epochs=3",
                       "eval.metric=val_nll", "optim.lr=3e-2")
    out = run_training("pretrain", cfg)
    nll = [h["val_nll"] for h in out["history"]]
    assert out["best"]["val_nll"] == min(nll) and out["history"][-1]["best_val_nll"] == min(nll)
    bad = pretrain_cfg(prep_dir, sim_dir, tmp_path, mlflow_uri, "scaling.num_workers=0", "eval.metric=val_dpo_loss")
    with pytest.raises(ConfigError, match="val_dpo_loss"):
        run_training("pretrain", bad)
    assert not (tmp_path / "ray" / bad.run.name / "mlflow_run_id").exists()  # refused before any work


def test_rerunning_a_finished_job_trains_and_registers_nothing(ray_cluster, prep_dir, sim_dir, tmp_path, mlflow_uri):
    from mlflow import MlflowClient

    from jobs import baseline

    args = ["--data", str(prep_dir), "--kind", "dnn", f"run.storage={tmp_path / 'ray'}", "run.name=dnn-once",
            f"tracking.uri={mlflow_uri}", "optim.epochs=1", "model.hidden=[16]", "scaling.num_workers=0",
            "eval.max_requests=200"]
    first = baseline.main(args)
    again = baseline.main(args)
    assert again["registered_version"] == first["registered_version"] == 1
    client = MlflowClient(mlflow_uri)
    assert len(client.search_model_versions("name='gref-dnn'")) == 1
    assert len(client.search_runs([client.get_experiment_by_name("gref").experiment_id])) == 1


def test_a_terminated_driver_ends_its_mlflow_run_as_killed(ray_cluster, prep_dir, sim_dir, tmp_path, mlflow_uri):
    import os
    import signal
    import subprocess
    import sys
    import time

    from mlflow import MlflowClient

    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    name = f"pre-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen([sys.executable, "-m", "jobs.pretrain", "--data", str(prep_dir), f"run.name={name}",
                             f"run.storage={tmp_path / 'ray'}", f"tracking.uri={mlflow_uri}", "optim.epochs=50",
                             "scaling.num_workers=0", *TINY], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    id_file = tmp_path / "ray" / name / "mlflow_run_id"
    client = MlflowClient(mlflow_uri)
    deadline = time.time() + 120
    while time.time() < deadline and not (id_file.exists() and client.get_metric_history(id_file.read_text(), "train_loss")):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert client.get_run(id_file.read_text()).info.status == "KILLED"


