"""Sequence records (Arrow) -> padded model tensors. Vectorised: no Python loop over requests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import torch
from torch import Tensor

from gref.data.features import OOV_ID
from gref.data.pairs import padded


@dataclass
class Batch:
    num: Tensor  # [B, M, F] float32 standardised numeric features
    cat: Tensor  # [B, M, C] long categorical ids (0 = pad, 1 = OOV)
    cand_mask: Tensor  # [B, M] bool, True = real candidate
    exposure: Tensor  # [B, N] long candidate indices in display order (pad 0)
    lengths: Tensor  # [B] long n_b
    relevance: Tensor  # [B, N] float weighted feedback per exposed slot (U_i of Eq. 7)
    click: Tensor  # [B, N] float
    winner: Tensor | None = None  # [B, N] long (pairs only)
    loser: Tensor | None = None  # [B, N] long (pairs only)
    item_id: Tensor | None = None  # [B, M] long raw item ids, -1 = pad (integer ids only: the oracle's keys)
    user_id: Tensor | None = None  # [B] long raw user ids (integer ids only)
    request_id: list | None = None  # [B] the requests' ids, any type (the key of per-request caches)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()})

    @property
    def size(self) -> int:
        return self.num.shape[0]


def collate(table: pa.Table, num_features: int, cat_features: int,
            feedback_weights: dict[str, float]) -> Batch:
    """Encoded sequence (or pair) records -> Batch. ``feedback_weights`` define the relevance."""
    m = table.column("m").to_numpy().astype(np.int64)
    B, M = len(m), int(m.max(initial=1))
    cand_mask = np.arange(M)[None, :] < m[:, None]
    num = padded(table.column("num"), 0.0).astype(np.float32)
    num = np.pad(num, ((0, 0), (0, M * num_features - num.shape[1]))).reshape(B, M, num_features)
    cat = padded(table.column("cat"), 0).astype(np.int64)
    cat = np.pad(cat, ((0, 0), (0, M * cat_features - cat.shape[1]))).reshape(B, M, cat_features)
    lengths = table.column("n").to_numpy().astype(np.int64)
    exposure = padded(table.column("exposure"), 0).astype(np.int64)
    relevance = sum(w * padded(table.column(f), 0.0) for f, w in feedback_weights.items()
                    if f in table.column_names)
    click = padded(table.column("click"), 0.0)
    out = Batch(
        num=torch.from_numpy(num), cat=torch.from_numpy(cat), cand_mask=torch.from_numpy(cand_mask),
        exposure=torch.from_numpy(exposure), lengths=torch.from_numpy(lengths),
        relevance=torch.from_numpy(np.asarray(relevance, dtype=np.float32)),
        click=torch.from_numpy(click.astype(np.float32)),
    )
    if pa.types.is_integer(table.schema.field("user_id").type) and pa.types.is_integer(
            table.schema.field("item_id").type.value_type):
        out.item_id = torch.from_numpy(padded(table.column("item_id"), -1).astype(np.int64))  # [B, M]
        out.user_id = torch.from_numpy(table.column("user_id").to_numpy().astype(np.int64))
    if "request_id" in table.column_names:
        out.request_id = table.column("request_id").to_pylist()
    if "winner" in table.column_names:
        out.winner = torch.from_numpy(padded(table.column("winner"), 0).astype(np.int64))
        out.loser = torch.from_numpy(padded(table.column("loser"), 0).astype(np.int64))
    return out


def read_split(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """A written split (directory of Parquet) as one Arrow table; empty table if missing."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no prepared data at {path} (run jobs.prepare first)")
    return pads.dataset(str(path), format="parquet").to_table(columns=columns)


def iter_tables(table: pa.Table, batch_size: int, shuffle: bool, seed: int = 0):
    """Mini-batches of a table (single-process training and evaluation)."""
    order = np.random.default_rng(seed).permutation(table.num_rows) if shuffle else np.arange(table.num_rows)
    for start in range(0, table.num_rows, batch_size):
        yield table.take(pa.array(order[start: start + batch_size]))


def group_by_length(tables: Iterable[pa.Table], group: int, seed: int = 0) -> Iterator[pa.Table]:
    """Mini-batches regrouped so that requests of similar length share a batch: ``group``
    consecutive batches are pooled, sorted by their candidate count m, cut back into batches of
    the same sizes and visited in a random order. A batch is padded to its longest request, so on
    logs whose lists range from 2 to 200 a batch holding one long list costs ~ (200 / median)^2 in
    attention and masks; grouping spends that only on the batches of long lists. Pools whose
    requests all have one length pass through untouched, in order (simulated logs: m constant)."""
    rng = np.random.default_rng(seed)
    pool: list[pa.Table] = []

    def flush() -> Iterator[pa.Table]:
        table = pa.concat_tables(pool) if len(pool) > 1 else pool[0]
        m = table.column("m").to_numpy()
        if m.min() == m.max():
            yield from pool
            return
        table = table.take(pa.array(np.argsort(m, kind="stable")))
        sizes = np.cumsum([0] + [t.num_rows for t in pool])
        for k in rng.permutation(len(pool)):
            yield table.slice(int(sizes[k]), int(sizes[k + 1] - sizes[k]))

    for table in tables:
        pool.append(table)
        if len(pool) == group:
            yield from flush()
            pool = []
    if pool:
        yield from flush()


def same_attribute(cat: Tensor, columns: list[int] | None = None) -> Tensor:
    """[B, M, C_all] encoded categorical ids -> [B, C, M, M] bool equality of the chosen ``columns``
    (None = all: no index tensor, so it can run inside a CUDA graph); padding (0) and
    out-of-vocabulary (1) ids equal nothing."""
    c = (cat if columns is None else cat[..., columns]).permute(0, 2, 1)  # [B, C, M]
    known = c > OOV_ID
    return (c[..., :, None] == c[..., None, :]) & known[..., :, None] & known[..., None, :]
