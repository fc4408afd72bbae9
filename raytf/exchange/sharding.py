"""Which parameter server owns which variable.

Dense variables are placed greedily, largest first, on the server with the fewest bytes so far,
so P servers carry about equal load. Each server's variables are laid in one flat float32 buffer,
each starting at a multiple of 64 bytes; `ShardPlan` records the offsets so both sides can pack and
unpack. The alignment lets a worker hand each variable's part of a shared-memory slot to its XLA step
as a tensor without a copy (TensorFlow copies a buffer that is not 64-byte aligned). Sparse
embedding tables (`raytf.exchange.tables`) are not placed whole: their rows are spread over every server.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from raytf.errors import ConfigError
from raytf.exchange.tables import TableSpec
from raytf.runtime import ALIGN_BYTES, aligned_zeros

ALIGN_FLOATS = ALIGN_BYTES // 4  # float32s per TensorFlow alignment unit


def aligned_offsets(sizes: Sequence[int], align: int = ALIGN_FLOATS) -> tuple[int, ...]:
    """Where each variable starts in a flat buffer: end to end, each start rounded up to `align` floats."""
    offsets, end = [], 0
    for size in sizes:
        end = -(-end // align) * align
        offsets.append(end)
        end += size
    return tuple(offsets)


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
    offsets: tuple[int, ...]  # start of each variable in the flat buffer (aligned: `aligned_offsets`)
    sizes: tuple[int, ...]

    @property
    def size(self) -> int:
        """Floats in the flat buffer, the padding between variables included."""
        return self.offsets[-1] + self.sizes[-1] if self.sizes else 0

    @property
    def values(self) -> int:
        """Floats that are parameters (the buffer without its padding)."""
        return sum(self.sizes)

    def pack(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        """The variables' values (in `variables` order, any shape) as one flat buffer, padding zeroed
        (a zero gradient keeps zero padding zero under every optimizer)."""
        flat = aligned_zeros(self.size)  # 64-byte aligned: the variables' parts can go to TensorFlow uncopied
        for part, offset, size in zip(parts, self.offsets, self.sizes):
            flat[offset:offset + size] = np.asarray(part, np.float32).reshape(-1)
        return flat

    def parts(self, flat: np.ndarray) -> list[np.ndarray]:
        """Views of each variable's values in `flat` (1-D)."""
        return [flat[offset:offset + size] for offset, size in zip(self.offsets, self.sizes)]


@dataclass(frozen=True)
class ShardPlan:
    variables: tuple[VariableSpec, ...]
    shards: tuple[Shard, ...]  # the dense variables, whole, one flat buffer per server
    tables: tuple[TableSpec, ...] = ()  # sparse tables, their rows over every server (raytf.exchange.tables)

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
        offsets = aligned_offsets(sizes)
        shards.append(Shard(index=server, variables=tuple(indices), offsets=offsets, sizes=sizes))
    return ShardPlan(variables=tuple(variables), shards=tuple(shards), tables=tuple(tables))
