"""How far to trust the off-policy estimates from explored traffic (gref.offpolicy) where the truth is
known: units (world, seed) that ``jobs.experiments`` trained, their test requests as the population
of requests, and the endpoint's exploration replayed on them (prints JSON, writes it with --json).

The champion (``--logging-run``, the default recipe's GReF) serves ``traffic`` requests drawn from
the test split: a share ``explore`` of them get a list sampled from it at ``--temperature`` (the
endpoint's ``explore``), the rest its greedy list; the world draws every click. From that traffic
alone, each estimator (IPS, SNIPS, DR with a feature PBM fitted on the unit's train-split logs as
its direct part, and the direct part alone) estimates every row's expected clicks -- the logged
order, the upstream order, the reference rows, every trained GReF -- and its lift over the
champion's on-policy mean, with a 95 % interval. Per (unit, explore share, traffic), over
``--replicates`` independent replays: the share of (row, replicate) whose interval covers the
oracle's lift, the mean error and RMSE of the lift, the interval's mean half-width, and the
Kendall tau of the rows' estimates against the oracle (mean over replicates).

    python -m benchmarks.offpolicy_audit --units runs/families-chosen/complement/seed0 [...]
        --json benchmarks/results/offpolicy-audit-cpu.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from gref.clickmodel.em import FeaturePBM
from gref.data.batch import collate, iter_tables, read_split
from gref.data.pairs import padded
from gref.evaluation import kendall_tau, logged_ranker, model_ranker, reference_ranker, upstream_ranker
from gref.model import decode
from gref.offpolicy import (
    FORMS,
    estimates,
    item_position_log_marginals,
    item_position_marginals,
    item_position_weights,
    logging_propensities,
    prefix_weights,
)
from gref.reranker_io import load_reranker
from gref.sim.reference import REFERENCE_ROWS, fit_features_only
from gref.sim.user_model import expected_feedback, sample_feedback
from gref.sim.world import World
from gref.stats import paired_ratio_lift
from gref.train.steps import data_meta

MODELS = {"GReF": "post-gref", "GReF (pre-train only)": "pre", "GReF chosen_reward": "post-chosen_reward"}
ESTIMATORS = tuple(f"{form} {e}" for form in FORMS for e in ("ips", "snips", "dr")) + ("item sndr", "direct")
BATCH = 512


def gather(x: torch.Tensor, index: np.ndarray) -> torch.Tensor:
    """x [B, M, ...] at candidate indices index [B, N] (-1 -> candidate 0) -> [B, N, ...]."""
    idx = torch.from_numpy(np.clip(index, 0, None))
    return x[torch.arange(len(idx))[:, None], idx]


def cut(placed: np.ndarray, lengths: np.ndarray, width: int) -> np.ndarray:
    """A ranker's lists cut to each request's logged length, padded with -1 to ``width``."""
    placed = placed[:, :width]
    placed = np.where(np.arange(placed.shape[1])[None] < lengths[:, None], placed, -1)
    return np.pad(placed, ((0, 0), (0, width - placed.shape[1])), constant_values=-1)


def fit_direct(train: pa.Table, meta: dict, max_requests: int) -> FeaturePBM:
    """The DR's direct part: a feature PBM fitted on the unit's train-split logs (not the
    audited traffic: no cross-fitting needed)."""
    train = train.slice(0, min(max_requests, train.num_rows))
    b = collate(train, meta["num_features"], len(meta["cat_sizes"]), meta["feedback_weights"])
    exposure = b.exposure.numpy()
    return FeaturePBM(meta["num_features"], list(meta["cat_sizes"])).fit(
        gather(b.num, exposure), gather(b.cat, exposure), b.click.numpy(), b.lengths.numpy())


class Unit:
    """One trained unit: its test requests, every row's list and oracle clicks, the direct model's
    per-slot clicks of those lists, and the champion that explores."""

    def __init__(self, path: Path, logging_run: str, direct_requests: int, temperature: float, samples: int,
                 requests: int):
        prep = path / "prep"
        self.world, self.meta = World.load(path / "sim" / "world"), data_meta(prep)
        self.table = read_split(prep / "sequences" / "test")
        self.table = self.table.slice(0, min(requests, self.table.num_rows))  # the population of requests
        train = read_split(prep / "sequences" / "train")
        features_only = fit_features_only(self.world, train, self.meta)
        self.direct = fit_direct(train, self.meta, direct_requests)
        self.logging = load_reranker(path / "ray" / logging_run / "model").eval()
        rankers = {"logged exposure": logged_ranker, "upstream order": upstream_ranker,
                   **{name: reference_ranker(name, self.world, features_only) for name in REFERENCE_ROWS}}
        for row, run in MODELS.items():
            if (path / "ray" / run / "model" / "model.json").exists():
                rankers[row] = model_ranker(load_reranker(path / "ray" / run / "model").eval())
        self.champion = next(row for row, run in MODELS.items() if run == logging_run)
        self.width = int(max(self.table.column("n").to_numpy()))
        self.users = np.asarray(self.table.column("user_id").to_numpy(), dtype=np.int64)
        self.items = padded(self.table.column("item_id"), -1).astype(np.int64)
        self.lengths = np.asarray(self.table.column("n").to_numpy(), dtype=np.int64)
        lists: dict[str, list] = {name: [] for name in rankers}
        q: dict[str, list] = {name: [] for name in rankers}
        # the item-position marginals of the exploring policy, per test request (Monte Carlo)
        self.samples, marginals = samples, []
        m_max, gen = int(max(self.table.column("m").to_numpy())), torch.Generator().manual_seed(12345)
        for part in iter_tables(self.table, BATCH, shuffle=False):
            b = self.collate(part)
            p = item_position_marginals(self.logging, b.num, b.cat, b.cand_mask, self.width, temperature, samples,
                                        gen).numpy()
            marginals.append(np.pad(p, ((0, 0), (0, 0), (0, m_max - p.shape[2]))))
            for name, rank in rankers.items():
                with torch.no_grad():
                    placed = cut(rank(b)[0], b.lengths.numpy(), self.width)
                lists[name].append(placed)
                q[name].append(self.slot_clicks(b, placed))
        self.marginals = np.concatenate(marginals)  # [R, width, m_max]
        self.lists: dict[str, np.ndarray] = {}
        for name, v in lists.items():  # a row that places the same lists as an earlier one is that row
            placed = np.concatenate(v)
            if not any(np.array_equal(placed, other) for other in self.lists.values()):
                self.lists[name] = placed
        self.q = {name: np.concatenate(q[name]) for name in self.lists}
        self.oracle = {name: float(expected_feedback(self.world, self.users, self.ids(np.arange(len(self.users)), placed))
                                   ["click"].mean()) for name, placed in self.lists.items()}

    def collate(self, part: pa.Table):
        return collate(part, self.meta["num_features"], len(self.meta["cat_sizes"]), self.meta["feedback_weights"])

    def slot_clicks(self, b, placed: np.ndarray) -> np.ndarray:
        """The direct model's P(click on slot k) of lists ``placed`` [B, width] -> [B, width]."""
        m = b.cand_mask.shape[1]
        index = np.clip(placed, 0, m - 1)
        return self.direct.slot_clicks(gather(b.num, index), gather(b.cat, index), (placed >= 0).sum(1)) * (placed >= 0)

    def ids(self, rows: np.ndarray, placed: np.ndarray) -> np.ndarray:
        return np.where(placed >= 0, np.take_along_axis(self.items[rows], np.clip(placed, 0, None), axis=1), -1)

    def explore(self, rows: np.ndarray, temperature: float, rng: np.random.Generator, gen: torch.Generator):
        """Sampled lists for requests ``rows``, their per-slot log-propensities, the world's clicks,
        and the direct model's per-slot clicks of them (each [E, width])."""
        out = {"logged": [], "log_p": [], "q": []}
        sub = self.table.take(pa.array(rows))
        for part in iter_tables(sub, BATCH, shuffle=False):
            b = self.collate(part)
            with torch.no_grad():
                placed = decode(self.logging, b.num, b.cat, b.cand_mask, b.exposure.shape[1],
                                temperature=temperature, generator=gen)
            placed = cut(placed.numpy(), b.lengths.numpy(), self.width)
            log_p = logging_propensities(self.logging, b.num, b.cat, b.cand_mask,
                                         torch.from_numpy(placed[:, : b.exposure.shape[1]]), temperature).numpy()
            out["logged"].append(placed)
            out["log_p"].append(np.pad(log_p, ((0, 0), (0, self.width - log_p.shape[1]))))
            out["q"].append(self.slot_clicks(b, placed))
        logged = np.concatenate(out["logged"])
        clicks = sample_feedback(self.world, self.users[rows], self.ids(rows, logged), rng)["click"] * (logged >= 0)
        return logged, np.concatenate(out["log_p"]), clicks.astype(float), np.concatenate(out["q"])

    def served_clicks(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Clicks per request of the champion's greedy lists on requests ``rows`` -> [P]."""
        placed = self.lists[self.champion][rows]
        return (sample_feedback(self.world, self.users[rows], self.ids(rows, placed), rng)["click"] * (placed >= 0)).sum(1).astype(float)


def replicate(unit: Unit, explore: float, traffic: int, temperature: float, rng: np.random.Generator,
              gen: torch.Generator) -> dict[str, dict[str, dict[str, float]]]:
    """One replay of the traffic -> {row: {estimator: {value, lo, hi, lift, lift_lo, lift_hi}}}."""
    R = len(unit.users)
    explored = rng.integers(R, size=int(round(explore * traffic)))
    served = rng.integers(R, size=traffic - len(explored))
    logged, log_p, clicks, q_logged = unit.explore(explored, temperature, rng, gen)
    log_marginal = item_position_log_marginals(logged, unit.marginals[explored], log_p, unit.samples)
    production = unit.served_clicks(served, rng)
    direct_base = unit.q[unit.champion][explored].sum(1)
    out = {}
    for name, lists in unit.lists.items():
        q_target = unit.q[name][explored]
        weights = {"cascade": prefix_weights(logged, lists[explored], log_p),
                   "item": item_position_weights(logged, lists[explored], log_marginal)}
        row = {f"{form} {e}": v for form in FORMS
               for e, v in estimates(clicks, weights[form], production, q_logged, q_target, form).items()}
        d = paired_ratio_lift(direct_base, q_target.sum(1))  # the click-model reading: model vs model
        half = 1.96 * q_target.sum(1).std(ddof=1) / np.sqrt(len(explored))
        value = float(q_target.sum(1).mean())
        row["direct"] = {"value": value, "lo": value - half, "hi": value + half,
                         "lift": d["lift"], "lift_lo": d["low"], "lift_hi": d["high"]}
        out[name] = row
    return out


def audit_unit(unit: Unit, explore: float, traffic: int, temperature: float, replicates: int, seed: int) -> dict:
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    base = unit.oracle[unit.champion]
    truth = {name: v / base - 1.0 for name, v in unit.oracle.items()}
    runs = [replicate(unit, explore, traffic, temperature, rng, gen) for _ in range(replicates)]
    names = list(unit.lists)
    out = {}
    for est in ESTIMATORS:
        err = np.array([[run[n][est]["lift"] - truth[n] for n in names] for run in runs])  # [reps, rows]
        cover = np.array([[run[n][est]["lift_lo"] <= truth[n] <= run[n][est]["lift_hi"] for n in names] for run in runs])
        half = np.array([[(run[n][est]["lift_hi"] - run[n][est]["lift_lo"]) / 2 for n in names] for run in runs])
        taus = [kendall_tau([run[n][est]["value"] for n in names], [unit.oracle[n] for n in names]) for run in runs]
        out[est] = {"coverage": float(cover.mean()), "covered": int(cover.sum()), "cases": int(cover.size),
                    "mean_error": float(err.mean()), "rmse": float(np.sqrt((err ** 2).mean())),
                    "half_width": float(half.mean()), "kendall_tau": float(np.mean(taus)),
                    "per_row": {n: {"mean_error": float(err[:, i].mean()), "coverage": float(cover[:, i].mean()),
                                    "half_width": float(half[:, i].mean())} for i, n in enumerate(names)}}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.offpolicy_audit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--units", nargs="+", required=True, help="jobs.experiments (world, seed) folders")
    p.add_argument("--logging-run", default="post-gref", help="the Train run of the champion that explores")
    p.add_argument("--explore", type=float, nargs="+", default=[0.05, 0.10], help="explored shares of traffic")
    p.add_argument("--traffic", type=int, nargs="+", default=[20_000, 100_000], help="requests served in all")
    p.add_argument("--temperature", type=float, default=1.0, help="the endpoint's explore_temperature")
    p.add_argument("--replicates", type=int, default=20, help="independent replays per setting")
    p.add_argument("--requests", type=int, default=3000, help="test requests: the population traffic is drawn from")
    p.add_argument("--samples", type=int, default=100, help="lists sampled per request for the item-position marginals")
    p.add_argument("--direct-requests", type=int, default=20_000, help="train-split requests the direct model fits on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="", help="also write the result here")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    out = {"settings": {k: v for k, v in vars(args).items() if k not in ("units", "json")}, "units": {}}
    for path in args.units:
        start = time.time()
        unit = Unit(Path(path), args.logging_run, args.direct_requests, args.temperature, args.samples,
                    args.requests)
        res = {"family": unit.world.config.family, "requests": len(unit.users), "oracle": unit.oracle,
               "true_lift": {n: v / unit.oracle[unit.champion] - 1.0 for n, v in unit.oracle.items()}, "settings": {}}
        for explore in args.explore:
            for traffic in args.traffic:
                key = f"explore{explore:g}-traffic{traffic}"
                res["settings"][key] = audit_unit(unit, explore, traffic, args.temperature, args.replicates, args.seed)
                print(json.dumps({"unit": path, "setting": key, "seconds": round(time.time() - start, 1),
                                  **{e: {k: round(v, 4) for k, v in s.items() if k != "per_row"}
                                     for e, s in res["settings"][key].items()}}), flush=True)
        res["seconds"] = round(time.time() - start, 1)
        out["units"][path] = res
        if args.json:  # after every unit: a long run keeps what it measured
            Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
