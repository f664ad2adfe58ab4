"""Cluster: the launcher and Serve configs pass Ray's own validation, and the job upload leaves data
and venvs out (no Ray started)."""

from __future__ import annotations

import copy
import subprocess
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMMAND_KEYS = ("setup_commands", "head_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")


def prepared(name: str) -> tuple[dict, dict]:
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((REPO / name).read_text())
    cfg = prepare_config(copy.deepcopy(raw))
    validate_config(cfg)
    return raw, cfg


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster.local.yaml"])
def test_cluster_config_passes_rays_validation(name):
    raw, _ = prepared(name)
    for key in COMMAND_KEYS:  # every shell command survives YAML (a stray ' #' would cut it short)
        for command in raw[key]:
            check = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True, check=False)
            assert check.returncode == 0, f"{name} {key}: {command!r}: {check.stderr}"
    commands = " ".join(c for key in COMMAND_KEYS for c in raw[key])
    for needed in ("torch==2.13.0", "ray[train,data,serve,tune]==2.60.0", "mlflow[auth]==3.17.2", "pip install",
                   "-e ~/gref", "mlflow server", "--port 5000", "MLFLOW_TRACKING_URI", "RAY_AUTH_MODE=token",
                   "--dashboard-host=0.0.0.0",
                   # review defect: MLflow listened on 0.0.0.0 without auth (anyone could move `champion`)
                   "--app-name basic-auth", "MLFLOW_AUTH_CONFIG_PATH=$HOME/gref/configs/mlflow_auth.ini",
                   "MLFLOW_AUTH_ADMIN_PASSWORD=$(cat ~/.gref/mlflow_password)", "MLFLOW_TRACKING_PASSWORD="):
        assert needed in commands, f"{name} lacks {needed}"
    mounts = str(raw["file_mounts"].values())
    assert "~/.ray/auth_token" in mounts and "~/.gref/mlflow_password" in mounts


def test_mlflow_auth_config_locks_out_everyone_but_the_admin():
    import configparser
    import importlib.util

    import mlflow

    # MLflow's permission table, loaded alone: the auth package needs Flask-WTF (mlflow[auth],
    # installed on the cluster, not in the laptop venv)
    path = Path(mlflow.__file__).parent / "server" / "auth" / "permissions.py"
    spec = importlib.util.spec_from_file_location("mlflow_auth_permissions", path)
    permissions = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(permissions)
    ini = configparser.ConfigParser()
    ini.read(REPO / "configs" / "mlflow_auth.ini")
    auth = ini["mlflow"]
    assert auth["admin_username"] == "gref" and "admin_password" not in auth  # the password never lives in git
    assert not permissions.get_permission(auth["default_permission"]).can_read  # a name MLflow knows, granting nothing
    assert auth["authorization_function"] == "mlflow.server.auth:authenticate_request_basic_auth"


def test_aws_cluster_has_a_cpu_head_and_autoscaling_gpu_workers():
    raw, cfg = prepared("cluster.yaml")
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]["resources"]
    assert head["CPU"] == 0 and head["gref_head"] == 1  # no tasks on the head; the Serve Router is pinned there
    worker = types["gpu_worker"]
    assert worker["node_config"]["InstanceType"].startswith(("g5", "g6", "p4", "p5"))
    assert worker["min_workers"] == 0 < worker["max_workers"] <= cfg["max_workers"]
    ports = {p["FromPort"] for p in raw["provider"]["security_group"]["IpPermissions"]}
    assert ports == {8265, 8000, 5000}  # dashboard + Jobs API, Serve, MLflow


def test_local_cluster_derives_its_node_type():
    _, cfg = prepared("cluster.local.yaml")
    (node_type,) = cfg["available_node_types"].values()
    assert node_type["max_workers"] == len(cfg["provider"]["worker_ips"]) == node_type["min_workers"]


def test_job_upload_leaves_data_venvs_and_git_out(tmp_path):
    """Package the checkout the way `ray job submit --working-dir .` does."""
    from ray._private.runtime_env.packaging import create_package

    target = tmp_path / "pkg.zip"
    create_package(str(REPO), target, include_gitignore=True)
    names = zipfile.ZipFile(target).namelist()
    assert "jobs/pipeline.py" in names and "platform/gref/model/reranker.py" in names
    assert "configs/pipeline.yaml" in names and "tune/laptop.yaml" in names
    for kept_out in (".venv/", "runs/", ".git/", "mlflow.db"):
        assert not any(n.startswith(kept_out) for n in names), kept_out
    assert target.stat().st_size < 5 * 2**20


@pytest.mark.parametrize("name", ["serve/config.yaml", "serve/config.cluster.yaml"])
def test_serve_configs_pass_serves_schema(name):
    from ray.serve.schema import ServeDeploySchema

    from gref.config import from_dict
    from serve.app import ServeConfig

    raw = yaml.safe_load((REPO / name).read_text())
    ServeDeploySchema.model_validate(raw)  # what `serve deploy` checks
    (app,) = raw["applications"]
    from_dict(ServeConfig, app["args"])  # the builder's args: unknown keys would fail here
    (router,) = [d for d in app["deployments"] if d["name"] == "Router"]
    assert router["num_replicas"] == 1 and set(router["user_config"]["weights"]) == set(app["args"]["arms"])
