"""Evaluate rerankers on a prepared split (gref.report): AUC / NDCG, the click models' estimate of
every row's expected clicks with 95 % CIs (no oracle needed), IPS on a randomisation bucket,
off-policy estimates from the endpoint's explored requests (--logging-model), and
with a simulated world the oracle's expected clicks beside the reference orders.

    python -m jobs.evaluate --data OUT/prep --model gref=models:/gref-reranker@champion \
        [--model pre=runs/.../model] [--world DIR/world] [--split test] [--out DIR]
        [--logging-model models:/gref-reranker/3 --explore-temperature 1.0]
"""

from __future__ import annotations

from pathlib import Path

from gref.cli import parser, print_json, resolve_config
from gref.report import evaluate, mlflow_key
from gref.tracking import TrackingConfig


def main(argv: list[str] | None = None) -> dict:
    p = parser("jobs.evaluate", __doc__)
    p.add_argument("--data", required=True, help="prepared data dir")
    p.add_argument("--model", action="append", default=[], metavar="NAME=URI",
                   help="a model to evaluate: directory, models:/name@alias or runs:/... (repeatable)")
    p.add_argument("--world", default="", help="simulated world dir, for oracle metrics")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--max-requests", type=int, default=0, help="evaluate the first N requests (0 = all)")
    p.add_argument("--out", default="runs/evaluate", help="report directory")
    p.add_argument("--device", default="auto", help="auto (the GPU when there is one) | cpu | cuda")
    p.add_argument("--no-estimate", action="store_true", help="skip the click-model estimate")
    p.add_argument("--logging-model", default="", metavar="URI",
                   help="the model that sampled the split's explored requests: off-policy estimates from them")
    p.add_argument("--explore-temperature", type=float, default=1.0, help="the endpoint's explore_temperature")
    p.add_argument("--marginal-samples", type=int, default=100,
                   help="lists sampled per explored request for the item-position marginals")
    args = p.parse_args(argv)
    tracking_cfg = resolve_config(TrackingConfig, args)
    import mlflow

    from gref import tracking

    tracking.setup(tracking_cfg)
    mlflow.set_experiment(tracking_cfg.experiment)
    models = {}
    for spec in args.model:
        name, _, uri = spec.partition("=")
        if not uri:
            raise SystemExit(f"--model must be NAME=URI, got '{spec}'")
        models[name] = tracking.load_reranker_uri(uri)
    logging = None
    if args.logging_model:
        from gref.offpolicy import LoggingPolicy

        logging = LoggingPolicy(tracking.load_reranker_uri(args.logging_model), args.explore_temperature,
                                args.marginal_samples)
    with mlflow.start_run(run_name="evaluate"):
        mlflow.log_params({"data": str(Path(args.data).resolve()), "split": args.split,
                           **{f"model.{mlflow_key(k)}": v for k, v in (s.partition("=")[::2] for s in args.model)}})
        rows = evaluate(args.data, models, args.out, args.world, args.split, args.max_requests, args.device,
                        estimate=not args.no_estimate, logging=logging)
    print((Path(args.out) / "report.md").read_text(), flush=True)
    print_json({"report": str(Path(args.out).resolve() / "report.md")})
    return rows


if __name__ == "__main__":
    main()
