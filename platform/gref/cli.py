"""Shared command-line conventions of the jobs: ``--config file.yaml`` plus ``key=value`` overrides."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TypeVar

from gref.config import ConfigError, load_config

T = TypeVar("T")


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m {prog}", description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="YAML config file (its keys override the defaults)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides applied after the file, e.g. model.d_model=64")
    return p


def resolve_config(cls: type[T], args: argparse.Namespace) -> T:
    """Build the job's config or exit(2) with the config error's message."""
    try:
        return load_config(cls, args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as err:
        sys.exit(f"config error: {err}")


def log(job: str, message: str) -> None:
    print(f"[{job} {time.strftime('%H:%M:%S')}] {message}", flush=True)


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False, default=str), flush=True)
