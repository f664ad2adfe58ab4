"""The simulated world: determinism, the exact oracle vs Monte-Carlo, intra-list effects."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from gref.sim import (
    World,
    WorldConfig,
    expected_feedback,
    sample_feedback,
    simulate_requests,
)
from gref.sim.logs import to_log_table
from gref.sim.user_model import examination_probs


@pytest.fixture(scope="module")
def world():
    return World.generate(WorldConfig(n_users=300, n_items=1500, n_series=50, n_creators=200, seed=3))


def test_seeded_determinism(world):
    a = simulate_requests(world, 200, 0, np.random.default_rng(5))
    b = simulate_requests(World.generate(world.config), 200, 0, np.random.default_rng(5))
    assert np.array_equal(a.candidates, b.candidates) and np.array_equal(a.exposure, b.exposure)
    for k in a.feedback:
        assert np.array_equal(a.feedback[k], b.feedback[k])
    c = simulate_requests(world, 200, 0, np.random.default_rng(6))
    assert not np.array_equal(a.candidates, c.candidates)


def test_world_save_load_roundtrip(world, tmp_path):
    world.save(tmp_path)
    again = World.load(tmp_path)
    assert again.config == world.config
    assert np.array_equal(again.item_latent, world.item_latent)
    assert np.array_equal(again.user_segment, world.user_segment)


def test_examination_probs_hand_computed(world):
    cfg = world.config  # screens of 4: positions 1-4 | 5-8 | 9-10
    c, s = cfg.continue_in_screen, cfg.continue_next_screen
    expected = [1, c, c**2, c**3, c**3 * s, c**4 * s, c**5 * s, c**6 * s, c**6 * s * s, c**7 * s * s]
    assert np.allclose(examination_probs(world, 10), expected)


def test_oracle_matches_monte_carlo(world):
    """The oracle is exact: Monte-Carlo of the same user model agrees within sampling error."""
    rng = np.random.default_rng(0)
    batch = simulate_requests(world, 20, 0, rng)
    shown = np.take_along_axis(batch.candidates, batch.exposure, axis=1)
    # half the lists open with two items of one series, so the series term is exercised
    by_series = np.argsort(world.item_series, kind="stable")
    firsts = np.flatnonzero(np.diff(world.item_series[by_series]) == 0)[:10]
    for r, f in enumerate(firsts):
        pair = by_series[[f, f + 1]]
        rest = [i for i in shown[r] if i not in pair][: shown.shape[1] - 2]
        shown[r] = [*pair, *rest]
    assert (world.item_series[shown[:10, 0]] == world.item_series[shown[:10, 1]]).all()
    exact = expected_feedback(world, batch.user_id, shown)
    reps = 20_000
    users = np.repeat(batch.user_id, reps)
    items = np.repeat(shown, reps, axis=0)
    draws = sample_feedback(world, users, items, rng)
    for fb in ("click", "like", "long_view"):
        mc = draws[fb].reshape(20, reps, -1).sum(2).mean(1)
        se = draws[fb].reshape(20, reps, -1).sum(2).std(1) / np.sqrt(reps)
        assert np.all(np.abs(mc - exact[fb]) < 5 * se + 1e-3), fb
    mc_at = draws["click"].reshape(20, reps, -1).mean(1)
    assert np.allclose(mc_at, exact["click_at"], atol=0.02)


def test_series_effect_needs_click_and_adjacency(world):
    """A same-series item right after another gets more clicks than after a stranger."""
    cfg = world.config
    series = world.item_series
    cats = world.item_category
    # two items of one series, and a third item of another series and category
    s0 = np.flatnonzero(np.bincount(series) >= 2)[0]
    a, b = np.flatnonzero(series == s0)[:2]
    other = np.flatnonzero((series != s0) & (cats != cats[a]))[0]
    user = np.array([0])
    together = expected_feedback(world, user, np.array([[a, b, other]]))["click_at"][0]
    apart = expected_feedback(world, user, np.array([[a, other, b]]))["click_at"][0]
    e = examination_probs(world, 3)
    # b's click probability given examination: boosted only when right after a
    assert together[1] / e[1] > apart[2] / e[2]
    no_boost = World(**{**world.__dict__, "config": WorldConfig(**{**cfg.__dict__, "series_boost": 0.0})})
    flat = expected_feedback(no_boost, user, np.array([[a, b, other]]))["click_at"][0]
    assert together[1] > flat[1]


def test_category_fatigue(world):
    cats = world.item_category
    c0 = np.bincount(cats).argmax()
    same = np.flatnonzero(cats == c0)[:3]
    diff = [same[0], *np.flatnonzero(cats != c0)[:2]]
    user = np.array([1])
    # the last slot's item is the same in both lists except for its predecessors' categories
    last_same = expected_feedback(world, user, np.array([same]))["click_at"][0, 2]
    lst = np.array([[diff[1], diff[2], same[2]]])
    last_diff = expected_feedback(world, user, lst)["click_at"][0, 2]
    assert last_diff > last_same


def test_production_policy_keeps_creators_apart(world):
    batch = simulate_requests(world, 500, 0, np.random.default_rng(1))
    shown = np.take_along_axis(batch.candidates, batch.exposure, axis=1)
    creators = world.item_creator[shown]
    adjacent_same = (creators[:, 1:] == creators[:, :-1]).mean()
    assert adjacent_same < 0.01  # only where no other creator was left
    assert (np.sort(batch.exposure, 1)[:, 1:] != np.sort(batch.exposure, 1)[:, :-1]).all()


def test_log_table_follows_contract(world):
    batch = simulate_requests(world, 50, 100, np.random.default_rng(2))
    table = to_log_table(world, batch)
    m, n = world.config.candidates, world.config.exposed
    assert table.num_rows == 50 * m
    for col in ("request_id", "user_id", "ts", "item_id", "upstream_rank", "position", "click"):
        assert col in table.column_names
    pos = table.column("position").to_numpy(zero_copy_only=False)
    shown = ~np.isnan(pos.astype(float))
    assert shown.sum() == 50 * n
    assert table.column("click").null_count == 50 * (m - n)
    assert table.column("request_id").to_numpy().min() == 100


def test_simulate_job_writes_logs_and_world(sim_dir):
    files = sorted((sim_dir / "logs").glob("*.parquet"))
    assert len(files) == 3  # 3000 requests in chunks of 1000
    assert pq.read_metadata(files[0]).num_rows == 1000 * 30
    assert (sim_dir / "world" / "world.json").exists()
    World.load(sim_dir / "world")
