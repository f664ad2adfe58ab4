"""Cluster: real jobs (simulate, the Ray Data prepare, pretrain) go through the Jobs API of a separate
local Ray head."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers import free_ports

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def ray_head():
    """A second, separate Ray head (own temp dir and ports, token auth off as RAY-NOTES says),
    stopped by signalling its `ray start --block` process -- never `ray stop`, which would kill
    every Ray on the machine."""
    (gcs, dash, agent, agent_grpc, metrics, env_agent, node_mgr, obj_mgr, client) = free_ports(9)
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={gcs}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={env_agent}",
         f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}",
         f"--ray-client-server-port={client}", "--num-cpus=2", "--object-store-memory=500000000",
         f"--temp-dir={temp}", "--disable-usage-stats"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    from ray.job_submission import JobSubmissionClient

    deadline = time.time() + 120
    while True:
        try:
            client_ = JobSubmissionClient(address)
            break
        except Exception:  # noqa: BLE001 -- any failure here means "not up yet"
            if head.poll() is not None or time.time() > deadline:
                head.kill()
                raise RuntimeError(f"Ray head did not come up:\n{head.stdout.read()}") from None
            time.sleep(2)
    yield client_
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(10)
    except subprocess.TimeoutExpired:  # the whole session of that head: its GCS, raylet and workers
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(10)


def test_jobs_submitted_through_the_jobs_api(ray_head, tmp_path):
    from mlflow import MlflowClient
    from ray.job_submission import JobStatus

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tiny = ["model.d_model=32", "model.enc_layers=1", "model.dec_layers=1", "model.omtp_heads=2",
            "optim.batch_size=128", "optim.epochs=1", "eval.max_requests=300", "scaling.num_workers=0"]
    out = tmp_path / "job"
    entrypoint = " && ".join([  # a job of three entrypoints: the Ray Data prepare runs on the cluster
        # the whole pipeline runs end to end in test_train; this test is about job submission
        f"python -m jobs.simulate --requests 800 --out {out / 'sim'} n_users=300 n_items=1500 n_series=50 "
        + "n_creators=200 days=5",
        f"python -m jobs.prepare --logs {out / 'sim/logs'} --out {out / 'prep'} valid_days=1 test_days=1",
        " ".join(["python -m jobs.pretrain", f"--data {out / 'prep'}", f"run.storage={out / 'runs'}", *tiny])])
    deadline = time.time() + 60
    while True:  # a freshly started head's job agent can take a while on a loaded machine
        try:
            job = ray_head.submit_job(entrypoint=entrypoint, runtime_env={
                "working_dir": str(REPO), "env_vars": {"MLFLOW_TRACKING_URI": uri}})  # the tracking URI travels
            break
        except RuntimeError as err:
            if "No available agent" not in str(err) or time.time() > deadline:
                raise
            time.sleep(2)
    deadline = time.time() + 480
    while not (status := ray_head.get_job_status(job)).is_terminal():
        assert time.time() < deadline, f"job still {status} after 8 min:\n{ray_head.get_job_logs(job)[-3000:]}"
        time.sleep(3)
    logs = ray_head.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
    assert "sequences" in logs and '"mlflow_run_id"' in logs  # prepare's and pretrain's reports

    client = MlflowClient(uri)  # the tracking URI reached the job's processes
    (exp,) = [e for e in client.search_experiments() if e.name == "gref"]
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["stage"] == "pretrain"
    assert {i.tags[0].value for i in run.inputs.dataset_inputs} == {"training", "validation"}
    assert (out / "runs").is_dir()


