"""The user-model families (gref.sim.user_model): each family's exact oracle against Monte-Carlo of
the same model, each family's effect by hand, and the generic oracle search against the attribute
family's own beam search."""

import numpy as np
import pytest

from gref.sim import World, WorldConfig, expected_feedback, sample_feedback, simulate_requests
from gref.sim.reference import hidden_logit, oracle_effects, oracle_search
from gref.sim.user_model import FAMILIES, _sigmoid, category_pairs, examination_probs, user_intents

SMALL = dict(n_users=300, n_items=1500, n_series=50, n_creators=200, seed=3)


def world_of(family: str, **knobs) -> World:
    return World.generate(WorldConfig(family=family, **SMALL, **knobs))


@pytest.mark.parametrize("family", FAMILIES)
def test_oracle_matches_monte_carlo(family):
    world = world_of(family)
    rng = np.random.default_rng(0)
    batch = simulate_requests(world, 12, 0, rng)
    shown = np.take_along_axis(batch.candidates, batch.exposure, axis=1)
    exact = expected_feedback(world, batch.user_id, shown)
    reps = 20_000
    draws = sample_feedback(world, np.repeat(batch.user_id, reps), np.repeat(shown, reps, axis=0), rng)
    for fb in ("click", "like", "long_view"):
        per = draws[fb].reshape(12, reps, -1).sum(2)
        assert np.all(np.abs(per.mean(1) - exact[fb]) < 5 * per.std(1) / np.sqrt(reps) + 1e-3), (family, fb)
    assert np.allclose(draws["click"].reshape(12, reps, -1).mean(1), exact["click_at"], atol=0.02)


def test_satisfaction_stops_after_a_click():
    """Hand-computed two items: e_2 = cont_2 * (1 - q_1 * sat_1), q_2 = s(l_2)."""
    world = world_of("satisfaction")
    cfg = world.config
    items, user = np.array([[10, 11]]), np.array([4])
    l1, l2 = hidden_logit(world, user, items)[0]
    q1, sat1 = _sigmoid(l1), _sigmoid(cfg.sat_bias + cfg.sat_quality * world.item_quality[10])
    got = expected_feedback(world, user, items)["click_at"][0]
    assert np.allclose(got, [q1, cfg.continue_in_screen * (1 - q1 * sat1) * _sigmoid(l2)])


def test_contrast_rewards_a_better_item_after_weaker_ones():
    world = world_of("contrast")
    order = np.argsort(world.item_quality)
    weak, strong = order[:3], order[-1]
    user = np.array([0])
    after_weak = expected_feedback(world, user, np.array([[*weak, strong]]))["click_at"][0, 3]
    l_strong = hidden_logit(world, user, np.array([[strong]]))[0, 0]
    mean_weak = world.item_quality[weak].mean()
    expect = examination_probs(world, 4)[3] * _sigmoid(
        l_strong + world.config.contrast * (world.item_quality[strong] - mean_weak))
    assert np.isclose(after_weak, expect)
    assert after_weak > examination_probs(world, 4)[3] * _sigmoid(l_strong)


def test_complement_acts_between_different_categories_only():
    world = world_of("complement")
    pairs = category_pairs(world)
    assert (np.diag(pairs) == 0).all() and (pairs == 1).any() and (pairs == -1).any()
    a, b = np.argwhere(pairs == 1)[0]
    x = np.flatnonzero(world.item_category == a)[0]
    y = np.flatnonzero(world.item_category == b)[0]
    user = np.array([2])
    after = expected_feedback(world, user, np.array([[x, y]]))["click_at"][0, 1]
    l_y = hidden_logit(world, user, np.array([[y]]))[0, 0]
    c = world.config
    assert np.isclose(after, c.continue_in_screen * _sigmoid(l_y + c.complement_strength))


def test_coverage_reads_on_when_the_page_shows_the_users_intents():
    world = world_of("coverage")
    user = 5
    intents = user_intents(world)[user]
    assert len(set(intents)) == world.config.intents
    hit = np.flatnonzero(world.item_category == intents[0])[0]
    miss = np.flatnonzero(~np.isin(world.item_category, intents))[0]
    tail = np.flatnonzero(~np.isin(world.item_category, intents))[1]
    e = lambda first: expected_feedback(world, np.array([user]), np.array([[first, tail]]))  # noqa: E731
    c = world.config
    ratio = (e(hit)["click_at"][0, 1]) / (e(miss)["click_at"][0, 1])
    assert np.isclose(ratio, (c.coverage_floor + (1 - c.coverage_floor) / c.intents) / c.coverage_floor)


def test_unknown_family_is_a_clear_error():
    world = world_of("attribute")
    bad = World(**{**world.__dict__, "config": WorldConfig(**{**world.config.__dict__, "family": "nope"})})
    with pytest.raises(ValueError, match="unknown user-model family 'nope'"):
        expected_feedback(bad, np.array([0]), np.array([[1, 2]]))


def test_generic_oracle_search_equals_the_attribute_beam_search():
    """On the attribute family the black-box search finds lists as good as ListEffects' search."""
    from gref.clickmodel.search import beam_search

    world = world_of("attribute")
    batch = simulate_requests(world, 40, 0, np.random.default_rng(1))
    users, items = batch.user_id, batch.candidates
    generic = oracle_search(world, users, items, 10, width=4)
    own = beam_search(oracle_effects(world, users, items), 10, 4)[0].numpy()
    value = lambda lists: expected_feedback(world, users, np.take_along_axis(items, lists, 1))["click"]  # noqa: E731
    assert np.allclose(value(generic), value(own), atol=1e-6)
    assert (np.sort(generic, 1)[:, 1:] != np.sort(generic, 1)[:, :-1]).all()  # no candidate twice


@pytest.mark.parametrize("family", FAMILIES[1:])
def test_oracle_search_beats_the_pointwise_sort(family):
    world = world_of(family)
    batch = simulate_requests(world, 60, 0, np.random.default_rng(2))
    users, items = batch.user_id, batch.candidates
    best = oracle_search(world, users, items, 10, width=4)
    sort = np.argsort(-hidden_logit(world, users, items), axis=1)[:, :10]
    value = lambda lists: expected_feedback(world, users, np.take_along_axis(items, lists, 1))["click"]  # noqa: E731
    assert (value(best) >= value(sort) - 1e-9).mean() > 0.9 and value(best).mean() > value(sort).mean()


def test_oracle_search_handles_fewer_candidates_than_slots():
    world = world_of("contrast")
    items = np.array([[3, 8, -1, -1], [4, 5, 6, 7]])
    lists = oracle_search(world, np.array([0, 1]), items, 3, width=2)
    assert (lists[0, 2] == -1) and set(lists[0, :2]) == {0, 1} and (lists[1] >= 0).all()
