"""The Yandex WSCD converter (no Ray): every SERP and click kept, a malformed line named by file and line."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from jobs import convert_yandex


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


