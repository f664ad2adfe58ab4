"""Decoding latency of Gen-Reranker variants, side by side in one run (prints JSON).

    python -m benchmarks.decode [--layers 4] [--d-model 64] [--rounds 30] [--device cpu|cuda] [--compile]
        [--breakdown]

Per request, m=30 candidates, n=10 placed, batch 1 and batch 64, same width and depth:
  step_by_step  k=1, no KV cache (decoder re-run over the prefix each step): "GReF w/o OMTP"
  k1_cache      k=1 with the KV cache and Z computed once
  k2, k4, k8, k10  OMTP with k heads per pass (ceil(10/k) passes: k10 places the list in one), KV cache
  one_pass      a non-autoregressive scorer of the same size (the floor)
  k4_list_bias  k4 with the default recipe's list-context terms (model.list_bias)
  k4_value_pairs  k4_list_bias plus value-pair tables of rank 8 (model.value_pairs: what the student
                gains from a value-pair reward)
  *_compiled    with --compile: k4, k8, k10 and one_pass through torch.compile (serve's decode_mode
                compile: static shapes, a graph per batch shape, compiled in the warm-up rounds)
Variants are interleaved round by round and the median is reported, so machine noise hits
all of them alike. Ratios: step_by_step / k4 (paper: 1.87x on a T4), k4 / one_pass (1.02x), what
the list-context terms cost (k4_list_bias / k4) and the value-pair tables on top (k4_value_pairs / k4_list_bias); with
--compile, each compiled k over the compiled one_pass (the batch-1 target: <= 1.3x).
--breakdown adds, for eager k4 and one_pass, where a request's time goes (ms, medians over the
rounds): the encoder, the cross-attention K/V (``memory``), the decoder passes, the heads' logits,
and the rest (placing items: masks, argmax, list-context terms, the placed items' embeddings).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from typing import Callable

import torch

from gref.model import GenReranker, ModelConfig, decode
from gref.model.one_pass import OnePassScorer

M, N, F, CATS = 30, 10, 19, [22, 2002, 26, 402, 10]


class StageTimer:
    """Wraps methods of module instances (an instance attribute shadows the class's method, so
    ``decode`` calls the wrapper) and sums their wall time per stage for each request timed."""

    def __init__(self, sync: Callable[[], None]):
        self.sync, self.spent, self.calls = sync, defaultdict(float), defaultdict(int)

    def wrap(self, obj, method: str, stage: str) -> None:
        inner = getattr(obj, method)

        def timed(*args, **kwargs):
            self.sync()
            t0 = time.perf_counter()
            out = inner(*args, **kwargs)
            self.sync()
            self.spent[stage] += time.perf_counter() - t0
            self.calls[stage] += 1
            return out

        setattr(obj, method, timed)

    def measure(self, fn: Callable[[], object], rounds: int, batch: int) -> dict:
        """Median ms per request and stage over ``rounds`` calls of ``fn`` on a batch of ``batch``
        (after 3 warm-up calls), 'rest' = total minus the wrapped stages; calls of each stage per call of fn."""
        per_round: dict[str, list[float]] = defaultdict(list)
        for r in range(rounds + 3):
            self.spent.clear()
            self.calls.clear()
            self.sync()
            t0 = time.perf_counter()
            fn()
            self.sync()
            total = time.perf_counter() - t0
            if r >= 3:
                for stage, sec in self.spent.items():
                    per_round[stage].append(sec * 1000 / batch)
                per_round["rest"].append((total - sum(self.spent.values())) * 1000 / batch)
                per_round["total"].append(total * 1000 / batch)
        out = {stage: round(statistics.median(v), 3) for stage, v in per_round.items()}
        return out | {"calls": dict(self.calls)}


def breakdown(model: GenReranker, one_pass: OnePassScorer, x: tuple, rounds: int, sync: Callable[[], None]) -> dict:
    """Stage times of eager k4 decoding and of the one-pass scorer on the same input ``x``."""
    k4 = StageTimer(sync)
    for method, stage in (("encode", "encode"), ("memory", "memory"), ("decode_hidden", "decoder"),
                          ("head_logits", "heads")):
        k4.wrap(model, method, stage)
    flat = StageTimer(sync)
    for method, stage in (("encode", "encode"), ("memory", "memory")):
        flat.wrap(one_pass.body, method, stage)
    for layer in one_pass.body.decoder:
        flat.wrap(layer, "forward", "decoder")
    try:
        batch = x[0].shape[0]
        return {"k4": k4.measure(lambda: decode(model, *x, N), rounds, batch),
                "one_pass": flat.measure(lambda: one_pass.decode(*x, N), rounds, batch)}
    finally:  # the instances' own methods again
        for obj in (model, one_pass.body, *one_pass.body.decoder):
            for method in ("encode", "memory", "decode_hidden", "head_logits", "forward"):
                obj.__dict__.pop(method, None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4, help="encoder and decoder layers each (paper: 4)")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="add torch.compile'd k4 and one_pass")
    p.add_argument("--breakdown", action="store_true", help="add the per-stage times of eager k4 and one_pass")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    def cfg(k: int, **list_context) -> ModelConfig:
        return ModelConfig(num_features=F, cat_sizes=CATS, d_model=args.d_model, enc_layers=args.layers,
                           dec_layers=args.layers, omtp_heads=k, **list_context)

    models = {k: GenReranker(cfg(k)).to(device).eval() for k in (1, 2, 4, 8, N)}
    list_bias = GenReranker(cfg(4, list_bias=True)).to(device).eval()
    value_pairs = GenReranker(cfg(4, list_bias=True, value_pairs=8)).to(device).eval()
    one_pass = OnePassScorer(cfg(1)).to(device).eval()
    variants = {
        "step_by_step": lambda x: decode(models[1], *x, N, use_cache=False),
        "k1_cache": lambda x: decode(models[1], *x, N),
        "k2": lambda x: decode(models[2], *x, N),
        "k4": lambda x: decode(models[4], *x, N),
        "k8": lambda x: decode(models[8], *x, N),
        f"k{N}": lambda x: decode(models[N], *x, N),
        "one_pass": lambda x: one_pass.decode(*x, N),
        "k4_list_bias": lambda x: decode(list_bias, *x, N),
        "k4_value_pairs": lambda x: decode(value_pairs, *x, N),
    }
    if args.compile:
        for k in (4, 8, N):
            variants[f"k{k}_compiled"] = (lambda f: lambda x: f(*x, N))(torch.compile(models[k].rerank, dynamic=False))
        one_pass_compiled = torch.compile(one_pass.decode, dynamic=False)
        variants["one_pass_compiled"] = lambda x: one_pass_compiled(*x, N)
    out: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
                 "layers": args.layers, "d_model": args.d_model, "m": M, "n": N}
    for batch in (1, 64):
        x = (torch.randn(batch, M, F, device=device),
             torch.stack([torch.randint(1, c, (batch, M), device=device) for c in CATS], -1),
             torch.ones(batch, M, dtype=torch.bool, device=device))
        if args.compile:  # the compiled lists are the eager ones (tests/unit/test_accel.py too)
            for k in (4, 8, N):
                assert torch.equal(variants[f"k{k}_compiled"](x), variants[f"k{k}"](x))
            assert torch.equal(variants["one_pass_compiled"](x), variants["one_pass"](x))
        times = {name: [] for name in variants}
        for r in range(args.rounds + 3):
            for name, fn in variants.items():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                fn(x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if r >= 3:  # warm-up rounds
                    times[name].append((time.perf_counter() - t0) * 1000 / batch)
        ms = {name: round(statistics.median(v), 4) for name, v in times.items()}
        ms["speedup_k4_vs_step_by_step"] = round(ms["step_by_step"] / ms["k4"], 2)
        ms["k4_over_one_pass"] = round(ms["k4"] / ms["one_pass"], 2)
        ms["list_bias_over_k4"] = round(ms["k4_list_bias"] / ms["k4"], 2)
        ms["value_pairs_over_list_bias"] = round(ms["k4_value_pairs"] / ms["k4_list_bias"], 2)
        if args.compile:
            ms["speedup_k4_compiled_vs_step_by_step"] = round(ms["step_by_step"] / ms["k4_compiled"], 2)
            for k in (4, 8, N):
                ms[f"k{k}_compiled_over_one_pass_compiled"] = round(ms[f"k{k}_compiled"] / ms["one_pass_compiled"], 2)
        if args.breakdown:
            sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
            ms["breakdown"] = breakdown(models[4], one_pass, x, args.rounds, sync)
        out[f"batch_{batch}"] = ms
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
