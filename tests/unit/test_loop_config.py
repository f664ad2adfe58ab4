"""gref.loop's settings: what cannot work is refused before anything starts (no Ray)."""

from __future__ import annotations

import pytest


def test_an_unknown_traffic_source_is_a_config_error():
    import re

    from jobs import continuous

    with pytest.raises(SystemExit, match=re.escape("'traffic' must be one of simulated | clients, got 'bogus'")):
        continuous.main(["--config", "configs/continuous.yaml", "traffic=bogus"])


@pytest.mark.parametrize("override, says", [
    (["world="], "set world=DIR"),  # simulated traffic needs a world
    (["world=/nonexistent"], "no simulated world at '/nonexistent'"),
    (["traffic=clients", "world=", "feedback_wait_s=-1"], "feedback_wait_s >= 0"),
])
def test_settings_that_cannot_work_are_refused_before_anything_starts(override, says):
    import re

    from gref import loop
    from gref.config import ConfigError, load_config
    from jobs import continuous
    from serve.app import loop_app

    cfg = load_config(loop.ContinuousConfig, "configs/continuous.yaml", override)
    with pytest.raises(SystemExit, match=re.escape(says)):
        continuous.main(["--config", "configs/continuous.yaml", *override])
    with pytest.raises(ConfigError):
        loop.run(cfg, loop_app())


def test_a_rounds_teacher_is_the_reward_its_post_training_used(tmp_path):
    """With reward.candidates the chosen reward's run is not round<r>-reward: the oracle's audit of
    the teacher reads the reward the round's post-training run names."""
    import json

    from gref.loop import ContinuousConfig

    cfg = ContinuousConfig(out=str(tmp_path))
    assert cfg.reward_dir(0) == tmp_path / "ray" / "round0-reward" / "model"  # nothing trained yet
    chosen = tmp_path / "ray" / "round0-reward-value_pairs8" / "model"
    post = tmp_path / "ray" / "round0-post"
    post.mkdir(parents=True)
    (post / "outcome.json").write_text(json.dumps({"params": {"reward": str(chosen)}, "outcome": {}}))
    assert cfg.reward_dir(0) == chosen
