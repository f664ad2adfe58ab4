"""GPU measurements of the Ray-free layers that Ray Train workers and Serve replicas run (prints
JSON; needs only torch, numpy and pyarrow -- no Ray, no MLflow).

    python benchmarks/gpu.py [--out gpu.json] [--rounds 50] [--compile k4,nar4rec]

1. Decode latency per request, m = 30 candidates, n = 10 placed, batch 1 and 64, paper-sized
   models (4 encoder + 4 decoder layers, d = 128): GReF with k = 1 / 2 / 4 / 8 OMTP heads (KV
   cache, list-context logits as the default recipe trains them), GReF k = 1 without the cache (step by step: the paper's "GReF w/o OMTP") and NAR4Rec
   (4 layers), each in the decode modes of gref.model.accel: eager, torch.compile (the models
   named by --compile: compiling is slow) and CUDA graphs. Every mode's lists are checked equal
   to eager's on fresh random inputs. Median of interleaved rounds, CUDA-synchronised.
2. Training throughput (samples/s) of the step functions the Ray Train loop runs
   (gref.train.objectives.pretrain_loss with L_omtp, k = 4; dpo_loss with winner + loser in one
   batched forward; distill_loss, the default post-training, with its reward's beam search),
   batch 1024 (the paper's), fp32 and bf16 autocast, AdamW, on synthetic batches.
Paper Table 2 (T4, per request): GReF 12.97 ms, GReF w/o OMTP 24.29 ms, NAR4Rec 12.67 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "platform"))  # runs without installing gref

from gref.baselines import BaselineConfig, build_baseline  # noqa: E402
from gref.baselines.clickmodel import ListClickModel  # noqa: E402
from gref.data.batch import Batch  # noqa: E402
from gref.losses import OMTPLoss, RerankDPOLoss  # noqa: E402
from gref.model import GenReranker, ModelConfig, decode  # noqa: E402
from gref.model.accel import accelerated_rerank  # noqa: E402
from gref.train.objectives import Distill, LoggedDPO, Pretrain  # noqa: E402
from gref.train.onpolicy import ModelReward  # noqa: E402

M, N, F, CATS = 30, 10, 19, [22, 2002, 26, 402, 10]  # the simulated world's feature shapes


def inputs(batch: int, device, seed: int):
    g = torch.Generator(device="cpu").manual_seed(seed)
    num = torch.randn(batch, M, F, generator=g)
    cat = torch.stack([torch.randint(2, c, (batch, M), generator=g) for c in CATS], -1)
    return num.to(device), cat.to(device), torch.ones(batch, M, dtype=torch.bool, device=device)


def synced(fn, *args):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn(*args)
    torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def decode_latency(device, rounds: int, compile_names: set[str], d_model: int, layers: int) -> dict:
    torch.manual_seed(0)

    def gref(k: int) -> GenReranker:
        cfg = ModelConfig(num_features=F, cat_sizes=CATS, d_model=d_model, n_heads=4, enc_layers=layers,
                          dec_layers=layers, omtp_heads=k, list_bias=True)  # as the default recipe trains it
        return GenReranker(cfg).to(device).eval()

    models = {f"k{k}": gref(k) for k in (1, 2, 4, 8)}
    models["nar4rec"] = build_baseline(BaselineConfig(kind="nar4rec", num_features=F, cat_sizes=CATS, d_model=d_model,
                                                      n_heads=4, layers=layers)).to(device).eval()
    fns = {}
    for name, model in models.items():
        fns[(name, "eager")] = model.rerank
        fns[(name, "cuda_graphs")] = accelerated_rerank(model, "cuda_graphs")
        if name in compile_names:
            fns[(name, "compile")] = accelerated_rerank(model, "compile")
    step_by_step = models["k1"]
    fns[("k1_no_cache", "eager")] = lambda num, cat, mask, n: decode(step_by_step, num, cat, mask, n, use_cache=False)
    out: dict = {}
    for batch in (1, 64):
        x = inputs(batch, device, 0)
        compile_s = {}
        for key, fn in fns.items():  # warm-up: captures and compiles happen here
            t0 = time.perf_counter()
            with torch.no_grad():
                fn(*x, N)
            torch.cuda.synchronize()
            if key[1] != "eager":
                compile_s[f"{key[0]}/{key[1]}"] = round(time.perf_counter() - t0, 2)
        equal = {}
        for key, fn in fns.items():  # same lists as eager on fresh inputs
            if key[1] == "eager":
                continue
            same = 0
            for seed in range(1, 6):
                xs = inputs(batch, device, seed)
                with torch.no_grad():
                    same += int(torch.equal(fn(*xs, N), models[key[0]].rerank(*xs, N)))
            equal[f"{key[0]}/{key[1]}"] = f"{same}/5"
        times = {key: [] for key in fns}
        for _ in range(rounds):
            for key, fn in fns.items():
                with torch.no_grad():
                    times[key].append(synced(fn, *x, N)[1] * 1000 / batch)
        ms = {f"{name}/{mode}": round(statistics.median(v), 4) for (name, mode), v in times.items()}
        out[f"batch_{batch}"] = {"ms_per_request": ms, "lists_equal_to_eager": equal, "first_call_s": compile_s}
    return out


def synthetic_batch(batch: int, device, seed: int) -> Batch:
    num, cat, mask = inputs(batch, device, seed)
    g = torch.Generator(device="cpu").manual_seed(seed)
    exposure = torch.stack([torch.randperm(M, generator=g)[:N] for _ in range(batch)]).to(device)
    loser = torch.stack([torch.randperm(M, generator=g)[:N] for _ in range(batch)]).to(device)
    click = (torch.rand(batch, N, generator=g) < 0.2).float().to(device)
    return Batch(num=num, cat=cat, cand_mask=mask, exposure=exposure, lengths=torch.full((batch,), N, device=device),
                 relevance=click, click=click, winner=exposure, loser=loser)


def training_throughput(device, steps: int, batch: int, d_model: int, layers: int) -> dict:
    """samples/s of each stage's step: pre-training with L_n + L_o (the paper) and L_n alone (the
    default recipe), Rerank-DPO on pairs, and distillation of a list click model's beam search."""
    out = {}
    cfg = ModelConfig(num_features=F, cat_sizes=CATS, d_model=d_model, n_heads=4, enc_layers=layers,
                      dec_layers=layers, omtp_heads=4, list_bias=True)
    for precision in ("fp32", "bf16"):
        for stage in ("pretrain_ln_lo", "pretrain_ln", "dpo", "distill"):
            torch.manual_seed(0)
            model = GenReranker(cfg).to(device).train()
            reference = GenReranker(cfg).to(device).eval().requires_grad_(False)
            reward_model = ListClickModel(BaselineConfig(kind="clickmodel", num_features=F, cat_sizes=CATS,
                                                         anchor=asdict(cfg))).to(device).eval()
            objective = {"pretrain_ln_lo": Pretrain(OMTPLoss(4, 1.0, 1.0).to(device)),
                         "pretrain_ln": Pretrain(OMTPLoss(4, 1.0, 0.0).to(device)),
                         "dpo": LoggedDPO(reference, RerankDPOLoss(0.1), 4),
                         "distill": Distill(ModelReward(reward_model, 4))}[stage]
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            batches = [synthetic_batch(batch, device, s) for s in range(4)]
            ctx = (torch.autocast("cuda", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext())
            rates = []
            for step in range(steps + 3):
                b = batches[step % len(batches)]
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                with ctx:
                    loss = objective(model, b)["loss"]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                torch.cuda.synchronize()
                if step >= 3:
                    rates.append(batch / (time.perf_counter() - t0))
            out[f"{stage}/{precision}"] = round(statistics.median(rates), 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="", help="also write the JSON here")
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--compile", default="k4,nar4rec", help="models also measured under torch.compile ('' = none)")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--train-steps", type=int, default=20)
    p.add_argument("--train-batch", type=int, default=1024)
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA device")
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
    result = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__,
              "model": {"d_model": args.d_model, "layers": args.layers, "m": M, "n": N},
              "decode": decode_latency(device, args.rounds, set(filter(None, args.compile.split(","))),
                                       args.d_model, args.layers),
              "train_samples_per_s": training_throughput(device, args.train_steps, args.train_batch,
                                                         args.d_model, args.layers)}
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
