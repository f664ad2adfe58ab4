"""Starting / joining Ray the same way in every job (the only Ray import of the library)."""

from __future__ import annotations

import os


def init_ray(address: str | None = None, num_cpus: int | None = None,
             object_store_memory: int | None = None) -> None:
    """Join ``address`` (or $RAY_ADDRESS, e.g. under ``ray job submit``), else start a local Ray.

    A local cluster gets token auth off unless the caller set RAY_AUTH_MODE: it is reachable
    only from this machine and the jobs must run unattended (RAY-NOTES: Ray 2.60 turns it on).
    It runs the dashboard: besides the UI, its state API is what Ray Train's placement-group
    cleaner uses to free a killed trainer's workers (a Tune trial stopped by ASHA); without it
    those CPUs stay reserved and the next trials wait forever.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=num_cpus, object_store_memory=object_store_memory,
             include_dashboard=True, log_to_driver=True)
