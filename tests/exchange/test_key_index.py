"""raytf.exchange.key_index: a vectorized int64 -> slot hash index, checked against a dict."""

from __future__ import annotations

import numpy as np
import pytest

from raytf.exchange.key_index import DELETED, EMPTY, KeyIndex, mix64


def test_lookup_insert_remove_agree_with_a_dict_through_growth_and_deletions():
    rng = np.random.default_rng(0)
    index, truth = KeyIndex(expected=8), {}
    next_slot = 0
    for round_ in range(40):
        keys = np.unique(rng.integers(-2**62, 2**62, size=300, dtype=np.int64) // (1 + round_ % 7 * 2**55))
        slots = index.lookup(keys)
        np.testing.assert_array_equal(slots, [truth.get(int(k), -1) for k in keys])
        new = keys[slots < 0]
        index.insert(new, np.arange(next_slot, next_slot + len(new)))
        truth.update({int(k): next_slot + i for i, k in enumerate(new)})
        next_slot += len(new)
        gone = rng.choice(np.fromiter(truth, np.int64), size=min(100, len(truth)), replace=False)
        np.testing.assert_array_equal(index.remove(gone), [truth.pop(int(k)) for k in gone])
        assert len(index) == len(truth)
    keys, slots = index.items()
    assert dict(zip(keys.tolist(), slots.tolist())) == truth


def test_keys_colliding_on_one_start_position_are_all_found():
    index = KeyIndex(expected=4)
    size = index._size
    start = index._start(np.arange(100_000, dtype=np.int64))
    same = np.flatnonzero(start == start[0])[:5]  # five keys whose probes start at one position
    index.insert(same, np.arange(5))
    np.testing.assert_array_equal(index.lookup(same), np.arange(5))
    index.remove(same[:2])  # deleted positions do not end the probe of the later ones
    np.testing.assert_array_equal(index.lookup(same), [-1, -1, 2, 3, 4])
    assert index._size == size


def test_reserved_keys_are_refused_and_mixing_is_stable():
    with pytest.raises(ValueError, match="reserved"):
        KeyIndex().insert(np.array([EMPTY, 5]), np.array([0, 1]))
    assert DELETED != EMPTY
    # the same value on every run and machine (a key's server and initial row depend on it)
    assert int(mix64(np.array([0], np.int64))[0]) == 0xE220A8397B1DCDAF
    assert mix64(np.array([7]), seed=1)[0] != mix64(np.array([7]), seed=2)[0]
