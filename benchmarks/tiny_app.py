"""The Serve app on a free loopback port with a tiny untrained GReF arm, for the endpoint
benchmarks (fuzzing, load with faults) where the model's quality does not matter."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_app(tmp: Path, name: str = "bench", proxy_location: str = "EveryNode", **serve_args: Any) -> tuple[str, str]:
    """Simulate a small world, prepare it, save an untrained GReF, make an API key (all scopes)
    and deploy the app (``serve_args`` = ServeConfig overrides; ``proxy_location`` HeadOnly where
    several simulated nodes share this machine's port); returns (url, key)."""
    from ray import serve

    from gref.model.config import ModelConfig
    from gref.reranker_io import save_reranker
    from gref.ray_utils import init_ray
    from gref.serving.auth import KeyFile
    from gref.train.steps import build_model, data_meta
    from gref.data import prepare
    from gref.data.schema import DatasetConfig
    from jobs import simulate
    from serve.app import build_app

    simulate.main(["--requests", "600", "--out", str(tmp / "sim"), "n_users=100", "n_items=500", "days=3"])
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    init_ray()
    prepare.run(str(tmp / "sim/logs"), str(tmp / "prep"), DatasetConfig(valid_days=1, test_days=1))
    model_dir = save_reranker(tmp / "model", build_model(ModelConfig(d_model=32, enc_layers=1, dec_layers=1),
                                                         data_meta(tmp / "prep")), tmp / "prep/features.json")
    key = KeyFile(tmp / "keys.json").create("bench", ["rerank", "feedback", "metrics"])
    port = _free_port()
    serve.start(proxy_location=proxy_location, http_options={"host": "127.0.0.1", "port": port})
    args = {"arms": {"gref": str(model_dir)}, "feedback_db": str(tmp / "fb.db"), "replicas": 1,
            "api_keys": str(tmp / "keys.json"), **serve_args}
    serve.run(build_app(args), name=name, route_prefix="/", logging_config={"enable_access_log": False})
    return f"http://127.0.0.1:{port}", key
