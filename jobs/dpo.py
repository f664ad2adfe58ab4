"""Post-train Gen-Reranker with Rerank-DPO (Eq. 8) on Ray Train, against a frozen reference.

    python -m jobs.dpo --data OUT/prep --init <model dir | models:/gref-reranker@champion | runs:/...> [key=value ...]

Without --init the policy starts from scratch (the paper's "post-training only" ablation;
the reference is then the random initial model). The final model is registered in the
MLflow registry as ``tracking.registered_model`` unless register=false.
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
    if not cfg.data or not (Path(cfg.data) / "pairs" / "train").exists():
        raise SystemExit(f"no prepared pairs at '{cfg.data}' (give --data OUT of jobs.prepare)")
    from gref import tracking
    from gref.train.runner import run_training

    init = None
    if cfg.init:
        tracking.setup(cfg.tracking)
        init = tracking.load_reranker_uri(cfg.init)
        log("dpo", f"policy and reference initialised from {cfg.init}")
    else:
        log("dpo", "no --init: post-training from scratch (ablation)")
    outcome = run_training("dpo", cfg, Path(cfg.data).resolve() / "pairs" / "train", init=init)
    log("dpo", f"best epoch {outcome['best']['epoch']}; registered version {outcome['registered_version']}")
    print_json({k: outcome[k] for k in ("run_name", "model_dir", "mlflow_run_id", "registered_version", "best")})
    return outcome


if __name__ == "__main__":
    main()
