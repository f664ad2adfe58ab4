"""The whole story in one command (gref.pipeline): simulate -> prepare -> pretrain -> reward ->
post-train [-> baselines] -> evaluate -> register, every stage a nested MLflow run.

    python -m jobs.pipeline [--config configs/pipeline.yaml] [key=value ...]
    python -m jobs.pipeline baselines=all          # Table 1: every baseline beside GReF

Prints the summary table; everything lands under ``out`` (summary.json, report/, ray/, prep/).
"""

from __future__ import annotations

from pathlib import Path

from gref.cli import parser, resolve_config
from gref.config import ConfigError
from gref.evaluation import SUMMARY_KEYS, markdown_table
from gref.pipeline import PipelineConfig, run
from gref.recipe import baseline_kinds


def main(argv: list[str] | None = None) -> dict:
    p = parser("jobs.pipeline", __doc__)
    args = p.parse_args(argv)
    cfg = resolve_config(PipelineConfig, args)
    try:
        baseline_kinds(cfg.baselines)  # a typo fails now, not after the GReF stages
    except ConfigError as err:
        raise SystemExit(f"config error: {err}") from None
    summary = run(cfg)
    reg = summary["registry"]
    print("\n== GReF pipeline summary ==")
    print(f"data: {summary['data']['requests_read']:,} requests -> sequences {summary['data']['sequences']}, "
          f"pairs {summary['data']['pairs']}, quarantined {summary['data']['quarantined']}")
    print(f"time (s): {summary['timings_s']}")
    print(f"\ntest split (every column: {Path(summary['out']) / 'report' / 'report.md'}):\n"
          f"{markdown_table(summary['test'], SUMMARY_KEYS)}\n")
    print(f"registry: {reg['registered_model']} v{reg['version']} aliases {sorted(reg['aliases'])}"
          + ("" if reg["promoted"] else f" (the champion stays {reg['previous_champion']}: {reg['decision']['why']})"))
    print(f"summary: {Path(summary['out']) / 'summary.json'}   MLflow run: {summary['mlflow_run_id']}")
    return summary


if __name__ == "__main__":
    main()
