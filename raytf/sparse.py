"""Sparse embedding tables: which tables, which rows live where, and rows as they travel.

An embedding table whose gradient is sparse (a batch touches a few thousand of its rows) is not
placed whole on one server like the dense variables: its rows are spread over every parameter
server (`mod`: row r on server r % P; `div`: contiguous ranges). Per step a worker pushes, per
server, the distinct ids of its batch that the server owns and their summed gradient rows, and
gets back the current rows for the ids of the batch it computes next. The helpers here are plain
numpy, shared by the driver (which tables), the workers (ids and rows out) and the servers (rows
in and out); the TensorFlow updates of a server's rows are in `raytf.sparse_optimizers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from raytf.errors import ConfigError, TrainingError

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

    @property
    def cached(self) -> bool:
        return self.init is not None

    @property
    def nbytes(self) -> int:
        return self.rows * self.width * 4

    @property
    def _block(self) -> int:
        return -(-self.rows // self.servers)  # div: rows per server, the last one may have fewer

    def owner(self, ids: np.ndarray) -> np.ndarray:
        return ids % self.servers if self.partition == "mod" else ids // self._block

    def local(self, ids: np.ndarray) -> np.ndarray:
        """Positions of (owned) global ids among their server's rows."""
        return ids // self.servers if self.partition == "mod" else ids % self._block

    def global_ids(self, server: int) -> np.ndarray:
        """The global ids of `server`'s rows, in its local order."""
        if self.partition == "mod":
            return np.arange(server, self.rows, self.servers, dtype=np.int64)
        return np.arange(server * self._block, min((server + 1) * self._block, self.rows), dtype=np.int64)

    def rows_of(self, server: int) -> int:
        return len(self.global_ids(server))

    def check_ids(self, ids: np.ndarray, worker: int) -> None:
        """Ids outside the table would be clamped silently by XLA's gather, training a wrong row."""
        if ids.size and (ids.min() < 0 or ids.max() >= self.rows):
            bad = int(ids.min() if ids.min() < 0 else ids.max())
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


def find_tables(model, config, features, labels) -> tuple[list[TableSpec], list[str]]:
    """The sparse tables of `model` as the config's `sparse` section asks, and notices about tables
    `auto` left dense. A table named in the config that cannot be sparse is a ConfigError."""
    import keras

    sparse = config.sparse
    if sparse.tables == "none":
        return [], []
    tvars = model.trainable_variables
    position = {id(v): i for i, v in enumerate(tvars)}
    candidates = [layer for layer in all_layers(model) if isinstance(layer, keras.layers.Embedding)]
    named = set() if sparse.tables == "auto" else set(sparse.tables)
    missing = named - {layer.name for layer in candidates}
    if missing:
        raise ConfigError(
            f"sparse.tables names {', '.join(sorted(map(repr, missing)))}, but the model has no embedding layer of that "
            f"name (its embedding layers: {', '.join(repr(layer.name) for layer in candidates) or 'none'}).",
            "Name keras.layers.Embedding layers of the model, or use sparse.tables: auto.",
        )
    sparse_grads = _sparse_gradients(model, features, labels, config)
    tables, notices = [], []
    servers = config.distribution.parameter_servers
    for layer in candidates:
        rows, width = (int(n) for n in (layer.logical_shape if _is_sharded(layer) else layer.embeddings.shape))
        if sparse.tables == "auto" and rows * width * 4 < sparse.min_bytes and not _is_sharded(layer):
            continue
        problem = _ineligible(layer, id(layer.embeddings) in sparse_grads)
        if problem:
            if layer.name in named or _is_sharded(layer):
                raise ConfigError(f"sparse.tables: the embedding layer '{layer.name}' cannot be a sparse table: {problem}.",
                                  "Fix the layer, or leave it out of sparse.tables (it is then exchanged whole).")
            notices.append(f"The embedding '{layer.name}' stays dense: {problem}.")
            continue
        on_servers = _is_sharded(layer) and getattr(layer, "on_servers", False)
        tables.append(TableSpec(variable=position[id(layer.embeddings)], layer=layer.name, rows=rows, width=width,
                                servers=servers, partition=sparse.partition,
                                init=_initializer(layer, config.seed + len(tables)) if on_servers else None))
    return tables, notices


def _initializer(layer, seed: int) -> dict:
    """The layer's initializer as the servers recreate it, row by row (independent of their number)."""
    import keras

    init = layer.embeddings_initializer
    if isinstance(init, keras.initializers.RandomUniform):
        return {"name": "uniform", "low": init.minval, "high": init.maxval, "seed": seed}
    if isinstance(init, (keras.initializers.RandomNormal, keras.initializers.TruncatedNormal)):
        return {"name": "normal", "mean": init.mean, "stddev": init.stddev, "seed": seed,
                "truncated": isinstance(init, keras.initializers.TruncatedNormal)}
    if isinstance(init, keras.initializers.Zeros):
        return {"name": "zeros", "seed": seed}
    raise ConfigError(
        f"The ShardedEmbedding '{layer.name}' has the initializer {type(init).__name__}; its rows are created on the "
        "parameter servers, which know uniform, normal, truncated_normal and zeros.",
        "Give the layer one of those embeddings_initializer values (the default, uniform, works).")


def initial_rows(spec: TableSpec, server: int, block: int = 65536) -> np.ndarray:
    """`server`'s rows of a ShardedEmbedding table, created from its initializer. Row r's values
    depend only on the seed and r (blocks of rows share a counter-based random stream), so a table
    is the same whatever the number of servers or the partition."""
    import tensorflow as tf

    init = spec.init
    ids = spec.global_ids(server)
    rows = np.empty((len(ids), spec.width), np.float32)
    if init["name"] == "zeros":
        rows[:] = 0
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


def all_layers(model) -> list:
    found, stack = [], list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop(0)
        found.append(layer)
        stack[:0] = list(getattr(layer, "layers", []))
    return found


def _is_sharded(layer) -> bool:
    from raytf.layers import ShardedEmbedding

    return isinstance(layer, ShardedEmbedding)


def _ineligible(layer, gradient_is_sparse: bool) -> str | None:
    import tensorflow as tf

    if tf.as_dtype(layer.embeddings.dtype) != tf.float32:
        return f"its table is {tf.as_dtype(layer.embeddings.dtype).name}, and the servers hold float32 rows"
    if getattr(layer, "embeddings_regularizer", None) is not None:
        return "it has an embeddings_regularizer, whose gradient touches every row"
    if getattr(layer, "embeddings_constraint", None) is not None:
        return "it has an embeddings_constraint, which applies to the whole table"
    if not gradient_is_sparse:
        return "its table is also used densely (e.g. tied to an output layer), so its gradient covers every row"
    return None


def _sparse_gradients(model, features, labels, config) -> set[int]:
    """ids of the variables whose gradient on one batch is sparse (tf.IndexedSlices)."""
    import tensorflow as tf

    from raytf.model import make_loss

    with tf.GradientTape() as tape:
        loss = make_loss(config.loss)(labels, model(features, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    return {id(v) for v, g in zip(model.trainable_variables, grads) if isinstance(g, tf.IndexedSlices)}


def describe(tables: Sequence[TableSpec]) -> str:
    return ", ".join(f"{t.layer} ({t.rows:,} x {t.width}, {t.nbytes / 2**20:,.0f} MB)" for t in tables)
