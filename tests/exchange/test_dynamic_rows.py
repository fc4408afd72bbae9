"""A server's rows of a dynamic table (raytf.exchange.dynamic_rows): rows made on first touch from a
per-key initializer, admission by count and by probability, eviction by age and by capacity, and
updates by key equal to a fixed table's updates by id."""

from __future__ import annotations

import numpy as np
import pytest

from raytf.config import OptimizerConfig
from raytf.exchange.dynamic_rows import DynamicRows, DynamicSettings, initial_key_rows
from raytf.exchange.optimizers import RowOptimizer

WIDTH = 4
UNIFORM = {"name": "uniform", "low": -0.05, "high": 0.05, "seed": 3}


def rows_of(settings=DynamicSettings(), opt="sgd", init=UNIFORM, **kw) -> DynamicRows:
    config = OptimizerConfig(name=opt, learning_rate=0.5)
    return DynamicRows(config, WIDTH, init, settings, initial_rows=kw.pop("initial_rows", 4), **kw)


def keys(*values) -> np.ndarray:
    return np.array(values, np.int64)


def test_a_keys_row_depends_only_on_the_key_and_seed_and_follows_the_initializer():
    some = keys(5, 2**61, 17, 123456789012)
    rows = initial_key_rows(UNIFORM, some, WIDTH)
    np.testing.assert_array_equal(rows[[2, 0]], initial_key_rows(UNIFORM, keys(17, 5), WIDTH))
    assert not np.array_equal(rows, initial_key_rows({**UNIFORM, "seed": 4}, some, WIDTH))
    many = initial_key_rows(UNIFORM, np.arange(20_000), WIDTH)
    assert -0.05 <= many.min() and many.max() <= 0.05 and abs(many.mean()) < 1e-3
    normal = initial_key_rows({"name": "normal", "mean": 0.0, "stddev": 0.1, "seed": 1, "truncated": True},
                              np.arange(20_000), WIDTH)
    assert abs(normal.std() - 0.088) < 0.005 and np.abs(normal).max() <= 0.2  # truncated at 2 stddev


@pytest.mark.parametrize("opt", ["sgd", "adagrad"])
def test_updates_by_key_equal_a_fixed_tables_updates_by_id(opt):
    """Keys 1000 + i against a fixed table's row i: the same rows after the same rounds, through growth."""
    rng = np.random.default_rng(0)
    table = rows_of(opt=opt)
    config = OptimizerConfig(name=opt, learning_rate=0.5)
    fixed = RowOptimizer(config, initial_key_rows(UNIFORM, np.arange(1000, 1100), WIDTH))
    for _ in range(6):
        ids = np.unique(rng.integers(0, 100, size=30))
        got = table.gather(ids + 1000)
        np.testing.assert_array_equal(got, fixed.gather(ids))
        grads = [(ids, rng.standard_normal((len(ids), WIDTH)).astype(np.float32)) for _ in range(2)]
        table.apply_round([(i + 1000, g) for i, g in grads])
        fixed.apply_round(grads)
    every = np.arange(100)
    seen = table.index.lookup(every + 1000) >= 0
    np.testing.assert_allclose(table.gather(every[seen] + 1000), fixed.gather(every[seen]), rtol=1e-6)
    assert table.stats.created == seen.sum() and table.slots_held >= seen.sum()


def test_min_count_creates_a_row_at_the_nth_sighting_not_before_and_drops_gradients_until_then():
    table = rows_of(DynamicSettings(min_count=3))
    for sighting in (1, 2):
        np.testing.assert_array_equal(table.gather(keys(7)), np.zeros((1, WIDTH)))
        assert table.index.lookup(keys(7))[0] == -1, f"created at sighting {sighting}"
        table.apply_round([(keys(7), np.ones((1, WIDTH), np.float32))])
    assert table.stats.dropped_rows == 2 and table.stats.not_admitted == 2
    np.testing.assert_array_equal(table.gather(keys(7)), initial_key_rows(UNIFORM, keys(7), WIDTH))
    assert table.stats.created == 1


