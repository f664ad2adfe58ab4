"""Run by tests/integration/test_serve.py in a child process: a Ray cluster of its own in Serve's
high-throughput mode (RAY_SERVE_THROUGHPUT_OPTIMIZED=1: direct ingress, gRPC between deployments,
set before Ray starts), the app with two arms, and the same calls through the Router replica's
own port (found by serve.app.direct_urls, and by ``python -m serve.targets``) and through Serve's
HTTP proxy. Prints what it saw as one JSON line.

    python tests/integration/serve_direct_child.py MODEL_DIR FEEDBACK_DB CANDIDATES_JSON PROXY_PORT
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray  # noqa: E402
import requests  # noqa: E402
from ray import serve  # noqa: E402

from serve.app import build_app, direct_urls  # noqa: E402


def calls(url: str, candidates: list[dict]) -> dict:
    """A rerank per user, a bad body, feedback on the first list."""
    answers = [requests.post(f"{url}/rerank", json={"user_id": f"u-{i}", "candidates": candidates, "n": 4},
                             timeout=60) for i in range(6)]
    bad = requests.post(f"{url}/rerank", json={"user_id": "u-0", "candidates": candidates, "n": 0}, timeout=60)
    first = answers[0].json()
    feedback = requests.post(f"{url}/feedback", timeout=60, json={
        "request_id": first["request_id"], "feedback": [{"item_id": first["items"][0], "click": 1}]})
    return {"status": [a.status_code for a in answers], "arms": [a.json().get("arm") for a in answers],
            "items": [a.json().get("items") for a in answers], "bad": [bad.status_code, bad.json().get("error")],
            "feedback": feedback.status_code, "timing": answers[0].headers.get("Server-Timing", "")}


def main(model_dir: str, db: str, candidates_json: str, port: int) -> None:
    ray.init(address="local", num_cpus=2, object_store_memory=300 * 2**20, include_dashboard=False,
             log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"arms": {"a": model_dir, "b": model_dir}, "feedback_db": db, "reranker_cpus": 0.1,
                         "router_cpus": 0.05}), name="direct", route_prefix="/",
              logging_config={"enable_access_log": False})
    candidates = json.loads(candidates_json)
    urls = direct_urls("direct", host="127.0.0.1")
    cli = subprocess.run([sys.executable, "-m", "serve.targets", "--app", "direct", "--host", "127.0.0.1",
                          "--address", ray.get_runtime_context().gcs_address], capture_output=True, text=True)
    out = {"urls": urls, "cli": cli.stdout.split(), "direct": calls(urls[0], candidates),
           "proxy": calls(f"http://127.0.0.1:{port}", candidates)}
    print(json.dumps(out), flush=True)
    ray.shutdown()  # no serve.shutdown: direct ingress drains a replica for >= 30 s before stopping it


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
