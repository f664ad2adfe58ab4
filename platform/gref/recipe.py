"""The training recipe's stages beyond pre-training, in one place for every caller (jobs.reward,
jobs.baseline, gref.pipeline, gref.experiments, gref.loop): fit the list-wise reward anchored on a
pre-trained GReF, post-train (the reward first when the objective needs one), and train a baseline
from its configs/baselines/<kind>.yaml. Each returns the Ray Train runner's outcome dict
(run_name, model_dir, mlflow_run_id, best, history, ...)."""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gref.stats import t_half_width
from gref.train.config import BaselineTrainConfig, DPOConfig, RewardConfig

# the baselines' recipes (one YAML per kind), beside the project's other configs
BASELINE_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "baselines"


def variant_name(prefix: str, overrides: dict) -> str:
    """A run name per distinct config: ``prefix`` alone without overrides, else
    ``prefix-<last key part><value>...`` (``reward-pre-value_pairs8``)."""
    from gref.config import flatten, nest

    if not overrides:
        return prefix
    return prefix + "-" + "-".join(f"{k.split('.')[-1]}{v}" for k, v in sorted(flatten(nest(overrides)).items()))


def reward_variants(cfg: RewardConfig) -> list[tuple[dict, RewardConfig]]:
    """The rewards ``train_reward`` fits, as (overrides, config): ``cfg`` itself, then each of
    ``cfg.candidates`` applied to it; none with candidates of its own. Every override is checked
    (a ConfigError names a wrong key) before anything is fitted."""
    from gref.config import ConfigError, override

    if cfg.candidates and cfg.eval.metric != "val_loss":
        raise ConfigError("reward.candidates are compared by their held-out click NLL: they need eval.metric=val_loss "
                          "(or candidates=[] to fit the configured reward alone)")
    base = replace(cfg, candidates=[])
    return [({}, base), *((dict(c), override(base, c)) for c in cfg.candidates)]


def held_out_click_nll(model_dir: str | Path, data: str | Path) -> np.ndarray:
    """[R] a fitted reward's click NLL of each validation request of ``data``."""
    from gref.data.batch import collate, iter_tables, read_split
    from gref.reranker_io import load_reranker
    from gref.train.steps import data_meta

    model, meta = load_reranker(model_dir).eval(), data_meta(data)
    table = read_split(Path(data) / "sequences" / "valid")
    parts = [model.request_nll(collate(part, meta["num_features"], len(meta["cat_sizes"]), meta["feedback_weights"]))
             for part in iter_tables(table, 512, shuffle=False)]
    return torch.cat(parts).numpy()


def preferred_reward(nll: list[np.ndarray], level: float = 0.95) -> int:
    """Which reward teaches, from each one's per-request held-out click NLL on the same requests
    (``nll[0]`` the configured reward, then the candidates): a candidate only when it fits better
    than the configured one beyond chance -- the ``level`` t interval of the paired per-request
    differences lies above 0 -- and then the lowest mean NLL among such candidates; else 0. A
    near-tie keeps the configured reward: a richer one must earn its place in the data."""
    base = np.asarray(nll[0], dtype=float)
    best = 0
    for i, x in enumerate(nll[1:], start=1):
        gain = base - np.asarray(x, dtype=float)  # > 0: the candidate fits this request better
        if gain.mean() - t_half_width(gain, level) > 0 and np.mean(x) < np.mean(nll[best]):
            best = i
    return best


def choose_reward(outcomes: list[dict], cfg: RewardConfig) -> tuple[int, list[float]]:
    """``preferred_reward`` of fitted rewards (train runs' outcomes, the configured one first) on
    every validation request of ``cfg.data`` (not the epochs' ``eval.max_requests`` slice: on 1,000
    requests the paired test missed a real gain; docs/results.md) -> (its index, each one's mean
    NLL per request)."""
    nll = [held_out_click_nll(o["model_dir"], cfg.data) for o in outcomes]
    return preferred_reward(nll), [float(x.mean()) for x in nll]


