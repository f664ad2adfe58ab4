"""Raw request logs -> training data, on Ray Data (gref.data.prepare).

    python -m jobs.prepare --logs DIR --out OUT [--config dataset.yaml] [key=value ...]

Writes OUT/sequences/{train,valid,test}/, OUT/pairs/{train,valid}/, OUT/quarantine/ (rejected
requests with a reason), OUT/features.json and OUT/summary.json (counts, split, data profile).
"""

from __future__ import annotations

import sys

from gref.cli import log, parser, print_json, resolve_config
from gref.config import ConfigError
from gref.data.prepare import run
from gref.data.schema import DatasetConfig, SchemaError


def main(argv: list[str] | None = None) -> dict:
    p = parser("jobs.prepare", __doc__)
    p.add_argument("--logs", required=True, help="directory (or file) of raw-log Parquet")
    p.add_argument("--out", required=True, help="output directory")
    args = p.parse_args(argv)
    cfg = resolve_config(DatasetConfig, args)
    try:
        summary = run(args.logs, args.out, cfg)
    except SchemaError as err:
        sys.exit(f"schema error: {err}")
    except ConfigError as err:
        sys.exit(f"config error: {err}")
    log("prepare", "done")
    print_json({k: summary[k] for k in ("requests_read", "sequences", "pairs", "quarantined",
                                        "quarantined_by_reason", "seconds")})
    return summary


if __name__ == "__main__":
    main()
