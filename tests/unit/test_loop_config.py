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
