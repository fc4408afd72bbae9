import numpy as np
import pytest

from raytf.errors import ConfigError
from raytf.exchange.sharding import VariableSpec, aligned_offsets, plan_shards

MLP = [VariableSpec("d1/kernel", (784, 1024)), VariableSpec("d1/bias", (1024,)),
       VariableSpec("d2/kernel", (1024, 1024)), VariableSpec("d2/bias", (1024,)),
       VariableSpec("d3/kernel", (1024, 10)), VariableSpec("d3/bias", (10,))]


@pytest.mark.parametrize("servers", [1, 2, 3, 6])
def test_every_variable_is_owned_exactly_once(servers):
    plan = plan_shards(MLP, servers)
    owned = [i for shard in plan.shards for i in shard.variables]
    assert sorted(owned) == list(range(len(MLP)))
    for shard in plan.shards:
        assert shard.variables, "no server may own nothing"
        # the MLP's sizes are multiples of 16 floats except the last bias: end to end, no padding
        assert list(shard.offsets) == [sum(shard.sizes[:k]) for k in range(len(shard.sizes))]
        assert shard.size == shard.values == sum(MLP[i].size for i in shard.variables)
        for i in shard.variables:
            assert plan.owner_of(i) == shard.index


def test_bytes_are_balanced_greedily():
    # Eight equal variables over four servers: exactly two each.
    plan = plan_shards([VariableSpec(f"v{i}", (100,)) for i in range(8)], 4)
    assert [len(s.variables) for s in plan.shards] == [2, 2, 2, 2]
    # Uneven sizes: no server carries more than the largest variable above the lightest one.
    specs = [VariableSpec(f"v{i}", (n,)) for i, n in enumerate([900, 500, 400, 300, 300, 200, 100, 100])]
    plan = plan_shards(specs, 3)
    loads = [s.values for s in plan.shards]
    assert max(loads) - min(loads) <= 900
    assert sum(loads) == 2800


def test_more_servers_than_variables_is_a_config_error():
    with pytest.raises(ConfigError, match="parameter_servers.*at most 6"):
        plan_shards(MLP, 7)


def test_plan_is_deterministic():
    assert plan_shards(MLP, 2) == plan_shards(list(MLP), 2)


def test_every_variable_starts_on_a_64_byte_boundary_and_packs_back():
    """A worker hands each variable's part of a slot to TensorFlow without a copy only when it is
    64-byte aligned; the padding between variables is zero (and a zero gradient keeps it zero)."""
    specs = [VariableSpec("w", (3, 5)), VariableSpec("b", (5,)), VariableSpec("w2", (5, 7)), VariableSpec("b2", (1,))]
    (shard,) = plan_shards(specs, 1).shards
    assert shard.offsets == (0, 16, 32, 80) and shard.size == 81 and shard.values == 56
    assert all(offset * 4 % 64 == 0 for offset in shard.offsets)
    values = [np.arange(v.size, dtype=np.float32).reshape(v.shape) + 100 * k for k, v in enumerate(specs)]
    flat = shard.pack(values)
    assert flat.dtype == np.float32 and flat.shape == (81,)
    for part, value in zip(shard.parts(flat), values):
        np.testing.assert_array_equal(part, value.reshape(-1))
    padding = np.ones(81, bool)
    for offset, size in zip(shard.offsets, shard.sizes):
        padding[offset:offset + size] = False
    assert padding.sum() == 81 - 56 and not flat[padding].any()
    assert aligned_offsets([3, 5, 35, 1], 1) == (0, 3, 8, 43)  # checkpoints from before the alignment
