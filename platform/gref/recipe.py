"""The training recipe's stages beyond pre-training, in one place for every caller (jobs.reward,
jobs.baseline, gref.pipeline, gref.experiments, gref.loop): fit the list-wise reward anchored on a
pre-trained GReF, post-train (the reward first when the objective needs one), and train a baseline
from its configs/baselines/<kind>.yaml. Each returns the Ray Train runner's outcome dict
(run_name, model_dir, mlflow_run_id, best, history, ...)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

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
        raise ConfigError("reward.candidates are compared by their held-out click NLL: they need eval.metric=val_loss")
    base = replace(cfg, candidates=[])
    return [({}, base), *((dict(c), override(base, c)) for c in cfg.candidates)]


def lowest_click_nll(outcomes: list[dict]) -> int:
    """Index of the fitted reward whose selected epoch has the lowest held-out click NLL
    (``best["val_loss"]``; NaN never wins); on a tie the earlier one, i.e. the base config."""
    losses = [o["best"].get("val_loss", math.nan) for o in outcomes]
    return min(range(len(losses)), key=lambda i: (math.inf if math.isnan(losses[i]) else losses[i], i))


def train_reward(cfg: RewardConfig) -> dict:
    """Fit the reward (``cfg.init`` = the pre-trained GReF anchoring its item appeal; without it the
    appeal is a DCN over the features, an ablation). With ``cfg.candidates`` every variant is fitted
    (Train runs ``<name>``, ``<name>-<override>``...) and the one of lowest held-out click NLL is
    returned, its outcome's ``candidates`` listing each variant's run and NLL: the data, not the
    recipe's author, decide which list effects the teacher has."""
    from gref.cli import log

    variants = reward_variants(cfg)
    if len(variants) == 1:
        return _fit_reward(cfg)
    base_name = cfg.run.name or f"clickmodel-{time.strftime('%Y%m%d-%H%M%S')}"
    outcomes = [_fit_reward(replace(v, run=replace(v.run, name=variant_name(base_name, ov)))) for ov, v in variants]
    chosen = lowest_click_nll(outcomes)
    table = [{"overrides": ov, "run_name": o["run_name"], "val_loss": o["best"].get("val_loss"), "chosen": i == chosen}
             for i, ((ov, _), o) in enumerate(zip(variants, outcomes))]
    log("reward", "held-out click NLL: " + ", ".join(f"{t['run_name']} {t['val_loss']:.5f}" for t in table)
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
