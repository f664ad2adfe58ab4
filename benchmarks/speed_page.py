"""docs/benchmarks-speed.md from the JSON of the speed benchmarks that face a reference a strong
engineer would use instead (issue 36): preparation against the one-process Polars script, the
serving paths against a plain FastAPI process, batch-1 decoding against the one-pass scorer.
Ray-free; every number on the page comes from the files named on it.

    python -m benchmarks.speed_page [--results benchmarks/results] [--page docs/benchmarks-speed.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

PREPARE = ("prepare-vs-polars-1m-cpu.json", "prepare-vs-polars-1m-round2-cpu.json", "prepare-vs-polars-1m-round3-cpu.json",
           "prepare-vs-polars-200k-cpu.json")
SERVE = "serve-default-cpu.json"
DECODE = "decode-cpu.json"
SERVE_ROWS = {  # benchmarks.serve target -> what a user runs to get it
    "serve_colocated_direct": "**default** (`colocate: true`), the Router's own port (`make serve`: :8001)",
    "serve_colocated": "default (`colocate: true`), through Serve's proxy (:8000)",
    "serve_nowait_direct": "previous default (a Reranker deployment per arm), the Router's own port",
    "serve_nowait": "previous default (a Reranker deployment per arm), through Serve's proxy",
    "serve": "a deployment per arm, batches waiting up to 5 ms, through the proxy",
    "plain": "plain FastAPI + uvicorn, one process (the reference)",
    "in_process": "in-process: parse + encode + decode, no HTTP (the floor)",
}


def prepare_section(runs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    out = ["## Preparation: `jobs.prepare` vs the one-process Polars script\n",
           "`python -m benchmarks.prepare_vs_polars` (each run a child process, Ray's start-up included; peak = "
           "summed PSS of its process tree; rounds alternated; outputs compared first). Target: the job ≤ 1.3× "
           "the reference's wall time, its peak memory ≤ the bucketed reference's.\n",
           "| logs | outputs equal | run | wall s (per round) | peak GiB | job / this run, time | job / this run, peak |",
           "|---|---|---|---:|---:|---:|---:|"]
    for name, d in runs:
        logs = f"{d['requests']:,} requests ({d['rows']:,} rows, {d['slices']} slice(s)) — `{name}`"
        for run, rounds in d["runs"].items():
            t = d["job_over_reference"].get(run)
            m = d["job_peak_over_reference_peak"].get(run)
            out.append(f"| {logs} | {'yes' if d['outputs_equal'] else '**no**'} | {run} | "
                       f"{' / '.join(str(r['seconds']) for r in rounds)} | {max(r['peak_pss_gb'] for r in rounds)} | "
                       f"{' / '.join(f'{x:.2f}×' for x in t) if t else '–'} | "
                       f"{' / '.join(f'{x:.2f}×' for x in m) if m else '–'} |")
            logs = ""
    return out + [""]


def serve_section(d: dict[str, Any], name: str) -> list[str]:
    levels = sorted(d["results"], key=int)
    out = ["## Serving: the default path vs a plain FastAPI process\n",
           f"`python -m benchmarks.serve{' --direct-ingress' if d['serve_throughput_optimized'] else ''}` "
           f"(`{name}`; {d['requests_per_level']} requests per level and target, 30 candidates, n = 10, "
           f"{d['cpus']} CPUs, levels interleaved). Targets for the default config: p50 ≤ plain + 3 ms at 1 client, "
           "throughput ≥ 1.0× plain's at 16. req/s · p50 ms · p99 ms per clients in flight:\n",
           "| path | " + " | ".join(f"{lv} client(s)" for lv in levels) + " |",
           "|---|" + "---:|" * len(levels)]
    for target, label in SERVE_ROWS.items():
        if target not in d["results"][levels[0]]:
            continue
        cells = [d["results"][lv][target] for lv in levels]
        out.append(f"| {label} | " + " | ".join(f"{c['requests_per_s']} · {c['p50_ms']} · {c['p99_ms']}"
                                               for c in cells) + " |")
    out += ["", "Against the targets (p50 minus plain's at the lowest level; throughput over plain's at the highest):\n",
            "| path | p50 − plain, ms | throughput / plain |", "|---|---:|---:|"]
    for key, v in d["default"].items():
        p50 = next(x for k, x in v.items() if k.startswith("p50_minus"))
        thr = next(x for k, x in v.items() if k.startswith("throughput_vs"))
        out.append(f"| {SERVE_ROWS[v['target']]} | {p50:+.2f} {'(met)' if p50 <= 3 else '(missed)'} | "
                   f"{thr:.2f}× {'(met)' if thr >= 1.0 else '(missed)'} |")
    low = d["results"][levels[0]]
    stages = ("parse", "queue", "encode", "decode", "store", "total", "proxy_http")
    out += ["", f"Where a request's time went at {levels[0]} client(s) (the app's `Server-Timing` header, means, ms; "
            "`proxy_http` = the client's latency beyond the Router's total):\n",
            "| path | " + " | ".join(stages) + " |", "|---|" + "---:|" * len(stages)]
    for target, label in SERVE_ROWS.items():
        if "breakdown_ms" in low.get(target, {}):
            out.append(f"| {label} | " + " | ".join(str(low[target]["breakdown_ms"].get(s, "–")) for s in stages)
                       + " |")
    return out + [""]


def decode_section(d: dict[str, Any], name: str) -> list[str]:
    out = ["## Batch-1 decoding: OMTP with k heads vs the one-pass scorer\n",
           f"`python -m benchmarks.decode --compile --breakdown` (`{name}`; {d['device']}, {d['layers']} layers, "
           f"d_model {d['d_model']}, m = {d['m']}, n = {d['n']}, random weights: the cost does not depend on them; "
           "medians, variants interleaved). A k-head model places n items in ⌈n/k⌉ decoder passes. Target: "
           "batch-1 GReF ≤ 1.3× the one-pass scorer, both compiled, at equal quality (the quality of k: "
           "[training](training.md#the-heads-k)).\n",
           "| batch | variant | ms per request | over the one-pass scorer (same mode) |", "|---|---|---:|---:|"]
    for batch in ("batch_1", "batch_64"):
        ms = d[batch]
        for variant in [v for v in ms if isinstance(ms[v], float) and not v.startswith(("speedup", "k4_over"))
                        and "_over_" not in v]:
            compiled = variant.endswith("_compiled")
            ref = ms["one_pass_compiled" if compiled else "one_pass"]
            out.append(f"| {batch.split('_')[1]} | {variant} | {ms[variant]} | {ms[variant] / ref:.2f}× |")
    if bd := d["batch_1"].get("breakdown"):
        out += ["", "Where a batch-1 request's time goes (eager, ms, each stage timed by wrapping the model's "
                "methods: the totals carry the timers' overhead; decoder and heads: all passes):\n",
                "| variant | encoder | cross-attention K/V | decoder (passes) | heads | rest | total |",
                "|---|---:|---:|---:|---:|---:|---:|"]
        for variant, s in bd.items():
            passes = s["calls"]["decoder"] if "heads" in s else 1  # the scorer's calls are its layers
            out.append(f"| {variant} | {s['encode']} | {s['memory']} | {s['decoder']} ({passes}) | "
                       f"{s.get('heads', '–')} | {s['rest']} | {s['total']} |")
    return out + [""]


def page(results: Path) -> str:
    out = ["# Speed against the references\n",
           "Generated by `python -m benchmarks.speed_page` from `benchmarks/results/`; do not edit. How each is "
           "measured and what was tried: [benchmarks](benchmarks.md). One machine (2 cores), one run each, side by "
           "side: read ratios, not absolute times.\n"]
    found = [(n, json.loads((results / n).read_text())) for n in PREPARE if (results / n).exists()]
    if found:
        out += prepare_section(found)
    if (results / SERVE).exists():
        out += serve_section(json.loads((results / SERVE).read_text()), SERVE)
    if (results / DECODE).exists():
        out += decode_section(json.loads((results / DECODE).read_text()), DECODE)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.speed_page", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    root = Path(__file__).resolve().parents[1]
    p.add_argument("--results", default=str(root / "benchmarks/results"))
    p.add_argument("--page", default=str(root / "docs/benchmarks-speed.md"))
    args = p.parse_args(argv)
    Path(args.page).write_text(page(Path(args.results)))
    print(args.page)


if __name__ == "__main__":
    main()
