"""Reference rows no model can reach, for reports on simulated data (oracle ceilings).

* ``oracle best list`` -- beam search over the candidates under the hidden user model itself;
* ``oracle pointwise sort`` -- the candidates sorted by their hidden click logit, no list effects;
* ``features-only (list-aware / pointwise)`` -- the same two searches under a click model of the
  simulator's form fitted by maximum likelihood on the *logged* clicks of the train split, whose
  item logit sees only the observable features (a bilinear user x item form, as the hidden
  affinity is; gref.clickmodel.reward.ListClickModel with ``FormAttractiveness``). It tells how
  much a model that learns from these logs could gain at best, and how much of that needs list
  awareness.
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
        self.linear = nn.Linear(len(item_num), 1)

    def forward(self, num: Tensor, cat: Tensor, cand_mask: Tensor) -> Tensor:
        u = self.P(num[..., self.user_num])  # [B, M, r]
        v = self.Q(num[..., self.item_num]) + self.series_emb(cat[..., self.series]) + self.cat_emb(cat[..., self.category])
        return (u * v).sum(-1) + self.linear(num[..., self.item_num]).squeeze(-1)


def form_attractiveness(num_cols: list[str], cat_cols: list[str], cat_sizes: list[int]) -> FormAttractiveness:
    """FormAttractiveness for the simulator's column names (num_user_* / num_item_*, cat_series, cat_category)."""
    user = [i for i, c in enumerate(num_cols) if c.startswith("num_user_")]
    item = [i for i, c in enumerate(num_cols) if not c.startswith("num_user_")]
    return FormAttractiveness(user, item, cat_cols.index("cat_series"), cat_cols.index("cat_category"), cat_sizes)
