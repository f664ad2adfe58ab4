"""Post-train Gen-Reranker on Ray Train, against a frozen copy of the initial model.

    python -m jobs.dpo --data OUT/prep --init <model dir | models:/gref-reranker@champion | runs:/...> \
        reward=<list click model dir or URI (jobs.reward)> [key=value ...]

What it optimises (``objective``, ``pairs``; train.config.DPOConfig):
  * objective=distill (the default recipe, docs/results.md): the NLL of the list the reward
    (a list click model) finds best by beam search;
  * objective=dpo pairs=logged: the paper's Rerank-DPO, Eq. 8 on the Eq. 7 pairs of jobs.prepare
    (configs/dpo.paper.yaml; no reward needed); variants: loss_type=ipo, label_smoothing
    (conservative DPO), sft_weight (RPO), length_norm;
  * objective=dpo pairs=onpolicy: Eq. 8 on the reward's best vs worst of the policy's own
    sampled lists (and the reward's beam-search list), fresh every batch;
  * reward=oracle: the simulated world's exact user model in place of a learned reward (a
    diagnostic reference, needs eval.world).
The initial model is validated first and is a candidate for the exported model, so
post-training never exports something worse on validation than what it started from.
Without --init the policy starts from scratch (the paper's "post-training only" ablation).
The exported model is registered as ``tracking.registered_model`` unless register=false.
"""

from __future__ import annotations

from pathlib import Path

from gref.cli import log, parser, print_json, resolve_config
from gref.train.config import DPOConfig


def main(argv: list[str] | None = None) -> dict:
    p = parser("jobs.dpo", __doc__)
    p.add_argument("--data", help="prepared data dir (overrides config 'data')")
    p.add_argument("--init", help="initial model (overrides config 'init'); omit for from-scratch")
    args = p.parse_args(argv)
    if args.data:
        args.overrides = [f"data={args.data}", *args.overrides]
    if args.init:
        args.overrides = [f"init={args.init}", *args.overrides]
    cfg = resolve_config(DPOConfig, args)
    if not cfg.data or not (Path(cfg.data) / "sequences" / "train").exists():
        raise SystemExit(f"no prepared data at '{cfg.data}' (give --data OUT of jobs.prepare)")
    from gref import tracking
    from gref.config import ConfigError
    from gref.train.runner import run_training

    init = None
    if cfg.init:
        tracking.setup(cfg.tracking)
        init = tracking.load_reranker_uri(cfg.init)
        log("dpo", f"policy and reference initialised from {cfg.init}")
    else:
        log("dpo", "no --init: post-training from scratch (ablation)")
    try:
        outcome = run_training("dpo", cfg, init=init)
    except ConfigError as err:
        raise SystemExit(f"config error: {err}") from None
    log("dpo", f"best epoch {outcome['best']['epoch']} (-1 = the initial model); "
               f"registered version {outcome['registered_version']}")
    print_json({k: outcome[k] for k in ("run_name", "model_dir", "mlflow_run_id", "registered_version", "best")})
    return outcome


if __name__ == "__main__":
    main()
