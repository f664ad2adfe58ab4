"""Shared fixtures: one real local Ray cluster per pytest session, a small simulated world and
its prepared data (built once, through the real jobs). tests/unit needs no Ray (``make test-unit``
runs it alone); every test of tests/integration is marked ``integration`` (a Ray cluster: this
session's or its own, Serve, Train, Tune, a simulated multi-node cluster)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # RAY-NOTES: token auth is on by default in 2.60

# A small world: fast to simulate and train on, same code paths as the default.
SMALL_WORLD = ["n_users=400", "n_items=2000", "n_series=60", "n_creators=300", "days=6",
               "corrupt_fraction=0.02"]


RAY_FIXTURES = {"ray_cluster", "prep_dir", "ray_head"}  # fixtures that start (or need) a Ray cluster


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)
        elif ray := RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            raise pytest.UsageError(f"{item.nodeid} needs a Ray cluster ({', '.join(sorted(ray))}): it belongs in "
                                    "tests/integration")


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    from gref.ray_utils import init_ray

    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths are length-limited
    init_ray(num_cpus=2, object_store_memory=10**9, include_dashboard=False, temp_dir=temp)  # as the jobs start it
    yield ray


@pytest.fixture(scope="session")
def sim_dir(tmp_path_factory) -> Path:
    from jobs import simulate

    out = tmp_path_factory.mktemp("sim")
    simulate.main(["--requests", "3000", "--seed", "7", "--out", str(out), "--chunk", "1000", *SMALL_WORLD])
    return out


@pytest.fixture(scope="session")
def prep_dir(ray_cluster, sim_dir, tmp_path_factory) -> Path:
    from gref.data import prepare
    from gref.data.schema import DatasetConfig

    out = tmp_path_factory.mktemp("prep")
    prepare.run(str(sim_dir / "logs"), str(out), DatasetConfig(valid_days=1, test_days=1))
    return out
