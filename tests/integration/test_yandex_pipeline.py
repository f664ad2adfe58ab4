"""The real Yandex WSCD log (../shared/data/yandex-wscd) in the repo's workflow: a slice is
converted to the raw-log contract and run through jobs.pipeline (real Ray, real MLflow); the
report judges every row by the click-model estimate, with CIs, as there is no oracle."""

from __future__ import annotations

import json
from pathlib import Path


from gref.data.batch import read_split
from jobs import convert_yandex

ROOT = Path(__file__).resolve().parents[2]


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
