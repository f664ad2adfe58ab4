"""Search spaces from YAML: a dotted key of the trial config -> how Tune varies it.

    space:
      pretrain.model.omtp_heads: {grid: [1, 2, 4]}  # every value, crossed with the other grid keys
      pretrain.lambda2: {uniform: [0.25, 2.0]}      # sampled once per trial
      pretrain.optim.lr: {loguniform: [3.0e-4, 3.0e-3]}
      dpo.beta: {loguniform: [0.03, 0.3]}
      pairs.alpha: {choice: [0.5, 1.0, 2.0]}        # Eq. 7 weights: the trial re-derives its pairs
      pretrain.optim.batch_size: {randint: [128, 513]}  # low <= x < high (Tune's randint)
      dpo.optim.epochs: 2                           # a plain value fixes the key in every trial

Keys address a ``TrialConfig`` (``pairs``, ``pretrain``, ``dpo``); every key and value is
checked against the config dataclasses before any trial starts, and errors name the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gref.config import ConfigError, override
from gref.train.config import DPOConfig, OptimConfig, PretrainConfig

KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
# set by the sweep for every trial (paths, names, tracking): not hyper-parameters
RESERVED = ("pretrain.data", "dpo.data", "dpo.init", "pretrain.run.name", "dpo.run.name",
            "pretrain.run.storage", "dpo.run.storage", "pretrain.tracking", "dpo.tracking",
            "pretrain.eval.world", "dpo.eval.world", "pretrain.eval.metric", "dpo.eval.metric", "dpo.register",
            "pretrain.scaling.num_workers", "dpo.scaling.num_workers")  # >= 1, checked once for the sweep


@dataclass
class PairsConfig:
    alpha: float | None = None  # Eq. 7 position weight; None = the prepared data's
    gamma: float | None = None  # Eq. 7 feedback weight; None = the prepared data's


@dataclass
class TrialConfig:
    """What one trial runs: the pair construction, then pre-training, then Rerank-DPO."""

    pairs: PairsConfig = field(default_factory=PairsConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    dpo: DPOConfig = field(default_factory=lambda: rerank_dpo())  # defined below


def rerank_dpo() -> DPOConfig:
    """A sweep's post-training: the paper's Rerank-DPO on each trial's Eq. 7 pairs (a sweep fits no
    reward, so the default recipe's distillation is out) at the learning rate measured best for it."""
    return DPOConfig(objective="dpo", pairs="logged", optim=OptimConfig(lr=2e-5, epochs=2))


def _values(key: str, spec: Any) -> list[Any]:
    """The values a spec can produce (bounds for ranges), after checking its shape."""
    where = f"space.{key}"
    if not isinstance(spec, dict):
        return [spec]
    if len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise ConfigError(f"{where}: give exactly one of {', '.join(KINDS)} (or a plain value), got {spec!r}")
    kind, args = next(iter(spec.items()))
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{where}: '{kind}' needs a non-empty list, got {args!r}")
    if kind in ("grid", "choice"):
        return args
    if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise ConfigError(f"{where}: '{kind}' needs [low, high] numbers, got {args!r}")
    low, high = args
    if not low < high:
        raise ConfigError(f"{where}: '{kind}' needs low < high, got {args!r}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: 'loguniform' needs 0 < low, got {args!r}")
    if kind == "randint" and not (float(low).is_integer() and float(high).is_integer()):
        raise ConfigError(f"{where}: 'randint' needs integer bounds, got {args!r}")
    return args


def check_space(space: dict[str, Any], base: TrialConfig) -> dict[str, Any]:
    """Validate ``space`` against ``base``; returns it unchanged. Raises ConfigError naming the key."""
    if not isinstance(space, dict) or not space:
        raise ConfigError("space: needs at least one key, e.g. 'dpo.beta: {loguniform: [0.03, 0.3]}'")
    for key, spec in space.items():
        if any(key == r or key.startswith(r + ".") for r in RESERVED):
            raise ConfigError(f"space.{key}: set by the sweep itself, not a hyper-parameter")
        for value in _values(key, spec):
            try:
                override(base, {key: value})
            except ConfigError as err:
                raise ConfigError(f"space.{key}: {err}") from None
    return space


def to_tune(space: dict[str, Any]) -> dict[str, Any]:
    """Tune's param_space for a checked ``space`` (keys stay dotted; ``override`` applies them)."""
    from ray import tune

    make = {"grid": tune.grid_search, "choice": tune.choice,
            "uniform": lambda a: tune.uniform(*a), "loguniform": lambda a: tune.loguniform(*a),
            "randint": lambda a: tune.randint(int(a[0]), int(a[1]))}
    return {key: make[next(iter(spec))](next(iter(spec.values()))) if isinstance(spec, dict) else spec
            for key, spec in space.items()}


def is_log_scale(spec: Any) -> bool:
    return isinstance(spec, dict) and "loguniform" in spec
