"""The continuous loop's settings (``configs/continuous.yaml``; docs/continuous.md), where its files
live, and the Serve application it is handed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from gref.config import ConfigError
from gref.data.schema import DatasetConfig
from gref.serving.promotion import PromotionRule
from gref.tracking import TrackingConfig
from gref.train.config import DPOConfig, RewardConfig


@dataclass
class ContinuousConfig:
    out: str = "runs/continuous"  # state.json, feedback.db, rounds/<r>/{logs,prep,window}, ray/, summary.json
    world: str = "runs/pipeline/sim/world"  # the simulated users (their clicks; the oracle only audits); '' = none
    traffic: Literal["simulated", "clients"] = "simulated"  # simulated: the loop sends the world's users | clients: real clients call the app
    champion: str = "models:/gref-reranker@champion"  # round 0's champion
    rounds: int = 6  # challengers trained and decided (round 0, serving only, comes first)
    requests: int = 4000  # requests per A/B look, both arms (sent, or awaited from clients; round 0: the champion)
    concurrency: int = 8  # requests in flight
    n: int = 10  # list length
    explore: float = 0.1  # share of requests served a sampled list (training data with alternatives)
    explore_temperature: float = 1.0  # their sampling temperature
    replay_rounds: int = 1  # earlier rounds' traffic trained on besides the newest round's
    rule: PromotionRule = field(default_factory=PromotionRule)
    aa: bool = False  # A/A check: the challenger is the champion itself (a promotion is a false one)
    audit_requests: int = 2000  # a fixed set of simulated requests the oracle scores every version on (0 = off)
    seed: int = 0
    app_name: str = "gref-loop"  # the Serve app the loop (re)deploys (clients: the app they call, route /)
    host: str = "127.0.0.1"  # where Serve's HTTP proxy listens (0.0.0.0: clients on other machines)
    port: int = 8000  # HTTP port of the Serve app the loop runs
    feedback_wait_s: float = 60.0  # clients: a list's clicks count once it was served this long ago
    look_timeout_s: float = 3600.0  # clients: the longest a look waits for its requests (then decides on what came)
    direct_ingress: bool = False  # looks go to the Router replica's own port, not Serve's proxy (Serve's
    #                               high-throughput mode, on in the Ray this job starts; docs/serving.md: ~2x the traffic)
    app: dict = field(default_factory=dict)  # more serve.app ServeConfig args (replicas, reranker_cpus, ...)
    dataset: DatasetConfig = field(default_factory=lambda: DatasetConfig(
        split="quantile", valid_fraction=0.15, test_fraction=0.05))  # a round spans minutes: split by time quantiles
    reward: RewardConfig = field(default_factory=RewardConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def version_uri(self, version: int) -> str:
        """A version of the loop's registered model."""
        return f"models:/{self.tracking.registered_model}/{version}"

    def feedback_db(self) -> str:
        """The store the app writes to and each round exports: ``app.feedback_db`` (e.g. PostgreSQL)
        or ``out``/feedback.db."""
        return str(self.app.get("feedback_db") or Path(self.out).resolve() / "feedback.db")

    def training_storage(self) -> Path:
        """Where the rounds' training runs keep their checkpoints and models (one directory per run name)."""
        return Path(self.out).resolve() / "ray"

    def reward_dir(self, r: int) -> Path:
        """Round r's reward model (the challenger's teacher): the one its post-training run names
        (with ``reward.candidates``, the variant gref.recipe.train_reward chose), else where
        train_reward saves the round's reward."""
        post = self.training_storage() / f"round{r}-post" / "outcome.json"
        if post.exists() and (teacher := json.loads(post.read_text())["params"].get("reward")):
            return Path(teacher)
        return self.training_storage() / f"round{r}-reward" / "model"


@dataclass(frozen=True)
class ServeApp:
    """The Serve application the loop deploys each round (jobs.continuous passes serve.app's)."""

    build: Callable[[dict], Any]  # ServeConfig args -> a bound Serve application
    direct_urls: Callable[..., list[str]]  # (app name, host=, node_ip=) -> the Router replicas' own URLs


def check(cfg: ContinuousConfig) -> None:
    """Settings that cannot work together, said before anything starts."""
    if cfg.world and not (Path(cfg.world) / "world.json").exists():
        raise ConfigError(f"no simulated world at '{cfg.world}' (make demo / jobs.simulate write DIR/world)")
    if cfg.traffic == "simulated" and not cfg.world:
        raise ConfigError("traffic=simulated sends the simulated users of a world: set world=DIR "
                          "(or traffic=clients to wait for real clients)")
    if cfg.requests < 1 or cfg.feedback_wait_s < 0 or cfg.look_timeout_s <= 0:
        raise ConfigError("requests must be >= 1, feedback_wait_s >= 0 and look_timeout_s > 0")

