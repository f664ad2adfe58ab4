"""The randomisation bucket: the simulator's uniform shuffles, and the item-position IPS estimate
of gref.evaluation on them -- by hand, unbiased where its assumption holds, and its report
columns (no Ray)."""

import numpy as np
import pyarrow as pa
import pytest
from helpers import sequences_of

from gref.evaluation import add_ips, markdown_table, randomized_ips, report_rows
from gref.sim import World, WorldConfig, simulate_requests
from gref.sim.logs import randomize, to_log_table

SMALL = {"n_users": 200, "n_items": 1000, "n_series": 40, "n_creators": 150, "seed": 2}


def test_ips_by_hand():
    placed = np.array([[2, 0, 1], [4, 3, -1]])
    exposure = np.array([[2, 1, 0], [4, 3, 0]])  # request 1 shows 2 items (its third slot is padding)
    click = np.array([[1, 1, 0], [0, 1, 0]])
    values = randomized_ips(placed, exposure, np.array([3, 2]), click, m=np.array([4, 5]),
                            randomized=np.array([True, True]))
    # request 0: slot 0 matches and was clicked (slot 1 clicked but placed 0 != shown 1): 1 * m = 4;
    # request 1: both slots match, slot 1 clicked: 1 * 5
    assert values.tolist() == [4.0, 5.0]
    out = randomized_ips(placed, exposure, np.array([3, 2]), click, np.array([4, 5]), np.array([True, False]))
    assert out[0] == 4.0 and np.isnan(out[1])  # outside the bucket: no estimate


def test_ips_is_unbiased_when_clicks_follow_item_and_position():
    """A position-based world (click = examined(slot) * attractive(item)): the mean IPS value
    over uniformly shuffled lists matches a fixed target list's exact E[clicks]."""
    rng = np.random.default_rng(0)
    R, m, n = 60_000, 6, 3
    attract = rng.uniform(0.05, 0.6, size=(R, m))
    examine = np.array([1.0, 0.6, 0.3])
    target = np.argsort(-(attract + rng.normal(scale=0.2, size=(R, m))), axis=1)[:, :n]  # a decent ranker
    truth = (examine * np.take_along_axis(attract, target, axis=1)).sum(1).mean()
    _, shown = randomize(np.zeros((R, n), dtype=np.int64), m, 1.0, rng)
    click = (rng.random((R, n)) < examine * np.take_along_axis(attract, shown, axis=1)).astype(int)
    values = randomized_ips(target, shown, np.full(R, n), click, np.full(R, m), np.ones(R, dtype=bool))
    se = values.std() / np.sqrt(R)
    assert abs(values.mean() - truth) < 3 * se and se < 0.02 * truth
    assert abs(click.sum(1).mean() - truth) > 10 * se  # the random lists' own clicks are far lower


def test_randomize_puts_every_candidate_on_every_slot_alike():
    rng = np.random.default_rng(1)
    production = np.tile(np.arange(4), (20_000, 1))
    randomized, exposure = randomize(production, 8, 0.25, rng)
    assert abs(randomized.mean() - 0.25) < 0.02
    assert (exposure[~randomized] == production[~randomized]).all()
    bucket = exposure[randomized]
    assert all(len(set(row)) == 4 for row in bucket[:200])  # n distinct candidates
    freq = np.stack([np.bincount(bucket[:, k], minlength=8) for k in range(4)]) / len(bucket)
    assert np.abs(freq - 1 / 8).max() < 0.015  # every (candidate, slot) with probability 1/m


def test_a_world_without_the_bucket_logs_as_before_and_one_with_it_marks_its_requests():
    plain = simulate_requests(World.generate(WorldConfig(**SMALL)), 300, 0, np.random.default_rng(3))
    assert plain.randomized is None and "randomized" not in to_log_table(World.generate(WorldConfig(**SMALL)), plain).column_names
    world = World.generate(WorldConfig(**SMALL, randomized_share=0.5))
    batch = simulate_requests(world, 300, 0, np.random.default_rng(3))
    assert np.array_equal(batch.candidates, plain.candidates)  # the same requests, drawn before the bucket
    assert (batch.exposure[~batch.randomized] == plain.exposure[~batch.randomized]).all()
    assert 0.4 < batch.randomized.mean() < 0.6
    table = to_log_table(world, batch)
    flags = table.column("randomized").to_numpy().reshape(300, -1)
    assert (flags == batch.randomized[:, None]).all()  # one value per request, on every row


def test_add_ips_reports_the_bucket_beside_production():
    clicks = [[1, 0], [1, 1], [1, 1], [0, 1], [1, 0], [0, 0]]
    table = pa.table({"click": pa.array(clicks, type=pa.list_(pa.float32())),
                      "randomized": pa.array([0, 0, 0, 1, 1, 1], type=pa.int8())})
    nan = float("nan")
    rows = {"logged exposure": {"_ips": np.array([nan, nan, nan, 0.0, 0.0, 0.0])},
            "model": {"_ips": np.array([nan, nan, nan, 4.0, 2.0, 0.0])}}
    add_ips(rows, table)
    logged, model = rows["logged exposure"], rows["model"]
    assert logged["ips_clicks"] == pytest.approx(5 / 3) and logged["ips_requests"] == 3  # production: 1, 2, 2 clicks
    assert model["ips_clicks"] == pytest.approx(2.0) and model["ips_requests"] == 3
    assert model["ips_lift"] == pytest.approx(2.0 / (5 / 3) - 1.0)
    assert model["ips_clicks_lo"] <= 2.0 <= model["ips_clicks_hi"] and model["ips_lift_lo"] < 0.2 < model["ips_lift_hi"]
    assert "_ips" not in model and "_ips" not in logged


def test_the_report_estimates_rows_on_the_bucket_and_production_outside_it():
    world = World.generate(WorldConfig(**SMALL, randomized_share=0.5))
    batch = simulate_requests(world, 600, 0, np.random.default_rng(4))
    table, meta = sequences_of(to_log_table(world, batch))  # contract -> sequences -> encoded, no Ray
    assert table.column("randomized").to_pylist() == batch.randomized.astype(int).tolist()
    rows = report_rows({}, table, meta, world)
    clicks = batch.feedback["click"].sum(1)
    logged, upstream = rows["logged exposure"], rows["upstream order"]
    assert logged["ips_clicks"] == pytest.approx(clicks[~batch.randomized].mean())  # production, on-policy
    assert logged["ips_requests"] == (~batch.randomized).sum()
    # the upstream order places candidate k on slot k: a bucket request counts m * its clicks where
    # the shuffle happened to show candidate k on slot k
    m = batch.candidates.shape[1]
    hits = (batch.exposure == np.arange(batch.exposure.shape[1])) * batch.feedback["click"]
    assert upstream["ips_clicks"] == pytest.approx((m * hits.sum(1))[batch.randomized].mean())
    assert upstream["ips_requests"] == batch.randomized.sum()
    assert upstream["ips_clicks_lo"] <= upstream["ips_clicks"] <= upstream["ips_clicks_hi"]
    assert upstream["ips_lift"] == pytest.approx(upstream["ips_clicks"] / logged["ips_clicks"] - 1.0)
    assert "IPS vs production [95% CI]" in markdown_table(rows)
