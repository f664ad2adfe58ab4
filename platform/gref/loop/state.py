"""What the continuous loop has done, kept on disk after every step (``out``/state.json) so that a
killed run resumes where it stopped. A field at its default (None, False, no looks) has not happened
yet and is left out of the JSON: state.json and summary.json read as they always have, a key
present only once its step ran."""

from __future__ import annotations

import json
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

Interval = dict[str, float]  # gref.stats.paired_ratio_lift's {"lift", "low", "high", ...}


@dataclass
class Round:
    """One round: its arms, the A/B looks and their decision, the export window, the oracle's audit."""

    round: int
    champion: int | None = None  # the registered version serving as champion this round
    challenger: int | None = None  # the version trained this round (round 0, or training failed: None)
    train_error: str | None = None  # why the challenger failed to train (the champion served alone)
    since_ms: int | None = None  # the round's export window opens (where the previous round's closed)
    ab_since_ms: int | None = None  # the first deploy of the round ended: its looks count from here
    until_ms: int | None = None  # the last look's end: the export window closes
    salt: str | None = None  # the round's user split (a new experiment every round)
    ingress: str | None = None  # "direct" | "proxy": where the looks were sent
    looks: list[dict[str, Any]] = field(default_factory=list)  # one summary per look (lift, interval, action)
    decision: dict[str, Any] | None = None  # the deciding look's summary (round 0: action "none")
    explored: int | None = None  # requests served a sampled list
    applied: bool = False  # the decision moved the alias / tagged the version
    data: dict[str, Any] | None = None  # the round's traffic exported and prepared (rows, sequences, quarantined)
    prepared: bool = False  # the round is done
    # the oracle's audit on the fixed audit set (simulated users only)
    audit_champion: float | None = None  # E[clicks] per request of the champion's lists
    audit_challenger: float | None = None
    audit_teacher: float | None = None  # ... of the round's reward model's own lists
    audit_champion_vs_round0: Interval | None = None  # paired lift over the round-0 champion
    audit_challenger_vs_round0: Interval | None = None
    audit_teacher_vs_round0: Interval | None = None
    audit_lift: Interval | None = None  # challenger over champion, paired

    @property
    def arms(self) -> dict[str, int]:
        """Arm name -> registered version (no challenger: the champion alone)."""
        return {"champion": self.champion, **({"challenger": self.challenger} if self.challenger is not None else {})}

    @property
    def action(self) -> str | None:
        """The decision's action (promote | rollback | keep | none), None before one."""
        return (self.decision or {}).get("action")

    def to_json(self) -> dict[str, Any]:
        """The steps that ran (fields away from their default), as JSON-ready values."""
        unset = {f.name: f.default_factory() if f.default_factory is not MISSING else f.default for f in fields(self)}
        return {k: v for k, v in asdict(self).items() if k == "round" or v != unset[k]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Round:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"round {data.get('round')}: unknown keys {sorted(unknown)} in the loop's state file")
        return cls(**data)


@dataclass
class LoopState:
    """The loop's progress: the champion now, the round-0 champion (the audit's reference), every round."""

    path: Path
    champion: int | None = None
    round0_champion: int | None = None
    rounds: dict[int, Round] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> LoopState:
        """``path`` as saved, or a new state when there is none."""
        if not path.exists():
            return cls(path)
        data = json.loads(path.read_text())
        return cls(path, data.get("champion"), data.get("round0_champion"),
                   {int(r): Round.from_json(rnd) for r, rnd in data["rounds"].items()})

    def round(self, r: int) -> Round:
        """Round r, created when first asked for."""
        return self.rounds.setdefault(r, Round(r))

    def save(self) -> None:
        """Atomically: a kill mid-write leaves the previous state."""
        data = {"champion": self.champion, "round0_champion": self.round0_champion,
                "rounds": {str(r): rnd.to_json() for r, rnd in sorted(self.rounds.items())}}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({k: v for k, v in data.items() if v is not None}, indent=2))
        os.replace(tmp, self.path)
