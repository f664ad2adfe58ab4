"""Convert a Yandex WSCD click log (the click-model research format; PyClick's samples) to the
platform's raw-log contract (gref.data.yandex): one row per shown result, the production order =
the shown positions, the query as ``cat_query``, SERPs spread over synthetic days so that
configs/datasets/yandex.yaml's day split reproduces the files' own train / test split.

    python -m jobs.convert_yandex --out data/yandex/logs \
        [--train ../shared/data/yandex-wscd/trainSample] [--test ../shared/data/yandex-wscd/testSample] \
        [--max-serps N]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gref.cli import print_json
from gref.data.yandex import FormatError, convert

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "yandex-wscd"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m jobs.convert_yandex", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", default=str(DATA / "trainSample"), help="WSCD file for train + valid")
    p.add_argument("--test", default=str(DATA / "testSample"), help="WSCD file for test")
    p.add_argument("--out", required=True, help="output directory of raw-log Parquet")
    p.add_argument("--max-serps", type=int, default=0, help="first N SERPs of each file (0 = all)")
    p.add_argument("--train-days", type=int, default=5, help="synthetic days of the train file (the last: valid)")
    p.add_argument("--test-days", type=int, default=3, help="synthetic days of the test file")
    args = p.parse_args(argv)
    try:
        summary = convert({"train": (args.train, args.train_days), "test": (args.test, args.test_days)},
                          args.out, args.max_serps)
    except (OSError, FormatError) as err:
        raise SystemExit(f"convert_yandex: {err}") from err
    print_json(summary)
    return summary


if __name__ == "__main__":
    main()
