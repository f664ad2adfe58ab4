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


def data_context(whole_split_reads: bool = False):
    """This process's Ray Data context, set up the same way by every job that builds a dataset.

    ``whole_split_reads``: read Parquet through Ray Data's first datasource
    (``use_datasource_v2=False``), for a Train run's split, read whole and materialised: 2.60's
    default V2 reader lists the files in a separate task before reading them, a fixed ~1-2 s per
    read on 2 cores (medians, a train split of 2,338 requests: V2 2.25 s, V1 0.29 s; of 31,486:
    2.61 s, 1.50 s; benchmarks/results/read-parquet-cpu.json). Not for jobs.prepare's scan of the
    raw logs: there V1 made the whole job ~3x slower (100k requests, side by side: 62 / 60 s
    against V2's 23 / 20 s). The context is captured when a dataset is created, so it must be set
    in the process that calls ``read_parquet``.
    """
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.use_datasource_v2 = not whole_split_reads
    ctx.enable_progress_bars = False  # one line per stage from the jobs instead of Ray's per-operator log
    return ctx
