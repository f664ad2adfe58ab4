"""Post-training study: what moves a pre-trained GReF, side by side from one pre-trained model
(prints JSON; Ray-free: torch, numpy, pyarrow -- runs on a laptop or on a GPU machine).

    python benchmarks/post_training.py [--world default|strong] [--requests 40000] [--seed 0]
        [--variants dpo,dpo_lr1e-4,...] [--epochs 3] [--device cuda] [--out post_training.json]

Simulates a world and prepares it in memory (the gref.data functions jobs.prepare runs on Ray
Data), pre-trains GReF (list-context logits, L_n, AdamW wd 0.01, cosine lr 2e-3, 8 epochs, the best
epoch by validation, and dropout 0.1 -- which the CPU default of configs/experiments.yaml leaves out
for time: it costs ~35 % of a CPU step), fits the
list-wise reward (gref.baselines.clickmodel, anchored on the pre-trained model), then runs every
post-training variant from the same start for ``--epochs`` epochs with the objectives of the Ray
Train loop (gref.train.objectives). Per epoch (epoch 0 = the pre-trained model) on validation:
oracle E[clicks] and its lift over the logged order, the KL to the reference, and for preference
losses the DPO loss, reward margin and accuracy and the chosen / rejected log-probs per item; and
the audit of the learned reward against the oracle on the policy's own sampled lists.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "platform"))  # runs without installing gref

from gref.baselines.clickmodel import ListClickModel  # noqa: E402
from gref.baselines.config import BaselineConfig  # noqa: E402
from gref.data.batch import collate, iter_tables  # noqa: E402
from gref.data.features import FeatureSpec, partial_stats  # noqa: E402
from gref.data.pairs import add_pairs  # noqa: E402
from gref.data.schema import DatasetConfig, canonical_schema, feature_columns  # noqa: E402
from gref.data.sequences import build_sequences, split_boundaries  # noqa: E402
from gref.evaluation import evaluate_ranker, logged_ranker  # noqa: E402
from gref.losses import OMTPLoss, RerankDPOLoss  # noqa: E402
from gref.model.config import ModelConfig  # noqa: E402
from gref.sim import World, WorldConfig, generate_logs  # noqa: E402
from gref.train import objectives as obj  # noqa: E402
from gref.train.onpolicy import ModelReward, OnPolicyConfig, OracleReward, audit, candidate_lists  # noqa: E402
from gref.train.config import OptimConfig  # noqa: E402
from gref.train.steps import build_model, evaluate, lr_schedule  # noqa: E402

WORLDS = {"default": {}, "strong": {"series_boost": 3.0, "category_fatigue": 0.7}}
PAPER = {"objective": "dpo", "pairs": "logged", "lr": 2e-5, "beta": 0.1}
VARIANTS = {  # name -> post-training settings
    "dpo": PAPER,  # the paper's Rerank-DPO at the learning rate of the old default
    "dpo_lr1e-4": {**PAPER, "lr": 1e-4},
    "dpo_lr5e-4": {**PAPER, "lr": 5e-4},
    "dpo_lr5e-4_beta0.5": {**PAPER, "lr": 5e-4, "beta": 0.5},
    "ipo_lr1e-4": {**PAPER, "lr": 1e-4, "loss_type": "ipo"},
    "cdpo_lr5e-4": {**PAPER, "lr": 5e-4, "label_smoothing": 0.1},
    "rpo_lr5e-4": {**PAPER, "lr": 5e-4, "sft_weight": 1.0},
    "onpolicy_learned": {"objective": "dpo", "pairs": "onpolicy", "reward": "learned", "lr": 3e-4, "beta": 0.1},
    "onpolicy_oracle": {"objective": "dpo", "pairs": "onpolicy", "reward": "oracle", "lr": 3e-4, "beta": 0.1},
    "distill_learned": {"objective": "distill", "reward": "learned", "lr": 1e-3},
    "distill_oracle": {"objective": "distill", "reward": "oracle", "lr": 1e-3},
}


def prepare(world: World, requests: int, workdir: Path) -> dict[str, pa.Table]:
    """Simulated logs -> encoded sequences per split (+ Eq. 7 pairs), in memory."""
    for _ in generate_logs(world, requests, workdir, progress=False):
        pass
    import pyarrow.dataset as pads

    table = pads.dataset(str(workdir), format="parquet").to_table()
    cfg = DatasetConfig()
    mapping = canonical_schema(table.schema, cfg)
    nums, cats = feature_columns(list(mapping.values()))
    bounds = split_boundaries(pc.max(table.column("ts")).as_py(), cfg.valid_days, cfg.test_days)
    seqs, _ = build_sequences(table.select(list(mapping)), nums, cats, bounds, cfg.max_candidates)
    spec = FeatureSpec.fit(partial_stats(seqs.filter(pc.equal(seqs.column("split"), "train")), nums, cats), nums, cats)
    enc = spec.encode(seqs)
    out = {s: enc.filter(pc.equal(enc.column("split"), s)) for s in ("train", "valid", "test")}
    out["pairs"] = add_pairs(out["train"], cfg.alpha, cfg.gamma, cfg.feedback_weights)
    out["valid_pairs"] = add_pairs(out["valid"], cfg.alpha, cfg.gamma, cfg.feedback_weights)
    out["meta"] = {"num_features": len(nums), "num_cols": nums, "cat_cols": cats, "cat_sizes": spec.cat_sizes,
                   "feedback_weights": cfg.feedback_weights}
    return out


def fit(model, objective, table: pa.Table, meta: dict, optim: OptimConfig, device, seed: int = 0,
        validate=None) -> list[dict]:
    """The Ray Train loop's epoch (AdamW, schedule, clipping), in process; validation after each epoch."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=optim.lr,
                            weight_decay=optim.weight_decay)
    schedule = lr_schedule(opt, optim, -(-table.num_rows // optim.batch_size))
    curve = [] if validate is None else [{"epoch": 0, **validate(model)}]
    for epoch in range(optim.epochs):
        model.train()
        t0 = time.time()
        for part in iter_tables(table, optim.batch_size, shuffle=True, seed=seed + epoch):
            b = collate(part, meta["num_features"], len(meta["cat_sizes"]), meta["feedback_weights"]).to(device)
            loss = objective(model, b)["loss"]
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
            opt.step()
            schedule.step()
        if validate is not None:
            curve.append({"epoch": epoch + 1, "seconds": round(time.time() - t0, 1), **validate(model)})
    return curve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", default="default", choices=sorted(WORLDS))
    p.add_argument("--requests", type=int, default=40_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names of VARIANTS")
    p.add_argument("--epochs", type=int, default=3, help="post-training epochs per variant")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workdir", default="/tmp/gref-post-training")
    p.add_argument("--out", default="", help="also write the JSON here")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    world = World.generate(WorldConfig(seed=args.seed, **WORLDS[args.world]))
    data = prepare(world, args.requests, Path(args.workdir) / f"{args.world}-{args.seed}")
    meta = data["meta"]
    valid = data["valid"].slice(0, 2000)
    logged = evaluate_ranker(logged_ranker, valid, meta, world)["oracle_clicks"]
    vseq = collate(valid.slice(0, 512), meta["num_features"], len(meta["cat_sizes"]), meta["feedback_weights"]).to(device)
    vpairs = collate(data["valid_pairs"].slice(0, 512), meta["num_features"], len(meta["cat_sizes"]),
                     meta["feedback_weights"]).to(device)

    t0 = time.time()
    policy = build_model(ModelConfig(list_bias=True, dropout=0.1), meta).to(device)
    pre_optim = OptimConfig(lr=2e-3, weight_decay=0.01, schedule="cosine", epochs=8)
    best = {"v": -1.0}

    def keep_best(model):
        v = evaluate(model.eval(), valid, meta, 512, world, device, logged)["oracle_clicks"]
        if v > best["v"]:
            best.update(v=v, state=copy.deepcopy(model.state_dict()))
        return {"oracle_clicks": v}

    fit(policy, obj.Pretrain(OMTPLoss(policy.k, 1.0, 0.0).to(device)), data["train"], meta, pre_optim, device,
        validate=keep_best)
    policy.load_state_dict(best["state"])
    policy.eval()
    pre_seconds = time.time() - t0

    reward_model = ListClickModel(BaselineConfig(kind="clickmodel", num_features=meta["num_features"],
                                                 cat_sizes=list(meta["cat_sizes"]), anchor=asdict(policy.cfg))).to(device)
    reward_model.attractiveness.policy.load_state_dict(policy.state_dict())
    fit(reward_model, obj.BaselineLoss(), data["train"], meta, OptimConfig(lr=3e-3, epochs=2), device)
    rewards = {"learned": ModelReward(reward_model.eval(), 4), "oracle": OracleReward(world, 4)}
    gen = torch.Generator(device=device).manual_seed(0)
    lists = candidate_lists(policy, vseq, rewards["learned"], OnPolicyConfig(samples=8), int(vseq.lengths.max()), gen)
    result = {"world": args.world, "seed": args.seed, "requests": args.requests, "device": str(device),
              "logged_valid_clicks": logged, "pretrain_seconds": round(pre_seconds, 1),
              "reward_audit_on_policy_samples": audit(rewards["learned"], rewards["oracle"], vseq, lists),
              "variants": {}}

    for name in filter(None, args.variants.split(",")):
        v = VARIANTS[name]
        model = copy.deepcopy(policy)
        reference = copy.deepcopy(policy).eval().requires_grad_(False)
        reward = rewards.get(v.get("reward", ""))
        if v["objective"] == "distill":
            objective = obj.Distill(reward)
        else:
            loss_fn = RerankDPOLoss(v["beta"], v.get("sft_weight", 0.0), v.get("loss_type", "sigmoid"),
                                    v.get("label_smoothing", 0.0))
            objective = (obj.OnPolicyDPO(reference, loss_fn, model.k, reward, OnPolicyConfig(samples=8), gen)
                         if v["pairs"] == "onpolicy" else obj.LoggedDPO(reference, loss_fn, model.k))
        train = data["pairs"] if v["objective"] == "dpo" and v["pairs"] == "logged" else data["train"]

        def validate(m, objective=objective, reference=reference):
            out = evaluate(m.eval(), valid, meta, 512, world, device, logged)
            out = {k: out[k] for k in ("oracle_clicks", "oracle_click_lift", "diversity")}
            out.update(obj.post_validation(m, reference, objective, vpairs, vseq, m.k))
            return {k: round(float(x), 4) for k, x in out.items()}

        curve = fit(model, objective, train, meta, OptimConfig(lr=v["lr"], epochs=args.epochs), device,
                    seed=args.seed, validate=validate)
        result["variants"][name] = {"settings": v, "curve": curve}
        print(f"{name:22s} " + " -> ".join(f"{c['oracle_click_lift']:+.2%}" for c in curve), file=sys.stderr, flush=True)
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
