import re
from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from gref.config import ConfigError, load_config, parse_overrides


@dataclass
class Inner:
    width: int = 8
    rate: float = 0.1


@dataclass
class Outer:
    name: str = "x"
    flag: bool = False
    mode: Literal["auto", "fp16", "off"] = "auto"
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


def test_literal_options_are_checked():
    assert load_config(Outer, None, ["mode=fp16"]).mode == "fp16"
    assert load_config(Outer, None, ["mode=off"]).mode == "off"  # YAML 1.1 reads a bare off as False
    with pytest.raises(ConfigError, match=re.escape("'mode' must be one of auto | fp16 | off, got 'fp32'")):
        load_config(Outer, None, ["mode=fp32"])


def test_one_default_recipe():
    """The dataclass defaults are the default recipe: the laptop's config only sizes the stages
    (scaling), and the paper's config spells out every knob where the paper differs."""
    from gref.config import flatten, to_dict
    from gref.pipeline import PipelineConfig

    def leaves(data: dict) -> set[str]:
        return set(flatten(data))

    laptop = yaml.safe_load(open("configs/pipeline.yaml"))
    assert all(".scaling." in key for key in leaves(laptop))
    paper = load_config(PipelineConfig, "configs/paper.yaml")
    default = PipelineConfig()
    assert (default.pretrain.model.list_bias, default.pretrain.lambda2, default.pretrain.optim.schedule,
            default.dpo.objective) == (True, 0.0, "cosine", "distill")
    assert (paper.pretrain.model.list_bias, paper.pretrain.lambda2, paper.pretrain.optim.schedule,
            paper.pretrain.optim.weight_decay, paper.pretrain.optim.lr, paper.dpo.objective, paper.dpo.pairs,
            paper.dpo.beta) == (False, 1.0, "constant", 0.0, 5e-6, "dpo", "logged", 0.1)
    assert to_dict(paper) != to_dict(default)


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
