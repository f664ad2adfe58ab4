"""Pre-train Gen-Reranker on exposure orders with L_omtp (Eq. 9-11) on Ray Train.

    python -m jobs.pretrain --data OUT/prep [--config configs/pretrain.yaml] [key=value ...]

Examples of overrides: model.omtp_heads=1 lambda2=0 (plain next-item Eq. 6),
scaling.num_workers=2, optim.epochs=10, run.name=my-run (same name = resume),
eval.world=data/sim/world (oracle metrics on simulated data).
"""

from __future__ import annotations

from pathlib import Path

from gref.cli import log, parser, print_json, resolve_config
from gref.train.config import PretrainConfig


def main(argv: list[str] | None = None) -> dict:
    p = parser("jobs.pretrain", __doc__)
    p.add_argument("--data", help="prepared data dir (overrides config 'data')")
    args = p.parse_args(argv)
    if args.data:
        args.overrides = [f"data={args.data}", *args.overrides]
    cfg = resolve_config(PretrainConfig, args)
    if not cfg.data or not (Path(cfg.data) / "sequences" / "train").exists():
        raise SystemExit(f"no prepared data at '{cfg.data}' (give --data OUT of jobs.prepare)")
    from gref.train.runner import run_training

    outcome = run_training("pretrain", cfg)
    log("pretrain", f"best epoch {outcome['best']['epoch']} by {outcome['selection_metric']}; "
                    f"model in {outcome['model_dir']}")
    print_json({k: outcome[k] for k in ("run_name", "model_dir", "mlflow_run_id", "best")})
    return outcome


if __name__ == "__main__":
    main()
