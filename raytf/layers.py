"""Keras layers for raytf models (public): `ShardedEmbedding`, a drop-in for
`keras.layers.Embedding` whose table lives on the parameter servers (`raytf.replica.layers`), and
`DynamicEmbedding`, a table keyed by ids from an unbounded space (`raytf.replica.dynamic_embedding`)."""

from raytf.replica.dynamic_embedding import DynamicEmbedding
from raytf.replica.layers import ShardedEmbedding, rows_on_servers

__all__ = ["DynamicEmbedding", "ShardedEmbedding", "rows_on_servers"]
