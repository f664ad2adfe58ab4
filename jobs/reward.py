"""Fit the list-wise reward of post-training: a click model of whole lists (position bias, each
item's appeal, list effects through shared attributes) on the logged clicks, its item appeal
anchored on a pre-trained GReF. Ray Train, like every model of the platform.

    python -m jobs.reward --data OUT/prep --init <pre-trained GReF: dir | models:/... | runs:/...> [key=value ...]

Without --init the item appeal is a DCN over the features, fitted to clicks alone (an ablation).
The model selected is the epoch with the lowest held-out click NLL (``eval.metric=val_loss``);
each of ``candidates`` (default ``[{model.value_pairs: 8}]``; ``candidates=[]`` for one reward) is
fitted too, and teaches only when its per-request click NLL on the validation split beats the
configured reward's beyond chance;
its validation also reports the expected clicks of its own beam-search lists (with a simulated
world, by the oracle). ``python -m jobs.dpo objective=distill reward=<its model dir>`` post-trains
GReF on its best lists.
"""

from __future__ import annotations

from pathlib import Path

from gref.cli import log, parser, print_json, resolve_config
from gref.recipe import train_reward
from gref.train.config import RewardConfig


def main(argv: list[str] | None = None) -> dict:
    p = parser("jobs.reward", __doc__)
    p.add_argument("--data", help="prepared data dir (overrides config 'data')")
    p.add_argument("--init", help="pre-trained GReF anchoring the item appeal (overrides config 'init')")
    args = p.parse_args(argv)
    if args.data:
        args.overrides = [f"data={args.data}", *args.overrides]
    if args.init:
        args.overrides = [f"init={args.init}", *args.overrides]
    cfg = resolve_config(RewardConfig, args)
    if not cfg.data or not (Path(cfg.data) / "sequences" / "train").exists():
        raise SystemExit(f"no prepared data at '{cfg.data}' (give --data OUT of jobs.prepare)")
    outcome = train_reward(cfg)
    log("reward", f"best epoch {outcome['best']['epoch']} by {outcome['selection_metric']}; model in {outcome['model_dir']}")
    print_json({k: outcome[k] for k in ("run_name", "model_dir", "mlflow_run_id", "best", "candidates") if k in outcome})
    return outcome


if __name__ == "__main__":
    main()
