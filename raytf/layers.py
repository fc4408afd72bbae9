"""Keras layers for raytf models (public): `ShardedEmbedding`, a drop-in for
`keras.layers.Embedding` whose table lives on the parameter servers (`raytf.replica.layers`)."""

from raytf.replica.layers import ShardedEmbedding, rows_on_servers

__all__ = ["ShardedEmbedding", "rows_on_servers"]
