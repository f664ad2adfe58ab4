"""Train a baseline reranker (DNN, DCN, PRM, Seq2Slate, NAR4Rec, generator-evaluator) on Ray
Train -- the same loop, checkpoints, resume, MLflow tracking and model export as pre-training.

    python -m jobs.baseline --data OUT/prep --kind nar4rec [--config configs/baselines/nar4rec.yaml] [key=value ...]

--kind alone loads configs/baselines/<kind>.yaml. Trains on the prepared sequences (the
logged exposures and their feedback); the best epoch is picked by the same validation metric
as GReF (oracle clicks with eval.world, else NDCG). The model is registered as gref-<kind>
with alias ``champion`` (e.g. models:/gref-nar4rec@champion, the A/B test's B arm).
"""

from __future__ import annotations

from pathlib import Path

from gref.baselines.config import KINDS
from gref.cli import log, parser, print_json, resolve_config
from gref.recipe import BASELINE_CONFIGS, train_baseline
from gref.train.config import BaselineTrainConfig

def main(argv: list[str] | None = None) -> dict:
    p = parser("jobs.baseline", __doc__)
    p.add_argument("--data", help="prepared data dir (overrides config 'data')")
    p.add_argument("--kind", choices=KINDS, help="baseline to train (default config: configs/baselines/<kind>.yaml)")
    args = p.parse_args(argv)
    if args.kind and not args.config:
        args.config = str(BASELINE_CONFIGS / f"{args.kind}.yaml")
    if args.kind:
        args.overrides = [f"model.kind={args.kind}", *args.overrides]
    if args.data:
        args.overrides = [f"data={args.data}", *args.overrides]
    cfg = resolve_config(BaselineTrainConfig, args)
    if not cfg.data or not (Path(cfg.data) / "sequences" / "train").exists():
        raise SystemExit(f"no prepared data at '{cfg.data}' (give --data OUT of jobs.prepare)")
    outcome = train_baseline(cfg)
    log("baseline", f"{cfg.model.kind}: best epoch {outcome['best']['epoch']} by {outcome['selection_metric']}; "
                    f"model in {outcome['model_dir']}, registered {cfg.registry_name()} v{outcome['registered_version']}")
    print_json({k: outcome[k] for k in ("run_name", "model_dir", "mlflow_run_id", "registered_version", "best")})
    return outcome


if __name__ == "__main__":
    main()
