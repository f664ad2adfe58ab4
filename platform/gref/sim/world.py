"""The simulated recommender world: users, items and their hidden (latent) truth.

Everything a model may see is a noisy view of this state; everything the oracle needs to
score an ordering exactly is saved beside the logs in ``DIR/world/``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


@dataclass
class WorldConfig:
    """Knobs of the simulated world. Defaults give a world where list-aware models can win."""

    seed: int = 0
    # --- population
    n_users: int = 5_000  # distinct users
    n_items: int = 20_000  # item pool the upstream stage retrieves from
    n_categories: int = 20  # coarse topics (cat_category)
    n_series: int = 400  # franchises inside a category (cat_series): Monkey King -> Nezha
    n_creators: int = 2_000  # uploaders (cat_creator); production rule keeps them apart
    latent_dim: int = 8  # size of the hidden user / item vectors
    n_user_segments: int = 8  # observable coarse user segment (cat_user_segment)
    # --- request shape
    candidates: int = 30  # m: candidates the upstream ranker passes on
    exposed: int = 10  # n: items the production policy shows
    screen_size: int = 4  # items per screen (the paper's app shows 4)
    pool_size: int = 150  # items the upstream ranker scores per request before its top-m
    days: int = 14  # log span; the last days become the test split
    start_ts_ms: int = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    # --- observability
    observed_dims: int = 8  # num_item_f* / num_user_f*: noisy linear views of the latent vectors
    feature_noise: float = 0.5  # std of noise on observable item/user projections
    quality_noise: float = 0.5  # std of noise on num_quality vs hidden quality
    upstream_noise: float = 1.5  # std of the upstream ranker's score noise
    policy_noise: float = 0.8  # std of the production (pointwise) policy's score noise
    # share of requests in a randomisation bucket: n of the m candidates shown in a uniformly random
    # order instead of production's (logged as ``randomized``: unbiased offline estimates); 0 = none
    randomized_share: float = 0.0
    # --- hidden user model (gref.sim.user_model: the families and their exact oracle)
    family: Literal["attribute", "satisfaction", "contrast", "complement", "coverage"] = "attribute"  # attribute | satisfaction | contrast | complement | coverage
    affinity_scale: float = 1.2  # weight of user.item latent match in the click logit
    quality_weight: float = 0.5  # weight of hidden item quality in the click logit
    base_click_logit: float = -1.6  # click logit intercept
    continue_in_screen: float = 0.92  # P(look at next item | same screen)
    continue_next_screen: float = 0.60  # P(swipe to the next screen) -- position bias
    series_boost: float = 1.5  # logit bonus: same series right after a clicked item
    category_fatigue: float = 0.35  # logit penalty per earlier item of the same category
    # the other families' knobs, fixed when the families were written (before any model met them)
    sat_bias: float = -0.5  # satisfaction: P(stop after a click) = sigmoid(sat_bias + sat_quality * quality)
    sat_quality: float = 1.0  #   (~0.4 on average: the share of satisfied clicks click models fit on search logs)
    contrast: float = 0.6  # contrast: logit per unit of quality above the mean of the items just above
    contrast_window: int = 3  #   how many items above set the reference
    complement_share: float = 0.1  # complement: share of category pairs that go together (and as many that clash)
    complement_strength: float = 1.0  #   logit of the item right after one of a complementary (clashing: -) category
    intents: int = 3  # coverage: favourite categories per user
    coverage_floor: float = 0.6  #   P(move on) scale when none of them has been shown yet (1 when all have)
    like_bias: float = -1.5  # like logit intercept (given a click)
    like_quality: float = 1.0  # like logit weight on hidden quality
    long_view_bias: float = -0.5  # long-view logit intercept (given a click)
    long_view_duration: float = -0.8  # long views are likelier on short videos
    # --- log hygiene: the fraction of requests written deliberately malformed
    corrupt_fraction: float = 0.002


@dataclass
class World:
    """Hidden state of the world. Arrays are indexed by item id / user id (ids are 0..N-1)."""

    config: WorldConfig
    user_latent: np.ndarray  # [U, d] float32
    user_activity: np.ndarray  # [U] float32, relative request rate
    user_obs: np.ndarray  # [U, observed_dims] float32, noisy projection of user_latent
    user_segment: np.ndarray  # [U] int64
    item_latent: np.ndarray  # [I, d] float32
    item_quality: np.ndarray  # [I] float32 (hidden)
    item_duration: np.ndarray  # [I] float32 log-seconds, observable
    item_category: np.ndarray  # [I] int64
    item_series: np.ndarray  # [I] int64
    item_creator: np.ndarray  # [I] int64
    item_obs: np.ndarray  # [I, observed_dims] float32, noisy projection of item_latent
    item_quality_obs: np.ndarray  # [I] float32

    @staticmethod
    def generate(cfg: WorldConfig) -> World:
        rng = np.random.default_rng(cfg.seed)
        d = cfg.latent_dim
        cat_centers = rng.normal(size=(cfg.n_categories, d))
        # Zipf-like category popularity: a few big topics, a long tail.
        cat_p = 1.0 / np.arange(1, cfg.n_categories + 1) ** 0.8
        series_category = rng.choice(cfg.n_categories, size=cfg.n_series, p=cat_p / cat_p.sum())
        series_offset = rng.normal(scale=0.6, size=(cfg.n_series, d))
        item_series = rng.integers(0, cfg.n_series, size=cfg.n_items)
        item_category = series_category[item_series]
        item_latent = (
            cat_centers[item_category] + series_offset[item_series]
            + rng.normal(scale=0.4, size=(cfg.n_items, d))
        ) / np.sqrt(2.0)
        item_quality = rng.normal(size=cfg.n_items)
        item_duration = rng.normal(loc=3.5, scale=0.8, size=cfg.n_items)  # log seconds
        item_creator = rng.integers(0, cfg.n_creators, size=cfg.n_items)
        k = cfg.observed_dims
        proj_item = rng.normal(size=(d, k)) / np.sqrt(d)
        item_obs = item_latent @ proj_item * 2.0 + rng.normal(scale=cfg.feature_noise, size=(cfg.n_items, k))
        item_quality_obs = item_quality + rng.normal(scale=cfg.quality_noise, size=cfg.n_items)

        user_latent = rng.normal(size=(cfg.n_users, d)) / np.sqrt(2.0)
        user_activity = rng.lognormal(sigma=0.8, size=cfg.n_users)
        proj_user = rng.normal(size=(d, k)) / np.sqrt(d)
        user_obs = user_latent @ proj_user * 2.0 + rng.normal(scale=cfg.feature_noise, size=(cfg.n_users, k))
        segment_centers = rng.normal(size=(cfg.n_user_segments, d))
        user_segment = np.argmax(user_latent @ segment_centers.T, axis=1)
        f32 = np.float32
        return World(
            config=cfg,
            user_latent=user_latent.astype(f32),
            user_activity=user_activity.astype(f32),
            user_obs=user_obs.astype(f32),
            user_segment=user_segment.astype(np.int64),
            item_latent=item_latent.astype(f32),
            item_quality=item_quality.astype(f32),
            item_duration=item_duration.astype(f32),
            item_category=item_category.astype(np.int64),
            item_series=item_series.astype(np.int64),
            item_creator=item_creator.astype(np.int64),
            item_obs=item_obs.astype(f32),
            item_quality_obs=item_quality_obs.astype(f32),
        )

    def affinity(self, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        """Hidden attractiveness of items to users. user_ids [B], item_ids [B, L] -> [B, L]."""
        cfg = self.config
        u = self.user_latent[user_ids]  # [B, d]
        v = self.item_latent[item_ids]  # [B, L, d]
        match = np.einsum("bd,bld->bl", u, v) / np.sqrt(cfg.latent_dim)
        return cfg.affinity_scale * match + cfg.quality_weight * self.item_quality[item_ids]

    # ---------------------------------------------------------------- persistence
    def save(self, directory: str | Path) -> None:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / "world.json").write_text(json.dumps(asdict(self.config), indent=2))
        users = {"user_latent": self.user_latent, "user_activity": self.user_activity,
                 "user_obs": self.user_obs, "user_segment": self.user_segment}
        items = {k: getattr(self, k) for k in (
            "item_latent", "item_quality", "item_duration", "item_category", "item_series",
            "item_creator", "item_obs", "item_quality_obs")}
        pq.write_table(_to_table(users), out / "users.parquet")
        pq.write_table(_to_table(items), out / "items.parquet")

    @staticmethod
    def load(directory: str | Path) -> World:
        src = Path(directory)
        if not (src / "world.json").exists():
            raise FileNotFoundError(f"no simulated world at {src} (expected {src / 'world.json'})")
        cfg = WorldConfig(**json.loads((src / "world.json").read_text()))
        arrays = {**_from_table(pq.read_table(src / "users.parquet")),
                  **_from_table(pq.read_table(src / "items.parquet"))}
        return World(config=cfg, **arrays)


def _to_table(arrays: dict[str, np.ndarray]) -> pa.Table:
    cols = {}
    for name, arr in arrays.items():
        if arr.ndim == 2:
            cols[name] = pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), arr.shape[1])
        else:
            cols[name] = pa.array(arr)
    return pa.table(cols)


def _from_table(table: pa.Table) -> dict[str, np.ndarray]:
    out = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if pa.types.is_fixed_size_list(col.type):
            out[name] = col.flatten().to_numpy().reshape(len(col), col.type.list_size)
        else:
            out[name] = col.to_numpy()
    return out
