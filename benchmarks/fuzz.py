"""A large fuzzing run of the Serve endpoint over real HTTP (prints JSON; not a test).

    python -m benchmarks.fuzz [--cases 10000] [--clients 4] [--url http://127.0.0.1:8000 --key KEY]

Without ``--url`` it starts the Serve app on a free loopback port with a tiny untrained GReF arm
(the model's weights do not matter to what is checked) and an API key. It sends the hand-picked
corpus of gref.serving.fuzzing to /rerank and /feedback, then ``--cases`` bodies drawn by its
hypothesis strategies (fixed seed), ``--clients`` at a time. Counted: answers per status, 5xx,
hangs (no answer within ``--timeout`` s), 4xx without a message. The contract: 5xx = 0, hangs = 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from benchmarks.tiny_app import tiny_app


def draw(count: int) -> list[tuple[bytes, str]]:
    """``count`` bodies from the strategies, the same ones every run (derandomized)."""
    from hypothesis import HealthCheck, Phase, given, settings

    from gref.serving.fuzzing import strategies

    drawn: list[tuple[bytes, str]] = []

    @settings(max_examples=count, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategies())
    def collect(case):
        drawn.append(case)

    collect()
    return drawn


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=10_000, help="generated bodies (beside the hand-picked corpus)")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds without an answer that count as a hang")
    p.add_argument("--url", default="", help="a running app (default: start one here)")
    p.add_argument("--key", default=os.environ.get("GREF_API_KEY", ""), help="API key for --url")
    args = p.parse_args()
    from gref.serving.fuzzing import feedback_pathological, pathological

    url, key = (args.url, args.key) if args.url else tiny_app(Path(tempfile.mkdtemp(prefix="gref-fuzz-")))
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    cands = [{"item_id": f"i{i}", "num_item_f0": 0.1 * i} for i in range(6)]
    served = requests.post(f"{url}/rerank", json={"user_id": "fuzz", "candidates": cands, "n": 3},
                           headers=headers, timeout=60)
    served.raise_for_status()
    answer = served.json()
    cases = [("/rerank", name, data, ctype) for name, data, ctype in pathological(cands)]
    cases += [("/feedback", name, data, ctype)
              for name, data, ctype in feedback_pathological(answer["request_id"], answer["items"])]
    for i, (data, ctype) in enumerate(draw(args.cases)):
        cases.append(("/rerank" if i % 4 else "/feedback", f"generated-{i}", data, ctype))

    statuses: Counter = Counter()
    bad: list[dict] = []
    lock = threading.Lock()
    local = threading.local()

    def one(case):
        path, name, data, ctype = case
        if not hasattr(local, "s"):
            local.s = requests.Session()
        h = {**headers, **({"Content-Type": ctype} if ctype else {})}
        try:
            r = local.s.post(f"{url}{path}", data=data, headers=h, timeout=args.timeout)
            status = r.status_code
            ok = status < 500 and (status < 400 or bool(r.json().get("error")))
        except requests.Timeout:
            status, ok = "hang", False
        except (requests.RequestException, ValueError) as err:
            status, ok = f"broken:{type(err).__name__}", False
        with lock:
            statuses[str(status)] += 1
            if not ok and len(bad) < 20:
                bad.append({"path": path, "case": name, "status": status, "body_head": data[:120].decode(errors="replace")})

    started = time.time()
    with ThreadPoolExecutor(args.clients) as pool:
        list(pool.map(one, cases))
    result = {"cases": len(cases), "hand_picked": len(cases) - args.cases, "generated": args.cases,
              "seconds": round(time.time() - started, 1), "statuses": dict(sorted(statuses.items())),
              "5xx": sum(v for k, v in statuses.items() if k.isdigit() and int(k) >= 500),
              "hangs": statuses.get("hang", 0), "failures": bad}
    print(json.dumps(result, indent=2))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
