"""Feature statistics, categorical vocabularies and the encoding of sequence records.

Fitted on the train split only (so validation/test see unseen values as out-of-vocabulary).
Numeric features are standardised with the train mean/std; a null (missing) value becomes 0
after standardisation, i.e. it is imputed with the train mean. Categorical ids: 0 = padding,
1 = out-of-vocabulary (unseen or null), 2.. = values by decreasing train frequency.
Saved as ``OUT/features.json``; serving encodes requests with the same object.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

PAD_ID, OOV_ID = 0, 1


def as_vocab_keys(values: pa.Array) -> pa.Array | None:
    """Categorical values as the strings the vocabulary keys them by (Python's ``str(v)``), for
    Arrow to count and look up in C++: string and integer columns (Arrow's integer-to-string cast
    is ``str``'s); None for other types (floats, booleans print otherwise), which take Python."""
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        return values
    if pa.types.is_integer(values.type):
        return pc.cast(values, pa.string())
    return None


def partial_stats(table: pa.Table, num_cols: list[str], cat_cols: list[str]) -> dict[str, Any]:
    """Sufficient statistics of one batch of raw sequence records."""
    F = len(num_cols)
    num = table.column("num_raw").combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, F or 1)
    count, total, sumsq = np.zeros(F, np.int64), np.zeros(F), np.zeros(F)
    for j in range(F):  # a feature at a time: one float64 column in memory, not three [rows, F] copies
        x = num[:, j].astype(np.float64)
        finite = np.isfinite(x)
        x[~finite] = 0.0
        count[j], total[j], sumsq[j] = finite.sum(), x.sum(), np.dot(x, x)
    cats = {}
    for c in cat_cols:
        values = table.column(c).combine_chunks().flatten()
        keys = as_vocab_keys(values)
        if keys is None:
            cats[c] = Counter(str(v) for v in values.to_pylist() if v is not None)
        else:
            counts = pc.value_counts(keys.drop_null())
            cats[c] = Counter(dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist())))
    return {"count": count, "sum": total, "sumsq": sumsq, "cats": cats}


def merge_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    total = {"count": 0, "sum": 0, "sumsq": 0, "cats": {}}
    for p in parts:
        for k in ("count", "sum", "sumsq"):
            total[k] = total[k] + p[k]
        for c, counter in p["cats"].items():
            total["cats"].setdefault(c, Counter()).update(counter)
    return total


@dataclass
class FeatureSpec:
    num_cols: list[str]
    cat_cols: list[str]
    mean: list[float]
    std: list[float]
    vocab: dict[str, dict[str, int]] = field(default_factory=dict)

    @staticmethod
    def fit(stats: dict[str, Any], num_cols: list[str], cat_cols: list[str], min_count: int = 1) -> FeatureSpec:
        count = np.maximum(np.asarray(stats["count"], dtype=np.float64), 1.0)
        mean = np.asarray(stats["sum"], dtype=np.float64) / count
        var = np.asarray(stats["sumsq"], dtype=np.float64) / count - mean ** 2
        std = np.sqrt(np.maximum(var, 0.0))
        std = np.where(std > 1e-8, std, 1.0)
        vocab = {}
        for c in cat_cols:
            counter = stats["cats"].get(c, Counter())
            kept = sorted((v for v, k in counter.items() if k >= min_count), key=lambda v: (-counter[v], v))
            vocab[c] = {v: i + 2 for i, v in enumerate(kept)}
        return FeatureSpec(num_cols, cat_cols, mean.tolist() if num_cols else [], std.tolist() if num_cols else [], vocab)

    @property
    def cat_sizes(self) -> list[int]:
        """Embedding table sizes per categorical column (padding + OOV + values)."""
        return [len(self.vocab[c]) + 2 for c in self.cat_cols]

    def encode_num(self, raw: np.ndarray) -> np.ndarray:
        """[..., F] raw (NaN = missing) -> standardised float32, missing -> 0 (= train mean)."""
        z = np.subtract(raw, np.asarray(self.mean, dtype=np.float32), dtype=np.float32)
        z /= np.asarray(self.std, dtype=np.float32)  # in place: one [rows, F] float32 copy in all
        return np.nan_to_num(z, nan=0.0, copy=False)

    def encode_cat(self, column: str, values: list[Any]) -> np.ndarray:
        table = self.vocab[column]
        return np.fromiter((table.get(str(v), OOV_ID) if v is not None else OOV_ID for v in values),
                           dtype=np.int32, count=len(values))

    def encode_cat_array(self, column: str, values: pa.Array) -> np.ndarray:
        """``encode_cat`` of an Arrow array: the same ids, looked up by Arrow for strings and integers."""
        keys = as_vocab_keys(values)
        if keys is None:
            return self.encode_cat(column, values.to_pylist())
        vocab = self.vocab[column]
        position = pc.index_in(keys, value_set=pa.array(list(vocab), pa.string()))  # null: unseen or null
        ids = np.append(np.fromiter(vocab.values(), dtype=np.int32, count=len(vocab)), np.int32(OOV_ID))
        return ids[position.fill_null(len(vocab)).to_numpy()]

    def encode(self, table: pa.Table) -> pa.Table:
        """Raw sequence records -> model-ready records: ``num`` [m*F] float32, ``cat`` [m*C] int32."""
        F, C = len(self.num_cols), len(self.cat_cols)
        offsets = table.column("item_id").combine_chunks().offsets
        num_raw = table.column("num_raw").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        num = self.encode_num(num_raw.reshape(-1, F)) if F else np.zeros((0, 0), np.float32)
        rows = len(table.column("item_id").combine_chunks().flatten())
        cat = np.zeros((rows, C), dtype=np.int32)
        for j, c in enumerate(self.cat_cols):
            cat[:, j] = self.encode_cat_array(c, table.column(c).combine_chunks().flatten())
        off = np.asarray(offsets)
        out = table.drop_columns(["num_raw", *self.cat_cols])
        out = out.append_column("num", pa.ListArray.from_arrays(pa.array(off * F, pa.int32()), pa.array(num.reshape(-1))))
        return out.append_column("cat", pa.ListArray.from_arrays(pa.array(off * C, pa.int32()), pa.array(cat.reshape(-1))))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self)))

    @staticmethod
    def load(path: str | Path) -> FeatureSpec:
        return FeatureSpec(**json.loads(Path(path).read_text()))
