"""The Serve application's configuration (``args`` of serve/config.yaml), checked and resolved
before anything deploys: a bad value fails ``serve run`` / ``serve deploy`` with its message."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from gref.config import from_dict
from gref.serving.ab import check_weights
from gref.serving.auth import Authenticator
from gref.serving.inference import DecodeMode


@dataclass
class ServeConfig:
    """``args`` of the application (serve/config.yaml or ``serve run serve.app:build_app key=value``)."""

    arms: dict = field(default_factory=lambda: {  # arm name -> model URI (registry alias, run, directory)
        "gref": "models:/gref-reranker@champion", "nar4rec": "models:/gref-nar4rec@champion"})  # Table 4
    weights: dict = field(default_factory=dict)  # arm -> traffic weight; {} = equal (user_config overrides)
    salt: str = ""  # part of the user hash: a new salt reshuffles users; "" = one per experiment (hash of the arms)
    tracking_uri: str = ""  # MLflow store of the registry; "" = $MLFLOW_TRACKING_URI or ./mlflow.db
    api_keys: str = ""  # API-key file (python -m jobs.apikey); "" = $GREF_API_KEYS_FILE; neither = no auth (loopback only)
    feedback_db: str = "runs/serve/feedback.db"  # served lists + feedback: a sqlite file (made absolute; one
    #                                             Router) or a postgresql://user:pass@host/db URL (several Routers)
    replicas: int = 1  # reranker replicas per arm with colocate false (ignored when autoscaling is set)
    routers: int = 1  # Router replicas; more than one wants a postgresql:// feedback_db (sqlite: one writer host)
    autoscaling: dict = field(default_factory=dict)  # e.g. {min_replicas: 1, max_replicas: 4, target_ongoing_requests: 8}
    reranker_cpus: float = 0.25  # CPUs per reranker replica (fractional: 2-core laptops)
    reranker_gpus: float = -1.0  # GPUs per reranker replica; -1 = 0.25 (4 share a GPU) when the cluster has GPUs, else 0
    router_cpus: float = 0.1
    router_resources: dict = field(default_factory=dict)  # custom resources, e.g. {gref_head: 0.01} pins the
    #                                                       Router and its sqlite file to the head (cluster.yaml)
    max_batch_size: int = 16  # @serve.batch: requests decoded together
    colocate: bool = True  # the Router decodes the arms itself: one process hop less per request (the arms
    #                        scale with `routers`); false = a Reranker deployment per arm, scaling (and
    #                        holding GPUs) on its own: serve/config.cluster.yaml
    decode_mode: DecodeMode = "auto"  # gref.model.accel; auto = cuda_graphs
    #                                                                           on a GPU, else eager
    batch_wait_timeout_s: float = 0.0  # @serve.batch: how long a batch waits to fill; 0 = never idle: a batch is
    #                                    what queued while the previous one ran (benchmarks.serve: 0.005 was slower)
    max_candidates: int = 200  # per request
    max_n: int = 32  # longest list a request may ask for (the model's max_length caps it too)
    max_body_bytes: int = 1_000_000
    body_timeout_s: float = 10.0  # a request body must arrive within this (slow clients get a 408, not a slot)
    store_timeout_s: float = 2.0  # longest wait for the feedback store's lock; then a 503 with the reason
    retention_days: float = 0.0  # served lists (and their feedback) older than this are deleted; 0 = kept
    explore: float = 0.0  # share of requests served a list sampled from the model (GReF arms), not its greedy
    #                       list: training data with alternatives; the list's log-probability is stored
    explore_temperature: float = 1.0  # sampling temperature of those lists (1 = the model's own distribution)



def serve_config(args: dict | None) -> ServeConfig:
    """``args`` -> a checked ServeConfig whose paths hold wherever a replica runs: the feedback file
    and the API-key file made absolute (replicas run in other directories), the key file taken from
    $GREF_API_KEYS_FILE when unset and parsed once here (a malformed file fails the deploy), the
    MLflow store resolved as the jobs resolve it, the traffic weights checked."""
    from gref import tracking

    cfg = from_dict(ServeConfig, dict(args or {}))  # unknown keys and Literal options fail here
    if not 0.0 <= cfg.explore <= 1.0 or cfg.explore_temperature <= 0:
        raise ValueError(f"explore must be in [0, 1] and explore_temperature > 0, got {cfg.explore}, "
                         f"{cfg.explore_temperature}")
    feedback_db = cfg.feedback_db if "://" in cfg.feedback_db else str(Path(cfg.feedback_db).resolve())
    api_keys = cfg.api_keys or os.environ.get("GREF_API_KEYS_FILE", "")
    if api_keys:
        api_keys = str(Path(api_keys).resolve())
        if not Path(api_keys).exists():
            raise ValueError(f"api_keys: no file at {api_keys} (python -m jobs.apikey create --name ... "
                             f"--file {api_keys})")
        Authenticator(api_keys)
    check_weights(cfg.weights or dict.fromkeys(cfg.arms, 1.0), list(cfg.arms))
    return replace(cfg, feedback_db=feedback_db, api_keys=api_keys,
                   tracking_uri=tracking.tracking_uri(tracking.TrackingConfig(uri=cfg.tracking_uri)))
