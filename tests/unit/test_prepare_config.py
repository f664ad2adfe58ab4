"""The preparation's failures that come before any Ray work: a missing column, a slice too small."""

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest


ROOT = Path(__file__).resolve().parents[2]


def run_prepare(args):
    return subprocess.run([sys.executable, "-m", "jobs.prepare", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_missing_column_fails_fast_naming_it(tmp_path, sim_dir):
    table = pq.read_table(next((sim_dir / "logs").glob("*.parquet"))).drop_columns(["upstream_rank"])
    (tmp_path / "logs").mkdir()
    pq.write_table(table, tmp_path / "logs" / "part.parquet")
    proc = run_prepare(["--logs", str(tmp_path / "logs"), "--out", str(tmp_path / "out")])
    assert proc.returncode != 0
    assert "upstream_rank" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_slice_below_one_mb_is_a_config_error(tmp_path, sim_dir):
    from jobs import prepare

    with pytest.raises(SystemExit, match="config error: slice_mb must be >= 1, got 0"):
        prepare.main(["--logs", str(sim_dir / "logs"), "--out", str(tmp_path / "out"), "slice_mb=0"])
    assert not (tmp_path / "out").exists()


