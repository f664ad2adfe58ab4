"""Ray Tune's search spaces (no Ray): bad keys fail naming the key, YAML becomes Tune domains."""

from __future__ import annotations

import pytest
import yaml


@pytest.mark.parametrize("space, key", [
    ({"dpo.betta": {"grid": [0.1]}}, "space.dpo.betta"),  # no such config key
    ({"dpo.beta": {"gird": [0.1]}}, "space.dpo.beta"),  # unknown kind
    ({"dpo.beta": {"loguniform": [0.0, 1.0]}}, "space.dpo.beta"),  # log of 0
    ({"pretrain.lambda2": {"uniform": [2.0, 1.0]}}, "space.pretrain.lambda2"),  # low > high
    ({"pretrain.model.omtp_heads": {"choice": [2, "four"]}}, "space.pretrain.model.omtp_heads"),  # type
    ({"pretrain.data": "/elsewhere"}, "space.pretrain.data"),  # set by the sweep
])
def test_bad_search_space_fails_naming_the_key(tmp_path, space, key):
    from tune import sweep

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"space": space}))
    with pytest.raises(SystemExit, match=f"config error: {key}"):
        sweep.main(["--config", str(path), "--data", str(tmp_path / "no-data")])


def test_unknown_sweep_keys_are_rejected(tmp_path):
    from tune import sweep

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"spaces": {"dpo.beta": 0.1}}))
    with pytest.raises(SystemExit, match="unknown config key 'spaces'"):
        sweep.main(["--config", str(path)])
    with pytest.raises(SystemExit, match="scheduler"):
        sweep.main(["--data", str(tmp_path), "scheduler=hyperband"])
    with pytest.raises(SystemExit, match="dpo.scaling.num_workers"):  # Train's local mode cannot run in Tune
        sweep.main(["--data", str(tmp_path), "dpo.scaling.num_workers=0"])


def test_to_tune_builds_tune_domains():
    from ray import tune as ray_tune

    from tune.space import to_tune

    space = to_tune({"a": {"grid": [1, 2]}, "b": {"loguniform": [0.01, 1.0]}, "c": {"choice": ["x", "y"]},
                     "d": {"randint": [2, 5]}, "e": 3})
    assert space["a"] == {"grid_search": [1, 2]}
    assert isinstance(space["b"], ray_tune.search.sample.Float) and space["b"].lower == 0.01
    assert space["c"].categories == ["x", "y"] and space["d"].upper == 5 and space["e"] == 3


