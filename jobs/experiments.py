"""The paper's tables on simulated worlds, over several seeds (gref.experiments): Table 1 (GReF vs
the baselines, beside the reference rows), Table 3 and the ablations beyond the paper, and the
OMTP head count k. Every (world, seed) is simulated, prepared, trained and evaluated; the tables
aggregate over seeds (paired per-seed lifts with 95 % CIs) into ``out/report-<tables>/``.

    python -m jobs.experiments --config configs/experiments.yaml [key=value ...]   # the tables of docs/results.md
    python -m jobs.experiments --config configs/ablations.yaml          # the ablation tables

Re-running with the same ``out`` skips every model already trained and every seed already evaluated.
"""

from __future__ import annotations

from gref.cli import parser, resolve_config
from gref.config import ConfigError
from gref.experiments import ExperimentConfig, run


def main(argv: list[str] | None = None) -> dict:
    p = parser("jobs.experiments", __doc__)
    args = p.parse_args(argv)
    cfg = resolve_config(ExperimentConfig, args)
    try:
        result = run(cfg)
    except ConfigError as err:
        raise SystemExit(f"config error: {err}") from None
    print(result["text"], flush=True)
    return result


if __name__ == "__main__":
    main()
