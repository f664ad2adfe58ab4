"""Small helpers shared by tests (no fixtures: those live in conftest.py)."""

from __future__ import annotations

import pyarrow as pa


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
