"""The raw-log contract (SPEC.md) and the dataset config that maps other column names onto it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pyarrow as pa

REQUIRED = ("request_id", "user_id", "ts", "item_id", "upstream_rank", "position", "click")
OPTIONAL_FEEDBACK = ("like", "long_view")
FEEDBACK = ("click", *OPTIONAL_FEEDBACK)
# request-level 0/1 flags, optional: ``randomized`` = the request was in a randomisation bucket (its n
# shown items a uniformly random order of n of its m candidates), ``explored`` = its list was sampled
# from the served GReF model (the endpoint's exploration, exported by FeedbackStore.export_logs); both
# make off-policy estimates possible (gref.evaluation, gref.offpolicy)
OPTIONAL_REQUEST = ("randomized", "explored")


class SchemaError(ValueError):
    """The logs do not follow the raw-log contract (names the offending column)."""


@dataclass
class DatasetConfig:
    """How jobs.prepare reads a team's logs and builds training data from them."""

    # raw column name -> canonical name, e.g. {"req": "request_id", "rank": "upstream_rank"}
    column_map: dict[str, str] = field(default_factory=dict)
    # Eq. 7: S_i = alpha / P_i + gamma * U_i, with U_i = sum_f weight_f * feedback_f
    alpha: float = 1.0
    gamma: float = 1.0
    feedback_weights: dict[str, float] = field(
        default_factory=lambda: {"click": 1.0, "like": 1.5, "long_view": 0.8})
    split: Literal["auto", "days", "quantile"] = "auto"  # days | quantile | auto (days when every split gets requests, else quantiles)
    valid_days: int = 1  # calendar days (UTC) before the test days -> validation split
    test_days: int = 2  # last calendar days of the logs -> test split (the paper's time split)
    valid_fraction: float = 0.1  # split=quantile: share of requests (by time) before the test share
    test_fraction: float = 0.2  # split=quantile: latest share of requests -> test
    ts_unit: Literal["auto", "ms", "s"] = "auto"  # ms | s | auto (values below 1e11 are seconds: detected, scaled, reported)
    click_model_context: str = ""  # a request-level cat_* column (a query): click models key documents by (it, item_id)
    item_id_feature: bool = False  # also embed item_id as categorical cat_item_id (rare ids -> OOV)
    max_candidates: int = 200  # requests with more candidates are quarantined (memory guard)
    min_category_count: int = 1  # categorical values seen fewer times in train map to OOV (id columns: 5+)
    slice_mb: int = 1024  # requests are grouped in hash slices of about this many MB of raw rows (in memory),
    #                      one task per slice, asking Ray for 4x this in memory (one per CPU at most)
    features: str = ""  # a features.json to encode with instead of fitting one (incremental prepare: a model's
    #                    standardisation and vocabularies carry over; unseen categories -> OOV)


def canonical_schema(schema: pa.Schema, cfg: DatasetConfig) -> dict[str, str]:
    """Validate a Parquet schema against the contract after applying ``column_map``.

    Returns {raw name: canonical name} for every column kept. Raises SchemaError naming the
    first missing required column, or a column whose type cannot hold what the contract says.
    """
    mapping = {raw: cfg.column_map.get(raw, raw) for raw in schema.names}
    canonical = {v: k for k, v in mapping.items()}
    unknown_targets = set(cfg.column_map) - set(schema.names)
    if unknown_targets:
        raise SchemaError(f"column_map names column(s) not in the logs: {sorted(unknown_targets)}")
    for name in REQUIRED:
        if name not in canonical:
            raise SchemaError(f"required column '{name}' is missing from the logs "
                              f"(columns: {', '.join(schema.names)})")
    for name in ("upstream_rank", "position", *[f for f in (*FEEDBACK, *OPTIONAL_REQUEST) if f in canonical]):
        typ = schema.field(canonical[name]).type
        if not (pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_null(typ)
                or (name in OPTIONAL_REQUEST and pa.types.is_boolean(typ))):
            raise SchemaError(f"column '{name}' must be numeric, got {typ}")
    ts_type = schema.field(canonical["ts"]).type
    if not (pa.types.is_integer(ts_type) or pa.types.is_timestamp(ts_type)):
        raise SchemaError(f"column 'ts' must be int64 ms or a timestamp, got {ts_type}")
    for name, raw in canonical.items():
        if name.startswith("num_") and not (pa.types.is_floating(schema.field(raw).type)
                                            or pa.types.is_integer(schema.field(raw).type)):
            raise SchemaError(f"column '{name}' must be numeric, got {schema.field(raw).type}")
    return {raw: canon for raw, canon in mapping.items()
            if canon in REQUIRED or canon in OPTIONAL_FEEDBACK or canon in OPTIONAL_REQUEST
            or canon.startswith("num_") or canon.startswith("cat_")}


def feature_columns(canonical_names: list[str]) -> tuple[list[str], list[str]]:
    """(numeric feature columns, categorical feature columns), in a stable order."""
    num = sorted(c for c in canonical_names if c.startswith("num_"))
    cat = sorted(c for c in canonical_names if c.startswith("cat_"))
    return num, cat
