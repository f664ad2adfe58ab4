"""The platform on a multi-node Ray cluster simulated on this machine (issue 37): benchmarks.multinode
run as a separate process (its clusters are Ray instances of their own, apart from the session's),
each scenario's report checked: Ray Data's tasks spread and the same output as the one-process reference (tested equal to the job on one node); two
Train workers on two nodes, one node removed mid-run, the run resumed from its checkpoint with each
epoch logged once; Serve replicas on two nodes, one removed under load with nothing failed, lost or
doubled in the PostgreSQL store; the fake autoscaler starting a GPU worker for a GPU task and
releasing it once idle. (The continuous loop's round on the cluster: the benchmark's ``loop``
scenario, benchmarks/results/multinode-cpu.json.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("multinode") / "multinode.json"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    run = subprocess.run([sys.executable, "-m", "benchmarks.multinode", "--scenarios", "prepare,train,serve,autoscale",
                          "--requests", "1500", "--serve-seconds", "24", "--prepare-reference", "polars",
                          "--out", str(out)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=480, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads(out.read_text())


def test_prepare_spreads_its_tasks_and_writes_what_one_process_writes(report):
    r = report["prepare"]
    assert len(r["tasks_per_node"]) >= 2, r["tasks_per_node"]
    assert r["counts_equal"] and all(r["rows_equal"].values()), r


def test_training_resumes_on_the_remaining_nodes_after_one_is_removed(report):
    r = report["train"]
    assert len(set(r["workers_before"])) == 2  # SPREAD: one worker per node
    assert r["removed_node"] in r["workers_before"] and r["removed_node"] != "head"
    assert r["workers_after"] and r["removed_node"] not in r["workers_after"]
    assert r["resumed_from_checkpoint_of"], "the restarted group did not resume from a checkpoint"
    assert r["epochs_lost"] < r["epochs"]  # not started over
    assert r["history_epochs"] == list(range(r["epochs"]))
    # each epoch logged once: MLflow hears of an epoch when the controller registers it, not when rank 0 ends it
    assert r["mlflow_train_loss_steps"] == list(range(r["epochs"])) and r["mlflow_steps_doubled"] == 0


def test_serving_loses_no_request_and_no_feedback_when_a_replica_node_goes(report):
    r = report["serve"]
    assert len(r["reranker_replicas_per_node_before"]) == 2
    assert r["removed_node"] not in r["reranker_replicas_per_node_after"]
    assert sum(r["reranker_replicas_per_node_after"].values()) == 2  # replaced on the remaining nodes
    assert r["answered"]["rerank"] > 0 and r["failed"] == {"rerank": 0, "feedback": 0}
    assert r["lists_lost"] == r["lists_doubled"] == r["feedback_lost"] == r["feedback_doubled"] == 0
    assert r["feedback_rows"] == r["feedback_answered"]


def test_the_autoscaler_starts_a_gpu_worker_and_releases_it(report):
    r = report["autoscale"]
    assert r["workers_before"] == 0 and r["task_ran_on_gpu_worker"]
    assert r["started_node_resources"]["GPU"] == 1
    assert r["seconds_to_release_after_the_task"] is not None
