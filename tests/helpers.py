"""Small helpers shared by tests (no fixtures: those live in conftest.py)."""

from __future__ import annotations

import random
import socket

import pyarrow as pa

# Ports for servers a test starts (Serve's proxy, a second Ray head). Not port 0's pick: that comes
# from the OS's ephemeral range (32768-60999 here), where the outgoing connections of a Ray starting
# up take their local ports -- one took a port a test had just released ("Failed to bind"). Also
# below Serve's direct-ingress replica ports (30000+) and above Ray's worker ports (10002-19999).
_TEST_PORTS = range(20000, 30000)


def free_ports(n: int = 1) -> list[int]:
    """``n`` distinct ports that are free now, outside the ranges Ray and the OS hand out."""
    ports: list[int] = []
    for port in random.sample(_TEST_PORTS, len(_TEST_PORTS)):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == n:
            return ports
    raise RuntimeError(f"fewer than {n} free ports in {_TEST_PORTS}")


def sequences_of(log_table: pa.Table, num_cols: list[str] | None = None) -> tuple[pa.Table, dict]:
    """Raw-log rows -> encoded sequence records and the meta of gref.train.steps.data_meta, in
    memory (what jobs.prepare writes, without Ray and without a split)."""
    from gref.data.features import FeatureSpec, partial_stats
    from gref.data.schema import DatasetConfig, canonical_schema, feature_columns
    from gref.data.sequences import build_sequences

    cfg = DatasetConfig()
    mapping = canonical_schema(log_table.schema, cfg)
    nums, cats = feature_columns(list(mapping.values()))
    seqs, _ = build_sequences(log_table.select(list(mapping)), nums, cats, (0, 0), cfg.max_candidates)
    spec = FeatureSpec.fit(partial_stats(seqs, nums, cats), nums, cats)
    meta = {"num_features": len(nums), "num_cols": nums, "cat_cols": cats, "cat_sizes": spec.cat_sizes,
            "feedback_weights": cfg.feedback_weights}
    return spec.encode(seqs), meta
