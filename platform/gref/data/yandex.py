"""A Yandex WSCD click log (the click-model research format; PyClick's samples) in the platform's
raw-log contract (``python -m jobs.convert_yandex`` runs it).

Input: one text line per query, holding SERP records separated by ';':
    <query>_<region> TAB <url_1>,...,<url_10> : <clicked_url> , <clicked_url> ...
Output: Parquet, one row per shown result: request_id (one SERP), user_id (0: the log has no
users), ts, item_id (the url), upstream_rank = position (the production order: every result is
shown, m = n), click, cat_query (the query with its region).

The log has no timestamps. The converter spreads each file's SERPs evenly over synthetic
calendar days in file order -- the train file over ``--train-days``, the test file over the
``--test-days`` after them -- so that configs/datasets/yandex.yaml's day split (the last train
day = validation, the test file's days = test) reproduces the files' own split. Clicks on urls
not among the shown ten are dropped (counted); repeated clicks on a url count once.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gref.cli import log

DAY_MS = 86_400_000
START_MS = 1_577_836_800_000  # 2020-01-01 00:00 UTC: any fixed origin; the log has none


class FormatError(ValueError):
    """A line that does not follow the WSCD format (names the file, line and record)."""


def parse_serps(path: Path, limit: int = 0) -> tuple[list[tuple[str, list[int], set[int]]], dict[str, int]]:
    """-> ([(query, shown urls, clicked urls among them)], counts)."""
    serps, counts = [], {"click_events": 0, "clicks_not_shown": 0, "repeated_clicks": 0}
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            for rec_no, record in enumerate(line.strip().split(";"), 1):
                record = record.strip()
                if not record:
                    continue
                try:
                    head, _, clicked = record.partition(":")
                    query, urls = head.split("\t")
                    shown = [int(u) for u in urls.split(",")]
                    clicks = [int(c) for c in clicked.split(",") if c.strip()]
                except ValueError as err:
                    raise FormatError(f"{path}:{line_no} record {rec_no}: {err} ({record[:80]!r})") from err
                counts["click_events"] += len(clicks)
                counts["clicks_not_shown"] += sum(c not in shown for c in clicks)
                inside = {c for c in clicks if c in shown}
                counts["repeated_clicks"] += sum(c in shown for c in clicks) - len(inside)
                serps.append((query.strip(), shown, inside))
                if limit and len(serps) >= limit:
                    return serps, counts
    return serps, counts


def to_table(serps, first_request: int, start_ms: int, days: int) -> pa.Table:
    """Long-format rows of the SERPs, their ts spread evenly over ``days`` from ``start_ms``."""
    rows = {k: [] for k in ("request_id", "ts", "item_id", "upstream_rank", "position", "click", "cat_query")}
    step = days * DAY_MS / max(len(serps), 1)
    for i, (query, shown, clicked) in enumerate(serps):
        for pos, url in enumerate(shown, 1):
            rows["request_id"].append(first_request + i)
            rows["ts"].append(start_ms + int(i * step))
            rows["item_id"].append(url)
            rows["upstream_rank"].append(pos)
            rows["position"].append(pos)
            rows["click"].append(int(url in clicked))
            rows["cat_query"].append(query)
    n = len(rows["request_id"])
    return pa.table({"request_id": pa.array(rows["request_id"], pa.int64()),
                     "user_id": pa.array(np.zeros(n, dtype=np.int64)),
                     "ts": pa.array(rows["ts"], pa.int64()), "item_id": pa.array(rows["item_id"], pa.int64()),
                     "upstream_rank": pa.array(rows["upstream_rank"], pa.int32()),
                     "position": pa.array(rows["position"], pa.int32()),
                     "click": pa.array(rows["click"], pa.int8()), "cat_query": pa.array(rows["cat_query"])})


def convert(files: dict[str, tuple[str | Path, int]], out: str | Path, max_serps: int = 0) -> dict:
    """Write ``out``/<name>.parquet for each {name: (WSCD file, synthetic days)} in order (train
    first: its days come before the test file's) and ``out``/conversion.json; -> the counts per file.
    A missing file or a malformed line raises (OSError / FormatError)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    first, start = 0, START_MS
    for name, (path, days) in files.items():
        serps, counts = parse_serps(Path(path), max_serps)
        table = to_table(serps, first, start, days)
        pq.write_table(table, out / f"{name}.parquet")
        summary[name] = {"serps": len(serps), "rows": table.num_rows,
                         "serps_with_click": sum(bool(c) for _, _, c in serps),
                         "queries": len({q for q, _, _ in serps}), **counts}
        log("convert_yandex", f"{name}: {len(serps):,} SERPs from {path} -> {out / f'{name}.parquet'}")
        first, start = first + len(serps), start + days * DAY_MS
    (out / "conversion.json").write_text(json.dumps(summary, indent=2))
    return summary
