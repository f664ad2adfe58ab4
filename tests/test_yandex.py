"""The real Yandex WSCD log (../shared/data/yandex-wscd) in the repo's workflow: a slice is
converted to the raw-log contract and run through jobs.pipeline (real Ray, real MLflow); the
report judges every row by the click-model estimate, with CIs, as there is no oracle."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from gref.data.batch import read_split
from jobs import convert_yandex

DATA = convert_yandex.DATA
pytestmark = pytest.mark.skipif(not (DATA / "trainSample").exists(), reason="../shared/data/yandex-wscd absent")
ROOT = Path(__file__).resolve().parents[1]


def test_converter_keeps_every_serp_and_click(tmp_path):
    summary = convert_yandex.main(["--out", str(tmp_path), "--max-serps", "300"])
    table = pq.read_table(tmp_path / "train.parquet")
    assert summary["train"]["serps"] == 300 and table.num_rows == 3000  # 10 results per SERP
    assert table.column("request_id").to_pylist()[:10] == [0] * 10
    assert table.column("position").to_pylist()[:10] == list(range(1, 11))
    # the file's first record: clicks on its 2nd, 1st and 4th results
    assert table.column("click").to_pylist()[:10] == [1, 1, 0, 1, 0, 0, 0, 0, 0, 0]
    assert summary["train"]["click_events"] == summary["train"]["clicks_not_shown"] + \
        summary["train"]["repeated_clicks"] + sum(table.column("click").to_pylist())
    test_ts = pq.read_table(tmp_path / "test.parquet").column("ts").to_pylist()
    assert min(test_ts) >= max(table.column("ts").to_pylist())  # the test file comes after


def test_malformed_line_fails_naming_file_and_line(tmp_path):
    bad = tmp_path / "bad"
    bad.write_text("98435_1\t1,2,3 : 2\n98435_1 no-tab-here : 1\n")
    with pytest.raises(SystemExit, match=r"bad:2 record 1"):
        convert_yandex.main(["--out", str(tmp_path / "out"), "--train", str(bad), "--test", str(bad)])


def test_pipeline_on_a_slice_reports_the_click_model_estimate(ray_cluster, tmp_path):
    from jobs import pipeline

    convert_yandex.main(["--out", str(tmp_path / "logs"), "--max-serps", "1000"])
    summary = pipeline.main([
        "--config", str(ROOT / "configs" / "yandex.yaml"), f"out={tmp_path / 'run'}", f"logs={tmp_path / 'logs'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", "baselines=[]",
        "pretrain.model.d_model=16", "pretrain.optim.epochs=1", "reward.optim.epochs=1", "dpo.optim.epochs=1",
        *[f"{stage}.scaling.num_workers=0" for stage in ("pretrain", "reward", "dpo")]])
    prep = json.loads((tmp_path / "run" / "prep" / "summary.json").read_text())
    assert prep["profile"]["all_candidates_shown"] == 1.0 and prep["profile"]["n"]["max"] == 10
    assert prep["split"]["how"] == "days" and all(v > 0 for v in prep["sequences"].values())
    rows = summary["test"]
    logged = rows["logged exposure"]
    for kind in ("pbm", "dbn", "pbm_features"):
        assert logged[f"est_lift_{kind}"] == 0.0
        for r in rows.values():
            assert r[f"est_clicks_{kind}_lo"] <= r[f"est_clicks_{kind}"] <= r[f"est_clicks_{kind}_hi"]
            assert r[f"est_lift_{kind}_lo"] <= r[f"est_lift_{kind}"] <= r[f"est_lift_{kind}_hi"]
    # the click models are fitted on the test split's own clicks (cross-fitted): their E[clicks]
    # of the logged order is close to the clicks logged on it
    clicks = read_split(tmp_path / "run" / "prep" / "sequences" / "test", ["click"]).column("click").to_pylist()
    logged_clicks = sum(map(sum, clicks)) / len(clicks)
    for kind in ("pbm", "dbn"):
        assert abs(logged[f"est_clicks_{kind}"] / logged_clicks - 1) < 0.1, (kind, logged_clicks)
    assert summary["registry"]["decision"] == {"promote": True, "why": "no champion yet"}
    for r in rows.values():  # promotion relies on the most pessimistic of the click models
        assert r["est_lift_min"] == min(r[f"est_lift_{k}"] for k in ("pbm", "dbn", "pbm_features"))
    assert (tmp_path / "run" / "report" / "expected_clicks.png").exists()