def test_probability_admission_is_a_function_of_the_key_and_seed():
    a = rows_of(DynamicSettings(probability=0.25, seed=1))
    b = rows_of(DynamicSettings(probability=0.25, seed=1))
    many = np.arange(4000)
    a.gather(many)
    b.gather(many[::-1].copy())
    assert 800 < a.stats.created < 1200
    np.testing.assert_array_equal(np.sort(a.index.items()[0]), np.sort(b.index.items()[0]))


def test_ttl_evicts_rows_untouched_for_that_many_updates_and_a_returning_key_starts_fresh():
    table = rows_of(DynamicSettings(ttl_steps=4))
    table.gather(keys(1, 2))
    table.apply_round([(keys(1, 2), np.ones((2, WIDTH), np.float32))])
    for _ in range(8):  # key 2 is touched every update, key 1 never again
        table.gather(keys(2))
        table.apply_round([(keys(2), np.ones((1, WIDTH), np.float32))])
    assert table.index.lookup(keys(1))[0] == -1 and table.index.lookup(keys(2))[0] >= 0
    assert table.stats.evicted == 1 and table.counts()["live"] == 1
    np.testing.assert_array_equal(table.gather(keys(1)), initial_key_rows(UNIFORM, keys(1), WIDTH))


def test_capacity_evicts_the_least_touched_rows_and_holds_the_table_at_its_capacity():
    table = rows_of(DynamicSettings(capacity=64), initial_rows=8)
    popular = np.arange(8)
    for step in range(30):
        fresh = 1000 + np.arange(step * 10, step * 10 + 10)
        table.gather(np.concatenate([popular, fresh]))
        table.apply_round([])
    assert table.slots_held == 64 and len(table.index) <= 64
    assert (table.index.lookup(popular) >= 0).all()  # touched every update: never the least touched
    assert table.stats.evicted == table.stats.created - len(table.index)


def test_keys_still_being_counted_are_bounded_and_a_forgotten_key_is_never_admitted_early(monkeypatch):
    from raytf.exchange import dynamic_rows

    monkeypatch.setattr(dynamic_rows, "PENDING_MIN", 100)
    table = rows_of(DynamicSettings(min_count=2, capacity=50), initial_rows=8)  # at most 4 * 100 pending keys
    table.gather(keys(1))  # key 1's first sighting, then a flood of keys seen once
    for start in range(10, 5010, 100):
        table.gather(np.arange(start, start + 100))
        assert len(table._pending) <= 400
    table.gather(keys(1))  # forgotten: this is a first sighting again
    assert table.index.lookup(keys(1))[0] == -1
    table.gather(keys(1))
    assert table.index.lookup(keys(1))[0] >= 0 and table.stats.created == 1


def test_deltas_replayed_in_order_rebuild_the_table_through_creations_updates_and_evictions():
    from raytf.exchange.deltas import delta_arrays, replay

    rng = np.random.default_rng(4)
    table = rows_of(DynamicSettings(ttl_steps=3, capacity=40), initial_rows=8)
    followed: dict[int, np.ndarray] = {}
    evicted_any = False
    for step in range(30):
        ids = np.unique(rng.integers(0, 60, size=12))
        table.gather(ids)
        table.apply_round([(ids, rng.standard_normal((len(ids), WIDTH)).astype(np.float32))])
        if step % 4 == 3:
            columns = delta_arrays(0, *table.take_delta())
            evicted_any |= bool((columns["table0.op"] == 1).any())
            replay(followed, columns["table0.key"], columns["table0.op"], columns["table0.row"])
    columns = delta_arrays(0, *table.take_delta())
    replay(followed, columns["table0.key"], columns["table0.op"], columns["table0.row"])
    keys, rows = table.export()
    assert evicted_any and sorted(followed) == keys.tolist()
    np.testing.assert_array_equal(np.stack([followed[k] for k in keys.tolist()]), rows)
