import pytest

from raytf.errors import ConfigError
from raytf.sharding import VariableSpec, plan_shards

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
        # offsets lay the variables end to end in one flat buffer
        assert list(shard.offsets) == [sum(shard.sizes[:k]) for k in range(len(shard.sizes))]
        assert shard.size == sum(MLP[i].size for i in shard.variables)
        for i in shard.variables:
            assert plan.owner_of(i) == shard.index


def test_bytes_are_balanced_greedily():
    # Eight equal variables over four servers: exactly two each.
    plan = plan_shards([VariableSpec(f"v{i}", (100,)) for i in range(8)], 4)
    assert [len(s.variables) for s in plan.shards] == [2, 2, 2, 2]
    # Uneven sizes: no server carries more than the largest variable above the lightest one.
    specs = [VariableSpec(f"v{i}", (n,)) for i, n in enumerate([900, 500, 400, 300, 300, 200, 100, 100])]
    plan = plan_shards(specs, 3)
    loads = [s.size for s in plan.shards]
    assert max(loads) - min(loads) <= 900
    assert sum(loads) == 2800


def test_more_servers_than_variables_is_a_config_error():
    with pytest.raises(ConfigError, match="parameter_servers.*at most 6"):
        plan_shards(MLP, 7)


def test_plan_is_deterministic():
    assert plan_shards(MLP, 2) == plan_shards(list(MLP), 2)
