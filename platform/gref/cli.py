"""Shared command-line conventions of the jobs: ``--config file.yaml`` plus ``key=value`` overrides,
and the library's progress lines: one ``gref`` logger (``logging``), each line
``[<job> HH:MM:SS] message`` on stdout. Quiet it with ``logging.getLogger("gref").setLevel(logging.WARNING)``;
a handler of your own on that logger replaces the default one (added only while it has none)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
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
    """Build the job's config, or exit (status 1) with the config error's message on stderr."""
    try:
        return load_config(cls, args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as err:
        sys.exit(f"config error: {err}")


LOGGER = logging.getLogger("gref")


class _Stdout(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at each line (a test's capture, Ray's wrapped stdout),
    not the stream there was when the handler was made."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("[%(job)s %(asctime)s] %(message)s", "%H:%M:%S"))

    @property
    def stream(self):  # noqa: D102 -- logging.StreamHandler's attribute, resolved late
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None:
        pass


def log(job: str, message: str) -> None:
    """A progress line of ``job`` at INFO on the ``gref`` logger."""
    if not LOGGER.handlers:
        LOGGER.addHandler(_Stdout())
        LOGGER.propagate = False
        if LOGGER.level == logging.NOTSET:
            LOGGER.setLevel(logging.INFO)
    LOGGER.info(message, extra={"job": job})


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False, default=str), flush=True)
