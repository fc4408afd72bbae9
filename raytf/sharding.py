"""Which parameter server owns which variable.

Dense variables are placed greedily, largest first, on the server with the fewest bytes so far,
so P servers carry about equal load. Each server's variables are laid end to end in one flat
float32 buffer; `ShardPlan` records the offsets so both sides can pack and unpack. Sparse
embedding tables (`raytf.sparse`) are not placed whole: their rows are spread over every server.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from raytf.errors import ConfigError
from raytf.sparse import TableSpec


@dataclass(frozen=True)
class VariableSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * 4


@dataclass(frozen=True)
class Shard:
    """The variables one server owns: indices into the model's trainable variables, in buffer order."""

    index: int
    variables: tuple[int, ...]
    offsets: tuple[int, ...]  # start of each variable in the flat buffer
    sizes: tuple[int, ...]

    @property
    def size(self) -> int:
        return sum(self.sizes)


@dataclass(frozen=True)
class ShardPlan:
    variables: tuple[VariableSpec, ...]
    shards: tuple[Shard, ...]  # the dense variables, whole, one flat buffer per server
    tables: tuple[TableSpec, ...] = ()  # sparse tables, their rows over every server (raytf.sparse)

    @property
    def table_variables(self) -> set[int]:
        return {t.variable for t in self.tables}

    def owner_of(self, variable_index: int) -> int:
        for shard in self.shards:
            if variable_index in shard.variables:
                return shard.index
        raise KeyError(variable_index)


def plan_shards(variables: Sequence[VariableSpec], num_servers: int, tables: Sequence[TableSpec] = ()) -> ShardPlan:
    """Dense variables by bytes over the servers; `tables` (sparse, row-sharded) over all of them."""
    sparse = {t.variable for t in tables}
    dense = [i for i in range(len(variables)) if i not in sparse]
    if num_servers > len(dense) and not tables:
        raise ConfigError(
            f"distribution.parameter_servers is {num_servers} but the model has only {len(variables)} trainable variables,"
            " so some servers would own nothing.",
            f"Set distribution.parameter_servers to at most {len(variables)}.",
        )
    loads = [0] * num_servers
    owned: list[list[int]] = [[] for _ in range(num_servers)]
    # Largest first, ties by index, so the plan is deterministic.
    for index in sorted(dense, key=lambda i: (-variables[i].nbytes, i)):
        target = min(range(num_servers), key=lambda s: (loads[s], s))
        owned[target].append(index)
        loads[target] += variables[index].nbytes
    shards = []
    for server, indices in enumerate(owned):
        indices.sort()  # model order inside a buffer keeps packing cache-friendly
        sizes = tuple(variables[i].size for i in indices)
        offsets = tuple(sum(sizes[:k]) for k in range(len(sizes)))
        shards.append(Shard(index=server, variables=tuple(indices), offsets=offsets, sizes=sizes))
    return ShardPlan(variables=tuple(variables), shards=tuple(shards), tables=tuple(tables))