def train_reward(cfg: RewardConfig) -> dict:
    """Fit the reward (``cfg.init`` = the pre-trained GReF anchoring its item appeal; without it the
    appeal is a DCN over the features, an ablation). With ``cfg.candidates`` every variant is fitted
    (Train runs ``<name>``, ``<name>-<override>``...) and ``choose_reward`` picks the one returned --
    a candidate only when it fits the validation clicks better than the configured one beyond
    chance -- its outcome's ``candidates`` listing each variant's run and NLL: the data, not the
    recipe's author, decide which list effects the teacher has."""
    from gref.cli import log

    variants = reward_variants(cfg)
    if len(variants) == 1:
        return _fit_reward(cfg)
    base_name = cfg.run.name or f"clickmodel-{time.strftime('%Y%m%d-%H%M%S')}"
    outcomes = [_fit_reward(replace(v, run=replace(v.run, name=variant_name(base_name, ov)))) for ov, v in variants]
    chosen, nll = choose_reward(outcomes, cfg)
    table = [{"overrides": ov, "run_name": o["run_name"], "val_loss": o["best"].get("val_loss"),
              "request_nll": nll[i], "chosen": i == chosen} for i, ((ov, _), o) in enumerate(zip(variants, outcomes))]
    log("reward", "held-out click NLL per request: " + ", ".join(f"{t['run_name']} {t['request_nll']:.5f}" for t in table)
        + f" -> {outcomes[chosen]['run_name']}")
    return {**outcomes[chosen], "candidates": table}


def _fit_reward(cfg: RewardConfig) -> dict:
    from gref import tracking
    from gref.baselines.clickmodel import ListClickModel
    from gref.train.runner import run_training
    from gref.train.steps import build_baseline_model, data_meta

    init = None
    if cfg.init:
        tracking.setup(cfg.tracking)
        policy = tracking.load_reranker_uri(cfg.init)
        init = build_baseline_model(replace(cfg.model, kind="clickmodel", anchor=asdict(policy.cfg)), data_meta(cfg.data))
        assert isinstance(init, ListClickModel)
        init.attractiveness.policy.load_state_dict(policy.state_dict())
    return run_training("baseline", cfg, init=init)


def post_train(cfg: DPOConfig, init: Any = None, reward: RewardConfig | None = None) -> tuple[dict, dict | None]:
    """Post-training from ``init`` (a model, or None: ``cfg.init`` / scratch). When the objective
    scores lists (``cfg.needs_reward``) and ``cfg.reward`` names none, ``reward`` is fitted first
    (anchored on ``reward.init``) and post-training uses it. -> (post-training outcome, the
    reward's outcome or None)."""
    from gref.config import ConfigError
    from gref.train.runner import run_training

    fitted = None
    if cfg.needs_reward and not cfg.reward:
        if reward is None:
            raise ConfigError(f"objective={cfg.objective} pairs={cfg.pairs} needs a reward: reward=<dir or URI> "
                              "or a reward config to fit")
        fitted = train_reward(reward)
        cfg = replace(cfg, reward=fitted["model_dir"])
    return run_training("dpo", cfg, init=init), fitted


def baseline_kinds(requested: list[str]) -> list[str]:
    """The baseline kinds ``requested`` names (``all`` = the paper's); a ConfigError names an unknown one."""
    from gref.baselines import KINDS, PAPER_KINDS
    from gref.config import ConfigError

    if "all" in requested:
        return list(PAPER_KINDS)
    unknown = sorted(set(requested) - set(KINDS))
    if unknown:
        raise ConfigError(f"baselines: unknown kind(s) {unknown} (known: {', '.join(KINDS)}, all)")
    return list(dict.fromkeys(requested))


def baseline_config(kind: str, data: str | Path, overrides: dict | None = None) -> BaselineTrainConfig:
    """configs/baselines/<kind>.yaml for ``data``, then dotted ``overrides`` (e.g. optim.epochs)."""
    from gref.config import load_config, override

    cfg = load_config(BaselineTrainConfig, BASELINE_CONFIGS / f"{kind}.yaml", [f"data={data}"])
    return override(cfg, overrides or {})


def train_baseline(cfg: BaselineTrainConfig) -> dict:
    """Fit one baseline (``cfg.model.kind``) on ``cfg.data``."""
    from gref.train.runner import run_training

    return run_training("baseline", cfg)
