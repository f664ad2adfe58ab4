"""The training recipe's stages beyond pre-training, in one place for every caller (jobs.reward,
jobs.baseline, gref.pipeline, gref.experiments, gref.loop): fit the list-wise reward anchored on a
pre-trained GReF, post-train (the reward first when the objective needs one), and train a baseline
from its configs/baselines/<kind>.yaml. Each returns the Ray Train runner's outcome dict
(run_name, model_dir, mlflow_run_id, best, history, ...)."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from gref.train.config import BaselineTrainConfig, DPOConfig, RewardConfig

# the baselines' recipes (one YAML per kind), beside the project's other configs
BASELINE_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "baselines"


def train_reward(cfg: RewardConfig) -> dict:
    """Fit the reward (``cfg.init`` = the pre-trained GReF anchoring its item appeal; without it the
    appeal is a DCN over the features, an ablation)."""
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
