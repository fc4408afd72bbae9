"""Keras layers for raytf.

`ShardedEmbedding` is `keras.layers.Embedding` with the same arguments and output, for tables
larger than a worker. In a plain Keras program it is an ordinary embedding. Under raytf (the
driver and the workers build the user's model inside `rows_on_servers`), its table exists only on
the parameter servers (`raytf.exchange.tables`): the layer holds just the rows of the batches it is about
to compute, in a small cache, and looks ids up there. The saved model has an ordinary full table.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Iterator

import keras

from raytf.errors import ConfigError

# Set while raytf builds a model whose ShardedEmbedding tables live on the servers: the batch size
# and how many batches ahead a worker holds rows for (the cache's capacity follows from them).
_ON_SERVERS: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar("raytf_rows_on_servers",
                                                                                     default=None)
from raytf.exchange.tables import ABSENT  # noqa: E402 - the id of an empty cache slot


@contextlib.contextmanager
def rows_on_servers(batch_size: int, batches: int = 2) -> Iterator[None]:
    """Build ShardedEmbedding layers with a row cache for `batches` batches instead of a full table."""
    token = _ON_SERVERS.set((batch_size, batches))
    try:
        yield
    finally:
        _ON_SERVERS.reset(token)


@keras.saving.register_keras_serializable(package="raytf")
class ShardedEmbedding(keras.layers.Embedding):
    """A drop-in for `keras.layers.Embedding` whose table raytf keeps on its parameter servers."""

    def build(self, input_shape=None):
        mode = _ON_SERVERS.get()
        self.on_servers = mode is not None
        if not self.on_servers:
            return super().build(input_shape)
        per_example = input_shape[1:] if input_shape is not None else ()
        if any(dim is None for dim in per_example):
            raise ValueError(f"ShardedEmbedding '{self.name}' needs a fixed number of ids per example under raytf "
                             f"(its input shape is {tuple(input_shape)}).")
        batch_size, batches = mode
        self.capacity = batch_size * batches * math.prod(per_example)
        # The rows of the ids of the next batches (filled by the worker), and those ids, sorted.
        self._embeddings = self.add_weight(shape=(self.capacity, self.output_dim), initializer="zeros",
                                          name="embeddings", trainable=True)
        self.cached_ids = self.add_weight(shape=(self.capacity,), initializer=keras.initializers.Constant(ABSENT),
                                          dtype="int64", name="cached_ids", trainable=False)
        self.built = True

    @property
    def logical_shape(self) -> tuple[int, int]:
        return (self.input_dim, self.output_dim)

    def call(self, inputs):
        if not getattr(self, "on_servers", False):
            return super().call(inputs)
        import tensorflow as tf

        if getattr(self, "by_position", False):
            # raytf's step passes the places of the ids among the rows it maps `embeddings` to
            # (raytf.replica.tables.WorkerTables.use_rows_in_step), not the ids.
            return tf.gather(self.embeddings.value, inputs)

        ids = tf.cast(tf.reshape(inputs, [-1]), tf.int64)
        positions = tf.searchsorted(self.cached_ids.value, ids)
        rows = tf.gather(self.embeddings.value, tf.minimum(positions, self.capacity - 1))
        return tf.reshape(rows, tf.concat([tf.shape(inputs), [self.output_dim]], 0))


def initializer_settings(layer, seed: int) -> dict:
    """The layer's initializer as the servers recreate it, row by row (independent of their number)."""
    import numpy as np

    init = layer.embeddings_initializer
    if isinstance(init, keras.initializers.RandomUniform):
        return {"name": "uniform", "low": init.minval, "high": init.maxval, "seed": seed}
    if isinstance(init, (keras.initializers.RandomNormal, keras.initializers.TruncatedNormal)):
        return {"name": "normal", "mean": init.mean, "stddev": init.stddev, "seed": seed,
                "truncated": isinstance(init, keras.initializers.TruncatedNormal)}
    if isinstance(init, keras.initializers.Zeros):
        return {"name": "zeros", "seed": seed}
    if isinstance(init, keras.initializers.Constant) and np.ndim(init.value) == 0:
        return {"name": "constant", "value": float(init.value), "seed": seed}
    raise ConfigError(
        f"The {type(layer).__name__} '{layer.name}' has the initializer {type(init).__name__}; its rows are created on the "
        "parameter servers, which know uniform, normal, truncated_normal, zeros and a scalar constant.",
        "Give the layer one of those embeddings_initializer values (the default, uniform, works).")
