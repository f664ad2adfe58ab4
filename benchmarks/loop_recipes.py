"""Which post-training recipe makes the strongest challenger from a continuous-training run's own
traffic: each variant trains a challenger offline on the run's prepared rounds, from the run's
round-0 champion (``--from champion``: from the champion that round served, as the loop did),
exactly as the loop's round ``--round`` would, and the simulated oracle scores it on the run's audit
set, paired with the round-0 champion and with the model it started from -- and scores its teacher
too (the reward model's own beam-search lists: how far distillation got towards them; prints JSON).

    python -m benchmarks.loop_recipes --loop runs/continuous --round 6 \\
        --variant loop: --variant all-rounds:replay_rounds=5 --variant reward-4-epochs:reward.optim.epochs=4

A variant is ``NAME:key=value,key=value`` over the run's own continuous.yaml (``NAME:`` = the
run's recipe; the first variant is the one the others are compared with, paired on the audit
set). Each trains in its own directory under ``--out`` against a copy of the run's MLflow
database, so the run's registry and aliases never move. The run's own challenger of that round is
reported beside them (``loop_challenger``): the ``loop:`` variant should land near it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path


def _variant(text: str) -> tuple[str, list[str]]:
    name, _, overrides = text.partition(":")
    return name, [o for o in overrides.split(",") if o]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loop", default="runs/continuous", help="a jobs.continuous out directory (its rounds prepared)")
    p.add_argument("--round", type=int, default=6, help="train as this round would (on the rounds before it)")
    p.add_argument("--from", dest="start", choices=("round0", "champion"), default="round0",
                   help="train from the run's round-0 champion, or from the champion of that round")
    p.add_argument("--variant", action="append", default=[], help="NAME:key=value,... (repeatable)")
    p.add_argument("--out", default="runs/loop-recipes")
    p.add_argument("--json", help="also write the result to this file (stdout mixes it with Ray's worker lines)")
    args = p.parse_args()

    import mlflow

    from gref import tracking
    from gref.config import load_config
    from gref.ray_utils import init_ray
    from gref.sim.world import World
    from gref.loop import ContinuousConfig, LoopState
    from gref.loop.audit import audit_values, teacher_values
    from gref.loop.trainer import train_challenger, window as training_window
    from gref.stats import paired_ratio_lift

    loop, out = Path(args.loop).resolve(), Path(args.out).resolve()
    state = LoopState.load(loop / "state.json")
    v0 = state.round0_champion
    run_cfg = load_config(ContinuousConfig, str(loop / "continuous.yaml"), [])
    if not run_cfg.tracking.uri.startswith("sqlite:///"):
        raise SystemExit(f"the run's tracking store must be a sqlite file to copy, got {run_cfg.tracking.uri}")
    source_db = Path(run_cfg.tracking.uri.removeprefix("sqlite:///"))
    out.mkdir(parents=True, exist_ok=True)
    db = out / "mlflow.db"
    if not db.exists():
        shutil.copy(source_db, db)
    world = World.load(run_cfg.world)
    init_ray()
    loop_round = state.round(args.round)
    init = v0 if args.start == "round0" else loop_round.champion
    result = {"loop": str(loop), "round": args.round, "round0_champion": v0, "init": init,
              "loop_challenger": loop_round.audit_challenger_vs_round0, "variants": {}}
    first = None  # the first variant's audit values: the others' paired reference
    for name, overrides in map(_variant, args.variant or ["loop:"]):
        root = out / name
        for k in range(args.round):  # the run's prepared partitions, read in place
            link = root / "rounds" / str(k) / "prep"
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(loop / "rounds" / str(k) / "prep")
        cfg = load_config(ContinuousConfig, str(loop / "continuous.yaml"),
                          [*overrides, f"out={root}", f"tracking.uri=sqlite:///{db}"])
        tracking.setup(cfg.tracking)
        mlflow.set_experiment(cfg.tracking.experiment)
        t0 = time.time()
        window = training_window(cfg, args.round)
        version = train_challenger(cfg, args.round, init, window)
        train_s = time.time() - t0
        base, new = audit_values(cfg, world, v0), audit_values(cfg, world, version)
        start, teacher = audit_values(cfg, world, init), teacher_values(cfg, world, args.round)
        rounds = json.loads((window / "summary.json").read_text())["window_rounds"]
        row = {"overrides": overrides, "window_rounds": rounds, "version": version, "train_s": round(train_s, 1),
               "vs_round0": paired_ratio_lift(base, new), "vs_init": paired_ratio_lift(start, new),
               "teacher_vs_round0": paired_ratio_lift(base, teacher)}
        if first is None:
            first = (name, new)
        else:
            row[f"vs_{first[0]}"] = paired_ratio_lift(first[1], new)
        result["variants"][name] = row
        lift = row["vs_round0"]
        teach = row["teacher_vs_round0"]
        print(f"[loop_recipes] {name}: {lift['lift']:+.2%} [{lift['low']:+.2%}, {lift['high']:+.2%}] vs round 0 "
              f"(its teacher {teach['lift']:+.2%}) in {train_s:.0f} s", file=sys.stderr, flush=True)
    print(json.dumps(result, indent=2))  # after Ray's workers' log lines, which also reach stdout
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
