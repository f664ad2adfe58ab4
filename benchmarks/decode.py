"""Decoding latency of Gen-Reranker variants, side by side in one run (prints JSON).

    python -m benchmarks.decode [--layers 4] [--d-model 64] [--rounds 30] [--device cpu|cuda] [--compile]

Per request, m=30 candidates, n=10 placed, batch 1 and batch 64, same width and depth:
  step_by_step  k=1, no KV cache (decoder re-run over the prefix each step): "GReF w/o OMTP"
  k1_cache      k=1 with the KV cache and Z computed once
  k2, k4, k8    OMTP with k heads per pass (ceil(10/k) passes), KV cache
  one_pass      a non-autoregressive scorer of the same size (the floor)
  *_compiled    with --compile: k4 and one_pass through torch.compile (serve's decode_mode
                compile: static shapes, a graph per batch shape, compiled in the warm-up rounds)
Variants are interleaved round by round and the median is reported, so machine noise hits
all of them alike. Ratios: step_by_step / k4 (paper: 1.87x on a T4) and k4 / one_pass (1.02x).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from gref.model import GenReranker, ModelConfig, decode
from gref.model.one_pass import OnePassScorer

M, N, F, CATS = 30, 10, 19, [22, 2002, 26, 402, 10]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4, help="encoder and decoder layers each (paper: 4)")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="add torch.compile'd k4 and one_pass")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    def cfg(k: int) -> ModelConfig:
        return ModelConfig(num_features=F, cat_sizes=CATS, d_model=args.d_model, enc_layers=args.layers,
                           dec_layers=args.layers, omtp_heads=k)

    models = {k: GenReranker(cfg(k)).to(device).eval() for k in (1, 2, 4, 8)}
    one_pass = OnePassScorer(cfg(1)).to(device).eval()
    variants = {
        "step_by_step": lambda x: decode(models[1], *x, N, use_cache=False),
        "k1_cache": lambda x: decode(models[1], *x, N),
        "k2": lambda x: decode(models[2], *x, N),
        "k4": lambda x: decode(models[4], *x, N),
        "k8": lambda x: decode(models[8], *x, N),
        "one_pass": lambda x: one_pass.decode(*x, N),
    }
    if args.compile:
        k4_compiled = torch.compile(models[4].rerank, dynamic=False)
        one_pass_compiled = torch.compile(one_pass.decode, dynamic=False)
        variants["k4_compiled"] = lambda x: k4_compiled(*x, N)
        variants["one_pass_compiled"] = lambda x: one_pass_compiled(*x, N)
    out: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
                 "layers": args.layers, "d_model": args.d_model, "m": M, "n": N}
    for batch in (1, 64):
        x = (torch.randn(batch, M, F, device=device),
             torch.stack([torch.randint(1, c, (batch, M), device=device) for c in CATS], -1),
             torch.ones(batch, M, dtype=torch.bool, device=device))
        if args.compile:  # the compiled lists are the eager ones (tests/test_accel.py too)
            assert torch.equal(variants["k4_compiled"](x), variants["k4"](x))
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
        if args.compile:
            ms["speedup_k4_compiled_vs_step_by_step"] = round(ms["step_by_step"] / ms["k4_compiled"], 2)
            ms["k4_compiled_over_one_pass_compiled"] = round(ms["k4_compiled"] / ms["one_pass_compiled"], 2)
        out[f"batch_{batch}"] = ms
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
