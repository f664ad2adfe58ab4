"""The local Ray the jobs start keeps token authentication (it listens on every interface)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path


SCRIPT = """
import os, sys
sys.path.insert(0, {platform!r})
from gref.ray_utils import init_ray
import ray
init_ray(num_cpus=1, include_dashboard=False, temp_dir={temp!r})
print("MODE", os.environ.get("RAY_AUTH_MODE"))
print("ADDRESS", ray.get_runtime_context().gcs_address, flush=True)
@ray.remote
def one():
    return 1
assert ray.get(one.remote()) == 1
"""


def test_the_jobs_local_cluster_requires_its_token(tmp_path):
    """Review defect: the jobs turned auth off while the GCS listened on all interfaces. Started as a
    job starts it (no RAY_AUTH_MODE set), the cluster runs with token auth and works unattended."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    env["HOME"] = str(tmp_path)  # a fresh ~/.ray/auth_token, written by ray.init
    temp = tempfile.mkdtemp(prefix="ra", dir="/tmp")
    platform = str(Path(__file__).resolve().parents[2] / "platform")
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(platform=platform, temp=temp)], env=env,
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "MODE token" in out.stdout
    assert (tmp_path / ".ray" / "auth_token").exists()


