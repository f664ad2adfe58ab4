"""Print the URLs of a running Serve application's Router replicas (direct ingress).

    RAY_SERVE_THROUGHPUT_OPTIMIZED=1 serve run serve/config.yaml     # Serve's high-throughput mode
    python -m serve.targets [--app gref] [--host 127.0.0.1]          # another shell: the replicas' URLs

In Serve's high-throughput mode (Ray >= 2.55; the variable must be in the environment that starts
Ray: ``serve run`` on a laptop, every node's ``ray start`` on a cluster) each Router replica also
serves HTTP on a port of its own; a request sent there skips Serve's HTTP proxy (benchmarks.serve:
p50 plain + 2 ms instead of + 9 ms at 1 client). Port 8000 keeps working through the proxy. Point a
load balancer at these URLs (they change when a replica is replaced: re-read them, or let Serve's
HAProxy ingress, ``RAY_SERVE_ENABLE_HA_PROXY=1`` with haproxy on every node, track them).
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(prog="python -m serve.targets", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--app", default="gref", help="the Serve application's name (serve/config.yaml: gref)")
    p.add_argument("--host", default="", help="print this host instead of the node's address (e.g. 127.0.0.1)")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS", "auto"), help="the Ray cluster (default: auto)")
    args = p.parse_args(argv)
    import ray

    from serve.app import direct_urls

    ray.init(address=args.address, log_to_driver=False, logging_level="ERROR")
    urls = direct_urls(args.app, host=args.host or None)
    if not urls:
        sys.exit(f"no direct-ingress replicas for app '{args.app}': is it running, and did Ray start with "
                 "RAY_SERVE_THROUGHPUT_OPTIMIZED=1 in its environment?")
    print("\n".join(urls))
    return urls


if __name__ == "__main__":
    main()
