"""What the reward would teach if its logs were explored (issue 33, items 3-4). On one (world, seed)
unit of a ``jobs.experiments`` run, the default reward (RewardConfig's model and optimiser, anchored
on the unit's pre-trained GReF) is fitted twice on the same training requests:
  logged    the logged lists and their clicks (what the recipe sees);
  explored  uniformly random lists of the same candidates, one per request, with clicks drawn from
            the world's user model (what a fully explored bucket of that traffic would log).
Then, on the test split's first ``--requests`` requests, each fit's held-out click NLL on the logged
lists and the oracle's E[clicks] over the logged order (gref.sim) of: its own search lists (what it
teaches), its structured part's lists (no list context) and its candidates sorted by appeal alone;
beside the pre-trained GReF's lists. Where a reward that fits the logs makes lists worse than its own
appeal sort, this separates the two causes: the logged orders confound the list effects (the explored
fit repairs its lists) or the reward's form cannot hold them (it does not). Ray-free; a diagnostic
with the oracle, not an oracle-free check.

    python -m benchmarks.reward_on_explored --unit runs/x/coverage/seed100 [--requests 1000] [--out x.json] \
        [model.page_coverage=true ...]   (overrides of RewardConfig, as a job's)
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from benchmarks.reward_audit import audit_reward, oracle_clicks
from gref.config import override, parse_overrides
from gref.data.batch import Batch, collate, iter_tables, read_split
from gref.reranker_io import load_reranker
from gref.sim.user_model import sample_feedback
from gref.sim.world import World
from gref.train.config import RewardConfig
from gref.train.steps import build_baseline_model, data_meta


def explored(b: Batch, world: World, rng: np.random.Generator) -> Batch:
    """The batch with each request's logged list replaced by a uniformly random list of as many of
    its candidates, and clicks drawn from the world's user model on it."""
    B, N = b.exposure.shape
    keys = torch.as_tensor(rng.random(b.cand_mask.shape), dtype=torch.float32).masked_fill(~b.cand_mask, 2.0)
    lists = keys.argsort(1)[:, :N]
    valid = torch.arange(N)[None] < b.lengths[:, None]
    ids = np.where(valid.numpy(), np.take_along_axis(b.item_id.numpy(), lists.numpy(), axis=1), -1)
    click = torch.as_tensor(sample_feedback(world, b.user_id.numpy(), ids, rng)["click"], dtype=torch.float32)
    return replace(b, exposure=torch.where(valid, lists, 0), click=click * valid, relevance=click * valid)


def fit(unit: Path, meta: dict, table, world: World | None, cfg: RewardConfig, seed: int) -> torch.nn.Module:
    """The reward fitted on ``table``'s logged lists, or (``world`` given) on explored ones."""
    torch.manual_seed(seed)
    policy = load_reranker(unit / "ray" / "pre" / "model")
    model = build_baseline_model(replace(cfg.model, anchor=asdict(policy.cfg)), meta)
    model.attractiveness.policy.load_state_dict(policy.state_dict())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.optim.lr,
                            weight_decay=cfg.optim.weight_decay)
    rng = np.random.default_rng(seed)
    batches = [collate(part, meta["num_features"], len(meta["cat_sizes"]), meta["feedback_weights"])
               for part in iter_tables(table, cfg.optim.batch_size, shuffle=True, seed=seed)]
    if world is not None:  # one explored list per request, the same every epoch (a log)
        batches = [explored(b, world, rng) for b in batches]
    model.train()
    for epoch in range(cfg.optim.epochs):
        for i in np.random.default_rng([seed, epoch]).permutation(len(batches)):
            loss = model(batches[i])["loss"]
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            opt.step()
    return model.eval()


@torch.no_grad()
def pre_delivered(unit: Path, table, meta: dict, world: World) -> float:
    """The oracle's E[clicks] of the pre-trained GReF's lists over the logged lists' - 1."""
    pre = load_reranker(unit / "ray" / "pre" / "model").eval()
    got, logged = [], []
    for part in iter_tables(table, 256, shuffle=False):
        b = collate(part, meta["num_features"], len(meta["cat_sizes"]), meta["feedback_weights"])
        n = int(b.exposure.shape[1])
        valid = torch.arange(n)[None] < b.lengths[:, None]
        for out, lists in ((got, pre.rerank(b.num, b.cat, b.cand_mask, n)), (logged, b.exposure)):
            out.append(oracle_clicks(world, part, torch.where(valid, lists[:, :n], -1)))
    return float(np.concatenate(got).mean() / np.concatenate(logged).mean() - 1)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--unit", required=True, help="a jobs.experiments unit: <out>/<world>/seed<k> (its prep, world, ray/pre)")
    p.add_argument("--requests", type=int, default=1000, help="test requests audited")
    p.add_argument("--train-requests", type=int, default=0, help="training requests fitted (0 = the whole split)")
    p.add_argument("--seed", type=int, default=0, help="the fits' seed (initialisation, batches, explored lists)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="", help="also write the JSON here")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the reward config (e.g. model.page_coverage=true)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    unit = Path(args.unit)
    meta = data_meta(unit / "prep")
    world = World.load(unit / "sim" / "world")
    train = read_split(unit / "prep" / "sequences" / "train")
    train = train.slice(0, args.train_requests or train.num_rows)
    test = read_split(unit / "prep" / "sequences" / "test")
    test = test.slice(0, min(args.requests, test.num_rows))
    cfg = override(RewardConfig(), parse_overrides(args.overrides))
    result = {"unit": str(unit), "requests": test.num_rows, "train_requests": train.num_rows, "seed": args.seed,
              "overrides": args.overrides,
              "reward": {"model": asdict(cfg.model), "optim": asdict(cfg.optim)},
              "pre_trained_gref_delivered": pre_delivered(unit, test, meta, world)}
    for name, source in (("logged", None), ("explored", world)):
        started = time.time()
        model = fit(unit, meta, train, source, cfg, args.seed)
        result[name] = {**audit_reward(model, test, meta, world), "fit_s": time.time() - started}
        print(json.dumps({name: result[name]}), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
