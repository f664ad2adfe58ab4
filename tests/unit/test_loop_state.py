"""gref.loop.state and gref.loop.report: the loop's round state as typed records, read and written
in the format state.json has always had (a run killed under an earlier release resumes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gref.loop import LoopState, Round
from gref.loop.report import phase_seconds, round_metrics

DATA = Path(__file__).parent / "data"


def test_a_state_file_of_the_dict_era_loads_and_saves_back_unchanged(tmp_path):
    """state.json of a two-round run written by the loop before Round existed (its round dicts
    held each key only once the step ran): read into Rounds and written back, the same JSON."""
    original = json.loads((DATA / "loop-state-v1.json").read_text())
    path = tmp_path / "state.json"
    path.write_text(json.dumps(original))
    state = LoopState.load(path)
    assert (state.champion, state.round0_champion) == (original["champion"], original["round0_champion"])
    r0, r1 = state.round(0), state.round(1)
    assert r0.arms == {"champion": 1} and r0.action == "none" and r0.challenger is None
    assert r1.arms == {"champion": 1, "challenger": 2} and r1.action == "keep" and r1.applied
    assert r1.audit_lift["lift"] == pytest.approx(0.009493634958156472)
    state.save()
    assert json.loads(path.read_text()) == original


def test_a_new_round_writes_only_the_steps_that_ran(tmp_path):
    state = LoopState.load(tmp_path / "state.json")  # no file: a new loop
    assert state.champion is None and state.rounds == {}
    state.champion = state.round0_champion = 3
    rnd = state.round(1)
    rnd.champion, rnd.since_ms = 3, 1000
    state.save()
    saved = json.loads((tmp_path / "state.json").read_text())
    # a field at its default (None, False, no looks) is a step not taken yet: not written
    assert saved == {"champion": 3, "round0_champion": 3, "rounds": {"1": {"round": 1, "champion": 3, "since_ms": 1000}}}
    assert LoopState.load(tmp_path / "state.json").round(1) == rnd
    assert state.round(2) is state.round(2) and state.round(2).round == 2  # created once, when first asked for


def test_an_unknown_key_in_a_state_file_is_named():
    with pytest.raises(ValueError, match=r"round 4: unknown keys \['chalenger'\]"):
        Round.from_json({"round": 4, "chalenger": 7})


def test_a_rounds_phase_seconds_and_metrics_by_hand():
    rnd = Round(2, champion=1, challenger=2, since_ms=10_000, ab_since_ms=70_000, until_ms=100_000,
                looks=[{"look": 1, "champion_clicks": 1.5, "challenger_clicks": 1.75}],
                decision={"action": "promote", "lift": 0.1, "low": 0.02, "high": 0.18, "why": "..."},
                audit_champion=1.2, audit_challenger=1.3)
    assert phase_seconds(rnd) == {"learn_s": 60.0, "serve_s": 30.0}
    assert phase_seconds(Round(2, since_ms=10_000)) == {}  # not served yet
    assert round_metrics(rnd) == {"lift": 0.1, "low": 0.02, "high": 0.18, "audit_champion": 1.2,
                                  "audit_challenger": 1.3, "champion_clicks": 1.5, "challenger_clicks": 1.75,
                                  "looks": 1.0, "learn_s": 60.0, "serve_s": 30.0}
