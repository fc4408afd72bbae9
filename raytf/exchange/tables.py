"""Sparse embedding tables: which rows live where, and rows as they travel.

An embedding table whose gradient is sparse (a batch touches a few thousand of its rows) is not
placed whole on one server like the dense variables: its rows are spread over every parameter
server (`mod`: row r on server r % P; `div`: contiguous ranges). Per step a worker pushes, per
server, the distinct ids of its batch that the server owns and their summed gradient rows, and
gets back the current rows for the ids of the batch it computes next. The helpers here are plain
numpy, shared by the driver, the workers (ids and rows out) and the servers (rows in and out);
which of a model's tables are sparse is decided in `raytf.replica.sparse`, and the TensorFlow
updates of a server's rows are in `raytf.exchange.optimizers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from raytf.errors import TrainingError

# Optimizers whose slots a row optimizer updates only for the rows a step touches (sparse.slots: lazy).
# Here, not in raytf.exchange.optimizers, so the driver can say so without importing TensorFlow.
LAZY_OPTIMIZERS = ("momentum", "rmsprop", "adam")

ABSENT = 2**62  # the id of an empty slot of a ShardedEmbedding's row cache: sorts after every real id


@dataclass(frozen=True)
class TableSpec:
    """One sparse table: a trainable variable of shape (rows, width) split by rows over `servers`."""

    variable: int  # index into the model's trainable variables
    layer: str  # the Keras layer's name (for messages)
    rows: int
    width: int
    servers: int
    partition: str = "mod"
    # A ShardedEmbedding: no replica holds the table (only a cache of rows), so its servers create
    # its rows from the layer's initializer: {"name": "uniform" | "normal" | "zeros", ..., "seed": n}.
    init: dict | None = None
    # Ids one batch looks up (batch size x ids per example), which bounds a step's rows; 0: not fixed
    # (the rows then travel in Ray calls instead of fixed shared-memory segments, raytf.exchange.row_slots).
    per_batch: int = 0
    # A DynamicEmbedding (partition "hash"): ids are keys 0 <= key < 2**62 (`rows`), a key's server is
    # a hash of it and its local id the key itself; its servers keep key -> row storage
    # (raytf.exchange.dynamic_rows) with these admission and eviction settings.
    dynamic: dict | None = None

    @property
    def cached(self) -> bool:
        return self.init is not None

    @property
    def is_dynamic(self) -> bool:
        return self.partition == "hash"

    @property
    def nbytes(self) -> int:
        return 0 if self.is_dynamic else self.rows * self.width * 4  # a dynamic table's size is its live rows

    @property
    def _block(self) -> int:
        return -(-self.rows // self.servers)  # div: rows per server, the last one may have fewer

    def owner(self, ids: np.ndarray) -> np.ndarray:
        if self.is_dynamic:
            return key_owner(ids, self.servers)
        return ids % self.servers if self.partition == "mod" else ids // self._block

    def local(self, ids: np.ndarray) -> np.ndarray:
        """Positions of (owned) global ids among their server's rows (a dynamic table's: the keys)."""
        if self.is_dynamic:
            return ids
        return ids // self.servers if self.partition == "mod" else ids % self._block

    def global_ids(self, server: int) -> np.ndarray:
        """The global ids of `server`'s rows, in its local order."""
        if self.is_dynamic:
            raise ValueError(f"the dynamic table '{self.layer}' has no fixed rows per server")
        if self.partition == "mod":
            return np.arange(server, self.rows, self.servers, dtype=np.int64)
        return np.arange(server * self._block, min((server + 1) * self._block, self.rows), dtype=np.int64)

    def rows_of(self, server: int) -> int:
        return len(self.global_ids(server))

    def check_ids(self, ids: np.ndarray, worker: int) -> None:
        """Ids outside the table would be clamped silently by XLA's gather, training a wrong row."""
        if ids.size and (ids.min() < 0 or ids.max() >= self.rows):
            bad = int(ids.min() if ids.min() < 0 else ids.max())
            if self.is_dynamic:
                raise TrainingError(
                    f"worker {worker}: data.train: the batch has key {bad} for the DynamicEmbedding '{self.layer}', "
                    f"whose keys must be in 0..2**62-1 under raytf.",
                    "Map the keys into that range in the data (e.g. key % 2**62, or a hash), or use key_dtype='string'.",
                )
            raise TrainingError(
                f"worker {worker}: data.train: the batch has id {bad} for the embedding table '{self.layer}', whose "
                f"input_dim is {self.rows} (ids must be in 0..{self.rows - 1}).",
                "Fix the ids in the data (hash or clip them into range), or raise the layer's input_dim.",
            )


def dedupe(ids: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The distinct ids (sorted) and, with `rows`, the rows of equal ids summed."""
    unique, inverse = np.unique(ids.reshape(-1), return_inverse=True)
    if rows is None:
        return unique, None
    summed = np.zeros((len(unique), rows.shape[-1]), dtype=np.float32)
    np.add.at(summed, inverse, rows.reshape(len(inverse), -1))
    return unique, summed


def split(spec: TableSpec, ids: np.ndarray, rows: np.ndarray | None = None) -> list[tuple[np.ndarray, Any]]:
    """Per server: the local positions of the `ids` it owns (and their rows)."""
    owners = spec.owner(ids)
    parts = []
    for server in range(spec.servers):
        mine = owners == server
        parts.append((spec.local(ids[mine]), None if rows is None else rows[mine]))
    return parts


def initial_rows(spec: TableSpec, server: int, block: int = 65536) -> np.ndarray:
    """`server`'s rows of a ShardedEmbedding table, created from its initializer. Row r's values
    depend only on the seed and r (blocks of rows share a counter-based random stream), so a table
    is the same whatever the number of servers or the partition."""
    import tensorflow as tf

    init = spec.init
    ids = spec.global_ids(server)
    rows = np.empty((len(ids), spec.width), np.float32)
    if init["name"] in ("zeros", "constant"):
        rows[:] = init.get("value", 0.0)
        return rows
    for first in range(0, spec.rows, block):
        mine = (ids >= first) & (ids < first + block)
        if not mine.any():
            continue
        seed = tf.constant([init["seed"], first // block], tf.int64)
        shape = [min(block, spec.rows - first), spec.width]
        if init["name"] == "uniform":
            values = tf.random.stateless_uniform(shape, seed, init["low"], init["high"])
        elif init.get("truncated"):
            values = tf.random.stateless_truncated_normal(shape, seed, init["mean"], init["stddev"])
        else:
            values = tf.random.stateless_normal(shape, seed, init["mean"], init["stddev"])
        rows[mine] = values.numpy()[ids[mine] - first]
    return rows


def key_owner(keys, servers: int):
    """The server of each key of a dynamic table: a hash of the key (numpy, or a TensorFlow tensor)."""
    from raytf.exchange.key_index import mix64

    def owners(k: np.ndarray) -> np.ndarray:
        return (mix64(k) % np.uint64(servers)).astype(np.int64)

    if isinstance(keys, np.ndarray):
        return owners(keys)
    import tensorflow as tf

    return tf.reshape(tf.numpy_function(owners, [keys], tf.int64), tf.shape(keys))


def describe(tables: Sequence[TableSpec]) -> str:
    return ", ".join(f"{t.layer} (dynamic keys x {t.width})" if t.is_dynamic else
                     f"{t.layer} ({t.rows:,} x {t.width}, {t.nbytes / 2**20:,.0f} MB)" for t in tables)
