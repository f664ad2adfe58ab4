"""Real log shapes (issue 14) as small fixtures: each trains, or stops in prepare with one line.

- a news-like log: lists longer than the model's default length (n up to 40 > 32);
- a hotel-like log over three calendar days: the day split has no room, quantiles take over;
- a web-search-like log: every candidate shown (m = n), string ids, ts in seconds, clicks only,
  ids as the only features (tests/integration/test_yandex_pipeline.py trains on a real one).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gref.config import load_config
from gref.train.config import PretrainConfig

DAY_MS = 86_400_000
TINY = ["model.d_model=16", "model.enc_layers=1", "model.dec_layers=1", "model.omtp_heads=2",
        "optim.batch_size=64", "optim.epochs=1", "eval.max_requests=100", "scaling.num_workers=0"]


def raw_log(requests: int, m: int, n_max: int, days: float, seed: int = 0, string_ids: bool = False,
            ts_seconds: bool = False, vocab: int = 500) -> pa.Table:
    """Long-format rows of the raw-log contract: ``requests`` requests of ``m`` candidates, the
    first 1..n_max in upstream order shown, clicks falling with the position, ts over ``days``."""
    rng = np.random.default_rng(seed)
    rows = {k: [] for k in ("request_id", "user_id", "ts", "item_id", "upstream_rank", "position",
                            "click", "cat_query")}
    start = 19_676 * DAY_MS  # 2023-11-15 00:00 UTC
    for r in range(requests):
        n = int(rng.integers(max(1, n_max // 2), n_max + 1))
        items = rng.choice(vocab, size=m, replace=False)
        ts = start + int(r / requests * days * DAY_MS)
        query = int(rng.integers(20))
        for k in range(m):
            shown = k < n
            rows["request_id"].append(f"req-{r}" if string_ids else r)
            rows["user_id"].append(f"u{r % 37}" if string_ids else r % 37)
            rows["ts"].append(ts // 1000 if ts_seconds else ts)
            rows["item_id"].append(f"doc{items[k]}" if string_ids else int(items[k]))
            rows["upstream_rank"].append(k + 1)
            rows["position"].append(k + 1 if shown else None)
            rows["click"].append(int(rng.random() < 0.4 / (k + 1)) if shown else None)
            rows["cat_query"].append(f"q{query}")
    return pa.table({**rows, "position": pa.array(rows["position"], pa.int32()),
                     "click": pa.array(rows["click"], pa.int8())})


def write_logs(tmp_path, table: pa.Table):
    logs = tmp_path / "logs"
    logs.mkdir()
    pq.write_table(table, logs / "part.parquet")
    return logs


def pretrain(prep, tmp_path):
    from gref.train.runner import run_training

    cfg = load_config(PretrainConfig, None, [f"data={prep}", f"run.storage={tmp_path / 'ray'}",
                                             f"run.name=shape-{uuid.uuid4().hex[:8]}",
                                             f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", *TINY])
    return run_training("pretrain", cfg)


def test_lists_longer_than_the_default_length_train(ray_cluster, tmp_path):
    from gref.reranker_io import load_reranker
    from jobs import prepare

    logs = write_logs(tmp_path, raw_log(300, m=40, n_max=40, days=10))
    summary = prepare.main(["--logs", str(logs), "--out", str(tmp_path / "prep")])
    assert summary["profile"]["n"]["max"] == 40 and summary["profile"]["m"]["max"] == 40
    out = pretrain(tmp_path / "prep", tmp_path)
    assert load_reranker(out["model_dir"]).cfg.max_length == 40  # grown from the default 32


def test_few_calendar_days_split_by_time_quantiles(ray_cluster, tmp_path):
    from jobs import prepare

    logs = write_logs(tmp_path, raw_log(400, m=8, n_max=5, days=2.5))  # 3 calendar days
    with pytest.raises(SystemExit, match="the train split is empty.*split=quantile"):
        prepare.main(["--logs", str(logs), "--out", str(tmp_path / "days"), "split=days", "test_days=2"])
    assert not (tmp_path / "days" / "_staging").exists()  # the staged sequences go with the failed job
    summary = prepare.main(["--logs", str(logs), "--out", str(tmp_path / "prep"), "test_days=2"])
    assert summary["split"]["how"] == "quantile" and "calendar day" in summary["split"]["note"]
    counts = summary["sequences"]
    assert counts == {"train": 280, "valid": 40, "test": 80}  # 70 / 10 / 20 % by time


def test_every_candidate_shown_string_ids_seconds_and_id_features(ray_cluster, tmp_path):
    from jobs import prepare

    logs = write_logs(tmp_path, raw_log(300, m=10, n_max=10, days=12, string_ids=True, ts_seconds=True,
                                        vocab=3000))
    table = pq.read_table(logs / "part.parquet")
    table = table.filter(pa.compute.is_valid(table.column("position")))  # m = n: only shown rows
    pq.write_table(table, logs / "part.parquet")
    summary = prepare.main(["--logs", str(logs), "--out", str(tmp_path / "prep"),
                            "item_id_feature=true", "min_category_count=2"])
    assert summary["split"]["ts_unit"] == "s" and summary["split"]["how"] == "days"
    assert summary["profile"]["all_candidates_shown"] == 1.0
    spec = json.loads((tmp_path / "prep" / "features.json").read_text())
    assert "cat_item_id" in spec["cat_cols"]
    # 3000 ids, ~1 sighting each: most are rarer than min_category_count and share the OOV row
    assert summary["features"]["cat_sizes"][spec["cat_cols"].index("cat_item_id")] < 1500
    # that such a log trains end to end is tests/integration/test_yandex_pipeline.py (a real m = n log, id-only features)


def news_log(requests: int, seed: int = 0) -> pa.Table:
    """A news-like log (issue 33): every candidate shown, lists of 2..120 (median ~24), topics."""
    rng = np.random.default_rng(seed)
    parts = []
    for r in range(requests):
        n = int(np.clip(rng.lognormal(np.log(24), 0.8), 2, 120))
        parts.append(pa.table({
            "request_id": np.full(n, r), "user_id": np.full(n, r % 50), "ts": np.full(n, 19_676 * DAY_MS + r * 3_600_000),
            "item_id": rng.choice(3000, size=n, replace=False), "upstream_rank": np.arange(1, n + 1, dtype=np.int32),
            "position": pa.array(np.arange(1, n + 1, dtype=np.int32)),
            "click": pa.array((rng.random(n) < 0.3 / np.sqrt(np.arange(1, n + 1))).astype(np.int8)),
            "cat_topic": rng.integers(0, 12, size=n), "num_popularity": rng.normal(size=n)}))
    return pa.concat_tables(parts)


def hotel_log(requests: int, seed: int = 0) -> pa.Table:
    """A hotel-search-like log (issue 33): m = n = 24, a third of the searches in random order
    (the ``randomized`` bucket), over three days."""
    table = raw_log(requests, m=24, n_max=24, days=2.5, seed=seed)
    rng = np.random.default_rng(seed)
    bucket = np.repeat(rng.random(requests) < 0.3, 24).astype(np.int8)
    return table.append_column("randomized", pa.array(bucket)).append_column(
        "num_price", pa.array(rng.lognormal(4.5, 0.5, size=table.num_rows)))


@pytest.mark.parametrize("shape", ["news", "hotel"])
def test_the_default_pipeline_trains_on_real_shapes(ray_cluster, tmp_path, shape):
    """prepare -> pretrain -> the default reward (list click model + list context) -> distillation
    -> evaluate -> register, on each shape: finite losses, a registered model, a report."""
    from jobs import pipeline

    logs = write_logs(tmp_path, news_log(260) if shape == "news" else hotel_log(209))
    tiny = [f"{stage}.{o}" for stage in ("pretrain", "reward", "dpo") for o in
            ("optim.epochs=1", "optim.batch_size=64", "scaling.num_workers=0", "eval.max_requests=60")]
    summary = pipeline.main(["--config", "configs/pipeline.yaml", f"out={tmp_path / 'run'}", f"logs={logs}",
                             "baselines=[]", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                             "pretrain.model.d_model=16", "pretrain.model.enc_layers=1", "pretrain.model.dec_layers=1",
                             *tiny])
    rows = summary["test"]
    for row in ("GReF (pre-train only)", "GReF (pre-train + post-train)"):
        assert np.isfinite(rows[row]["auc_click"]) and np.isfinite(rows[row]["est_clicks_pbm"]), row
    for stage in ("pretrain", "reward", "dpo"):
        assert all(np.isfinite(v) for e in json.loads(
            (Path(summary[stage]["model_dir"]).parent / "history.json").read_text())
            for k, v in e.items() if k.startswith("train_")), stage
    assert summary["registry"]["version"] >= 1
