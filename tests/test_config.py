from dataclasses import dataclass, field

import pytest

from gref.config import ConfigError, load_config, parse_overrides


@dataclass
class Inner:
    width: int = 8
    rate: float = 0.1


@dataclass
class Outer:
    name: str = "x"
    flag: bool = False
    inner: Inner = field(default_factory=Inner)
    weights: dict[str, float] = field(default_factory=dict)


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: from-file\ninner:\n  width: 16\n")
    cfg = load_config(Outer, path, ["inner.rate=0.5", "flag=true", "weights={click: 1.0}"])
    assert cfg == Outer(name="from-file", flag=True, inner=Inner(width=16, rate=0.5), weights={"click": 1.0})


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="inner.widht"):
        load_config(Outer, None, ["inner.widht=3"])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match="inner.width"):
        load_config(Outer, None, ["inner.width=wide"])
    with pytest.raises(ConfigError, match="inner.width"):
        load_config(Outer, None, ["inner.width=2.5"])


def test_override_syntax():
    assert parse_overrides(["a.b=3", "c=x"]) == {"a": {"b": 3}, "c": "x"}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["novalue"])


def test_progress_lines_go_through_the_gref_logger_to_the_current_stdout(capsys):
    """gref.cli.log: one ``gref`` logger, ``[job HH:MM:SS] message`` on whatever stdout is now;
    a user quiets it with the logger's level (issue 35 item 6)."""
    import logging
    import re

    from gref.cli import LOGGER, log

    level = LOGGER.level
    try:
        log("prepare", "3 slices")
        assert re.fullmatch(r"\[prepare \d\d:\d\d:\d\d\] 3 slices\n", capsys.readouterr().out)
        LOGGER.setLevel(logging.WARNING)
        log("prepare", "not shown")
        assert capsys.readouterr().out == ""
    finally:
        LOGGER.setLevel(level)
