"""Reference rows for reports on simulated data: what the oracle, or a model of the observable
features that knew the list effects, would show. References, not bounds (a model can beat the
features-only rows: it may read more from the features than the fitted form does).

* ``oracle best list`` -- beam search over the candidates under the hidden user model itself;
* ``oracle pointwise sort`` -- the candidates sorted by their hidden click logit, no list effects;
* ``features-only (list-aware / pointwise)`` -- the same two searches with the hidden item logit
  replaced by its best estimate from the observable features (``FormAttractiveness``, a bilinear
  user x item form as the hidden affinity is, regressed on the hidden logit of the train split's
  candidates: E[logit | features]) and the family's list effects and examination at their true
  values. It tells how much a model of these features could gain at best, and how
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
    truth = torch.as_tensor(hidden_logit(world, b.user_id.numpy(), b.item_id.numpy()), dtype=torch.float32)
    order = torch.Generator().manual_seed(seed)
    for _ in range(-(-steps // -(-table.num_rows // batch_size))):
        for idx in torch.randperm(table.num_rows, generator=order).split(batch_size):
            mask = b.cand_mask[idx]
            loss = ((model(b.num[idx], b.cat[idx], mask) - truth[idx]) ** 2)[mask].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def oracle_search(world: World, user_ids: np.ndarray, items: np.ndarray, n: int, width: int = 8,
                  logit: np.ndarray | None = None, chunk: int = 64) -> np.ndarray:
    """Beam search under the world's exact user model, whatever its family: each step extends every
    beam by every unused candidate and keeps the ``width`` lists of highest exact E[clicks]
    (``expected_feedback`` of the whole prefix; the families' effects come from the items above,
    so a prefix's value is final). user_ids [B]; items [B, M] item ids (-1 = padding); ``logit``
    [B, M] the candidates' base logits instead of the hidden ones. -> lists [B, n] (-1 past m)."""
    from gref.sim.user_model import expected_feedback

    B, M = items.shape
    out = np.full((B, n), -1, dtype=np.int64)
    for lo in range(0, B, chunk):
        its, users = items[lo:lo + chunk], user_ids[lo:lo + chunk]
        b = len(its)
        lists = np.zeros((b, 1, 0), dtype=np.int64)
        score = np.zeros((b, 1))
        for t in range(n):
            W = lists.shape[1]
            used = np.zeros((b, W, M), dtype=bool)
            if t:
                np.put_along_axis(used, np.clip(lists, 0, None), lists >= 0, axis=2)
            free = ~used & (its >= 0)[:, None, :]  # [b, W, M]
            ext = np.concatenate([np.repeat(lists[:, :, None, :], M, 2),
                                  np.broadcast_to(np.arange(M)[None, None, :, None], (b, W, M, 1))], axis=3)
            ids = np.where(ext >= 0, np.take_along_axis(its[:, None, None, :].repeat(W, 1).repeat(M, 2),
                                                        np.clip(ext, 0, None), 3), -1)
            flat_logit = None
            if logit is not None:
                flat_logit = np.take_along_axis(logit[lo:lo + chunk][:, None, None, :].repeat(W, 1).repeat(M, 2),
                                                np.clip(ext, 0, None), 3).reshape(b * W * M, t + 1)
            value = expected_feedback(world, np.repeat(users, W * M), ids.reshape(b * W * M, t + 1),
                                      flat_logit)["click"].reshape(b, W, M)
            value = np.where(free, value, -np.inf)
            exhausted = ~free.any(axis=(1, 2))  # no candidate left: the list ends here
            k = min(width, W * M)
            top = np.argsort(-value.reshape(b, W * M), axis=1, kind="stable")[:, :k]
            src, item = top // M, top % M
            new_score = np.take_along_axis(value.reshape(b, W * M), top, 1)
            item = np.where(exhausted[:, None], -1, item)
            src = np.where(exhausted[:, None], 0, src)
            new_score = np.where(exhausted[:, None], score[:, :1], new_score)
            lists = np.concatenate([np.take_along_axis(lists, src[..., None].repeat(lists.shape[2], 2), 1),
                                    item[..., None]], axis=2)
            score = np.where(np.isfinite(new_score), new_score, -np.inf)
        out[lo:lo + b, : lists.shape[2]] = lists[np.arange(b), score.argmax(1)]
    return out


def reference_list(name: str, world: World, features_only: FormAttractiveness, b, n: int, width: int = 8) -> Tensor:
    """The reference row ``name``'s list [B, n] (candidate indices, -1 = none) for a batch ``b``
    (gref.data.batch.Batch with the raw ids of simulated data). The attribute family searches its
    ListEffects form (torch); every other family searches its exact user model (``oracle_search``)."""
    from gref.clickmodel.search import beam_search, pointwise_order

    if world.config.family != "attribute":
        return torch.as_tensor(_family_reference(name, world, features_only, b, n, width))
    fx = oracle_effects(world, b.user_id.numpy(), b.item_id.numpy())
    if name.startswith("features-only"):
        with torch.no_grad():
            estimate = features_only(b.num, b.cat, b.cand_mask)
        fx = ListEffects(estimate, fx.same, fx.redundancy, fx.adjacency, fx.click_adjacency, fx.examination,
                         fx.cand_mask)
    return beam_search(fx, n, width)[0] if name.endswith("best list") else pointwise_order(fx, n)


def hidden_logit(world: World, user_ids: np.ndarray, items: np.ndarray) -> np.ndarray:
    """base_click_logit + affinity of every candidate [B, M] (0 on padding): the item's own appeal,
    before any list effect -- the same in every family."""
    safe = np.where(items >= 0, items, 0)
    logit = world.config.base_click_logit + world.affinity(np.asarray(user_ids, dtype=np.int64), safe)
    return np.where(items >= 0, logit, 0.0)


def _family_reference(name: str, world: World, features_only: FormAttractiveness, b, n: int, width: int) -> np.ndarray:
    users, items = b.user_id.numpy(), b.item_id.numpy()
    if name.startswith("features-only"):
        with torch.no_grad():
            logit = features_only(b.num, b.cat, b.cand_mask).double().numpy()
    else:
        logit = hidden_logit(world, users, items)
    if name.endswith("best list"):
        return oracle_search(world, users, items, n, width, logit=logit)
    masked = np.where(items >= 0, logit, -np.inf)
    order = np.argsort(-masked, axis=1, kind="stable")[:, :n]
    order = np.where(np.take_along_axis(masked, order, 1) > -np.inf, order, -1)
    return np.pad(order, ((0, 0), (0, n - order.shape[1])), constant_values=-1)
