"""Ray Train jobs on tiny data: in-process loops, resume after a failure, 2-worker DDP,
MLflow contents, and a small end-to-end pipeline -- real Ray, real MLflow (sqlite)."""

from __future__ import annotations

import json
import uuid

import pytest
import torch

from gref.config import load_config
from gref.data.batch import collate, read_split
from gref.model.decoding import decode
from gref.model.io import load_reranker
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
    out = run_training("pretrain", cfg, prep_dir / "sequences" / "train")
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


def test_dpo_with_vanishing_beta_stays_at_the_reference(ray_cluster, prep_dir, sim_dir, tmp_path, mlflow_uri):
    from gref.model.config import ModelConfig
    from gref.train.runner import run_training
    from gref.train.steps import build_model

    meta = data_meta(prep_dir)
    torch.manual_seed(0)
    init = build_model(ModelConfig(d_model=32, enc_layers=1, dec_layers=1, omtp_heads=2), meta)
    cfg = load_config(DPOConfig, None, [
        f"data={prep_dir}", f"run.storage={tmp_path / 'ray'}", f"run.name=dpo-{uuid.uuid4().hex[:8]}",
        f"tracking.uri={mlflow_uri}", "beta=1e-12", "optim.epochs=1", "scaling.num_workers=0",
        "register=false", *TINY])
    out = run_training("dpo", cfg, prep_dir / "pairs" / "train", init=init)
    after = load_reranker(out["model_dir"])
    for (name, p0), p1 in zip(init.state_dict().items(), after.state_dict().values()):
        assert torch.allclose(p0, p1, atol=1e-6), name
    assert out["history"][0]["train_loss"] == pytest.approx(0.693147, abs=1e-4)  # log 2


def test_dpo_moves_towards_winners(ray_cluster, prep_dir, sim_dir, tmp_path, mlflow_uri):
    from gref.train.runner import run_training

    pre = run_training("pretrain", pretrain_cfg(prep_dir, sim_dir, tmp_path, mlflow_uri,
                                                "scaling.num_workers=0", "optim.epochs=1"),
                       prep_dir / "sequences" / "train")
    cfg = load_config(DPOConfig, None, [
        f"data={prep_dir}", f"run.storage={tmp_path / 'ray'}", f"run.name=dpo-{uuid.uuid4().hex[:8]}",
        f"tracking.uri={mlflow_uri}", "optim.epochs=2", "optim.lr=1e-3", "scaling.num_workers=0",
        f"eval.world={sim_dir / 'world'}", *TINY])
    out = run_training("dpo", cfg, prep_dir / "pairs" / "train", init=load_reranker(pre["model_dir"]))
    h = out["history"]
    assert h[-1]["train_accuracy"] > 0.5 and h[-1]["train_reward_margin"] > 0
    assert h[-1]["val_dpo_loss"] < 0.693
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
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"curves.png", "history.json", "reranker", "data"} <= artifacts
    tracking.setup(tracking.TrackingConfig(uri=mlflow_uri))
    model = tracking.load_reranker_uri(f"models:/gref-reranker/{out['registered_version']}")
    assert isinstance(model, torch.nn.Module) and model.k == 2


def test_resume_after_worker_failure(ray_cluster, prep_dir, sim_dir, tmp_path, mlflow_uri, capfd):
    """A worker dies after epoch 1's checkpoint; Ray restarts it and training resumes at
    epoch 2 without redoing finished epochs."""
    from gref.train.runner import run_training

    cfg = pretrain_cfg(prep_dir, sim_dir, tmp_path, mlflow_uri, "scaling.num_workers=1", "optim.epochs=3",
                       "run.fail_once_at_epoch=1", "run.max_failures=1")
    out = run_training("pretrain", cfg, prep_dir / "sequences" / "train")
    assert [h["epoch"] for h in out["history"]] == [0, 1, 2]
    assert "resumed from the checkpoint of epoch 1" in capfd.readouterr().out
    from mlflow import MlflowClient

    steps = [m.step for m in MlflowClient(mlflow_uri).get_metric_history(out["mlflow_run_id"], "train_loss")]
    assert steps == [0, 1, 2]  # each epoch logged once: nothing redone


def test_two_worker_ddp(ray_cluster, prep_dir, sim_dir, tmp_path, mlflow_uri):
    from gref.train.runner import run_training

    cfg = pretrain_cfg(prep_dir, sim_dir, tmp_path, mlflow_uri, "scaling.num_workers=2", "optim.epochs=1")
    out = run_training("pretrain", cfg, prep_dir / "sequences" / "train")
    n_train = json.loads((prep_dir / "summary.json").read_text())["sequences"]["train"]
    h = out["history"][0]
    assert 0.4 * n_train <= h["train_samples"] <= 0.6 * n_train  # rank 0 trained on its half
    assert h["val_nll"] > 0 and h["oracle_clicks"] > 0


def test_pipeline_end_to_end(ray_cluster, tmp_path, mlflow_uri):
    from jobs import pipeline

    args = [f"out={tmp_path / 'pipe'}", "requests=1500", f"tracking.uri={mlflow_uri}",
            "world.n_users=300", "world.n_items=1500", "world.n_series=50", "world.n_creators=200",
            "world.days=5", "dataset.test_days=1", "dataset.valid_days=1",
            *[f"{stage}.{o}" for stage in ("pretrain", "dpo") for o in TINY],
            "pretrain.optim.epochs=1", "dpo.optim.epochs=1", "pretrain.scaling.num_workers=0",
            "dpo.scaling.num_workers=0"]
    baselines = ["baselines=[nar4rec]", "baseline_overrides={optim.epochs: 1, model.d_model: 16, model.layers: 1, "
                 "optim.batch_size: 128, eval.max_requests: 300}"]
    summary = pipeline.main(args + baselines)
    assert summary["data"]["requests_read"] == 1500
    rows = summary["test"]
    assert {"logged exposure", "upstream order", "GReF (pre-train only)", "GReF (pre-train + DPO)", "NAR4Rec"} <= set(rows)
    assert summary["baselines"]["nar4rec"]["registered_version"] == 1  # the A/B test's default B arm
    for r in rows.values():
        assert r["oracle_clicks"] > 0
    assert summary["registry"]["aliases"] == {"challenger": 1, "champion": 1}
    assert (tmp_path / "pipe" / "summary.json").exists()
    assert (tmp_path / "pipe" / "report" / "expected_clicks.png").exists()
    # a second pipeline compares its model with the champion before promoting
    summary2 = pipeline.main(args + [f"out={tmp_path / 'pipe2'}"])
    assert summary2["registry"]["version"] == 2 and "champion v1" in summary2["test"]
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    assert int(client.get_model_version_by_alias("gref-reranker", "challenger").version) == 2
    parent = client.get_run(summary["mlflow_run_id"])
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 3  # pretrain, dpo and the baseline nested under the pipeline run
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


def test_failed_job_ends_its_mlflow_run_as_failed(ray_cluster, prep_dir, sim_dir, tmp_path, mlflow_uri):
    from mlflow import MlflowClient

    from gref.train.runner import run_training

    cfg = pretrain_cfg(prep_dir, sim_dir, tmp_path, mlflow_uri, "scaling.num_workers=0", "optim.epochs=2",
                       "run.fail_once_at_epoch=0", "run.max_failures=0")
    with pytest.raises(Exception, match="injected failure"):
        run_training("pretrain", cfg, prep_dir / "sequences" / "train")
    run_id = (tmp_path / "ray" / cfg.run.name / "mlflow_run_id").read_text()
    assert MlflowClient(mlflow_uri).get_run(run_id).info.status == "FAILED"
