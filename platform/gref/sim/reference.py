"""Reference rows no model can reach, for reports on simulated data (oracle ceilings).

* ``oracle best list`` -- beam search over the candidates under the hidden user model itself;
* ``oracle pointwise sort`` -- the candidates sorted by their hidden click logit, no list effects;
* ``features-only (list-aware / pointwise)`` -- the same two searches with the hidden item logit
  replaced by its best estimate from the observable features (``FormAttractiveness``, a bilinear
  user x item form as the hidden affinity is, regressed on the hidden logit of the train split's
  candidates: E[logit | features]) and the list effects (fatigue, series boost, examination) at
  their true values. It tells how much a model of these features could gain at best, and how
  much of that needs list awareness.
Every reference list is scored by the exact oracle.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from gref.clickmodel.structured import ListEffects
from gref.sim.user_model import examination_probs
from gref.sim.world import World


def oracle_effects(world: World, user_ids: np.ndarray, items: np.ndarray) -> ListEffects:
    """The hidden user model of ``world`` as a ListEffects over each request's candidates.
    user_ids [B]; items [B, M] item ids (-1 = padding). Attribute columns: (category, series)."""
    cfg = world.config
    valid = items >= 0
    safe = np.where(valid, items, 0)
    logit = cfg.base_click_logit + world.affinity(np.asarray(user_ids, dtype=np.int64), safe)
    same = []
    for attr in (world.item_category, world.item_series):
        v = np.where(valid, attr[safe], -1)
        same.append((v[:, :, None] == v[:, None, :]) & valid[:, :, None] & valid[:, None, :])
    f32 = torch.float32
    return ListEffects(
        logit=torch.as_tensor(logit, dtype=f32),
        same=torch.as_tensor(np.stack(same, axis=1)),
        redundancy=torch.tensor([-cfg.category_fatigue, 0.0], dtype=f32),
        adjacency=torch.zeros(2, dtype=f32),
        click_adjacency=torch.tensor([0.0, cfg.series_boost], dtype=f32),
        examination=torch.as_tensor(examination_probs(world, items.shape[1]), dtype=f32),
        cand_mask=torch.as_tensor(valid),
    )


class FormAttractiveness(nn.Module):
    """The item logit of the simulator's form from observable features only:
    a(u, i) = b + (P u_obs)^T (Q i_obs + E_series[i] + E_cat[i]) + w . item_num.
    ``user_num`` / ``item_num``: indices of the numeric user / item columns; ``series`` and
    ``category``: indices of those categorical columns; ``cat_sizes`` their vocabularies."""

    def __init__(self, user_num: list[int], item_num: list[int], series: int, category: int,
                 cat_sizes: list[int], rank: int = 8):
        super().__init__()
        self.user_num, self.item_num, self.series, self.category = user_num, item_num, series, category
        self.P = nn.Linear(len(user_num), rank, bias=False)
        self.Q = nn.Linear(len(item_num), rank, bias=False)
        self.series_emb = nn.Embedding(cat_sizes[series], rank, padding_idx=0)
        self.cat_emb = nn.Embedding(cat_sizes[category], rank, padding_idx=0)
        nn.init.zeros_(self.series_emb.weight)
        nn.init.zeros_(self.cat_emb.weight)
        self.linear = nn.Linear(len(item_num), 1)  # its bias is b

    def forward(self, num: Tensor, cat: Tensor, cand_mask: Tensor) -> Tensor:
        u = self.P(num[..., self.user_num])  # [B, M, r]
        v = self.Q(num[..., self.item_num]) + self.series_emb(cat[..., self.series]) + self.cat_emb(cat[..., self.category])
        return ((u * v).sum(-1) + self.linear(num[..., self.item_num]).squeeze(-1)).masked_fill(~cand_mask, 0.0)


def form_attractiveness(num_cols: list[str], cat_cols: list[str], cat_sizes: list[int]) -> FormAttractiveness:
    """FormAttractiveness for the simulator's column names (num_user_* / num_item_*, cat_series, cat_category)."""
    user = [i for i, c in enumerate(num_cols) if c.startswith("num_user_")]
    item = [i for i, c in enumerate(num_cols) if not c.startswith("num_user_")]
    return FormAttractiveness(user, item, cat_cols.index("cat_series"), cat_cols.index("cat_category"), cat_sizes)


REFERENCE_ROWS = ("oracle best list", "oracle pointwise sort", "features-only best list", "features-only pointwise sort")
HEADROOM_ROW = "features-only best list"  # the headroom share's denominator: the best a model of these features could do


def fit_features_only(world: World, table, meta: dict, steps: int = 400, batch_size: int = 512,
                      max_requests: int = 10_000, seed: int = 0) -> FormAttractiveness:
    """E[hidden click logit | observable features]: FormAttractiveness regressed (squared error)
    on the hidden logit of every candidate of ``table``'s first ``max_requests`` requests -- the
    limit of what infinitely many logs could teach a model of these features. At least ``steps``
    Adam steps (whole epochs), however small the table."""
    from gref.data.batch import collate

    torch.manual_seed(seed)
    model = form_attractiveness(meta["num_cols"], meta["cat_cols"], meta["cat_sizes"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    table = table.slice(0, min(max_requests, table.num_rows))
    # collated and labelled once: every epoch is a permutation of the same rows (re-collating
    # each batch of each epoch was most of the fit's time)
    b = collate(table, meta["num_features"], len(meta["cat_sizes"]), meta["feedback_weights"])
    truth = oracle_effects(world, b.user_id.numpy(), b.item_id.numpy()).logit
    order = torch.Generator().manual_seed(seed)
    for _ in range(-(-steps // -(-table.num_rows // batch_size))):
        for idx in torch.randperm(table.num_rows, generator=order).split(batch_size):
            mask = b.cand_mask[idx]
            loss = ((model(b.num[idx], b.cat[idx], mask) - truth[idx]) ** 2)[mask].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def reference_list(name: str, world: World, features_only: FormAttractiveness, b, n: int, width: int = 8) -> Tensor:
    """The reference row ``name``'s list [B, n] (candidate indices, -1 = none) for a batch ``b``
    (gref.data.batch.Batch with the raw ids of simulated data)."""
    from gref.clickmodel.search import beam_search, pointwise_order

    fx = oracle_effects(world, b.user_id.numpy(), b.item_id.numpy())
    if name.startswith("features-only"):
        with torch.no_grad():
            estimate = features_only(b.num, b.cat, b.cand_mask)
        fx = ListEffects(estimate, fx.same, fx.redundancy, fx.adjacency, fx.click_adjacency, fx.examination,
                         fx.cand_mask)
    return beam_search(fx, n, width)[0] if name.endswith("best list") else pointwise_order(fx, n)
