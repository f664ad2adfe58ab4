"""Starting / joining Ray the same way in every job (the only Ray import of the library)."""

from __future__ import annotations

import os


def init_ray(address: str | None = None, num_cpus: int | None = None,
             object_store_memory: int | None = None, include_dashboard: bool = True,
             temp_dir: str | None = None) -> None:
    """Join ``address`` (or $RAY_ADDRESS, e.g. under ``ray job submit``), else start a local Ray.

    A local cluster keeps Ray 2.60's token authentication (``ray.init`` writes the token to
    ~/.ray/auth_token and uses it, unattended): its GCS and raylets listen on every interface
    (Ray resolves a loopback ``node_ip_address`` to the reachable one on purpose), so without
    auth anyone on the network could run code on it. Set RAY_AUTH_MODE=disabled only where the
    machine is isolated (the tests do, RAY-NOTES). It runs the dashboard (on 127.0.0.1): besides
    the UI, its state API is what Ray Train's placement-group cleaner uses to free a killed
    trainer's workers (a Tune trial stopped by ASHA); without it those CPUs stay reserved.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    ray.init(num_cpus=num_cpus, object_store_memory=object_store_memory, include_dashboard=include_dashboard,
             log_to_driver=True, _temp_dir=temp_dir)
