"""A click model whose item ids come from an unbounded int64 space: `raytf.layers.DynamicEmbedding`.

The stream mixes items of a Zipf-like catalogue (a few popular, most rare; their keys are spread over
0..2**62 by a hash) with brand-new items that appear all the time (a fresh random key each: most of
them seen once), as a recommender's id stream does. The table admits an item after its second
sighting and holds at most `CAPACITY` rows, evicting the least often touched; the hidden click
tendency is a function of the popular items only, so there is something to learn.

    raytf train examples/recsys_dynamic.yaml

`build_small_*` / `small_*`: a 20,000-id space for tests, the same model with a `DynamicEmbedding`
or a `ShardedEmbedding` (every row initialized to 0.1, so both start from the same rows).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

IDS_PER_EXAMPLE = 20
WIDTH = 32
CAPACITY = 200_000
NEW_FRACTION = 0.2  # of the ids: items never seen before
EXAMPLES_PER_SHARD = 1 << 30  # a stream (a multiple of 1,024): as many batches as the run's steps take


def _model(table):
    import keras

    ids = keras.Input(shape=(IDS_PER_EXAMPLE,), dtype="int64", name="item_ids")
    pooled = table(ids)
    if len(pooled.shape) == 3:
        pooled = keras.layers.GlobalAveragePooling1D()(pooled)
    hidden = keras.layers.Dense(32, activation="relu")(pooled)
    return keras.Model(ids, keras.layers.Dense(1, activation="sigmoid")(hidden))


def build_model():
    from raytf.layers import DynamicEmbedding

    return _model(DynamicEmbedding(WIDTH, combiner="mean", admission={"min_count": 2},
                                   eviction={"capacity": CAPACITY}, name="items"))


def _keys(ranks: np.ndarray) -> np.ndarray:
    from raytf.exchange.key_index import mix64

    return (mix64(ranks, seed=11) >> np.uint64(2)).astype(np.int64)  # < 2**62


def _batch(rng: np.random.Generator, count: int, fresh: float = NEW_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    ranks = (rng.pareto(0.6, size=(count, IDS_PER_EXAMPLE)) * 500).astype(np.int64)
    keys = _keys(ranks)
    new = rng.random(size=keys.shape) < fresh
    keys[new] = rng.integers(0, 2**62, size=int(new.sum()), dtype=np.int64)
    score = np.where((ranks < 1000) & ~new, np.sin(ranks * 0.7), 0.0)
    clicks = (score.mean(axis=1) + rng.normal(0, 0.02, count) > 0).astype(np.float32)
    return keys, clicks


def _stream(seed: int, examples: int, fresh: float = NEW_FRACTION) -> tf.data.Dataset:
    def generate():  # blocks of 1,024 examples (one Python call each, not one per example)
        rng = np.random.default_rng(seed)
        for _ in range(0, examples, 1024):
            yield _batch(rng, 1024, fresh)

    blocks = tf.data.Dataset.from_generator(generate, output_signature=(
        tf.TensorSpec((1024, IDS_PER_EXAMPLE), tf.int64), tf.TensorSpec((1024,), tf.float32)))
    return blocks.unbatch().apply(tf.data.experimental.assert_cardinality(examples))


def train_examples(shard_index: int, num_shards: int) -> tf.data.Dataset:
    return _stream(100 + shard_index, EXAMPLES_PER_SHARD)


def eval_examples() -> tf.data.Dataset:
    return _stream(7, 4096)


# -- a flood of new keys, for the memory benchmark (examples/recsys_benchmark.py --stream) -------
FLOOD_FRACTION = 0.5  # half of all ids never seen before: ~5,100 new keys per step of 2 workers


FLOOD_CAPACITY = 50_000  # rows: reached after ~1,000 steps, then held by evicting the least touched


def build_flood_model():
    from raytf.layers import DynamicEmbedding

    return _model(DynamicEmbedding(WIDTH, combiner="mean", admission={"min_count": 2},
                                   eviction={"capacity": FLOOD_CAPACITY}, name="items"))


def flood_train_examples(shard_index: int, num_shards: int) -> tf.data.Dataset:
    return _stream(200 + shard_index, EXAMPLES_PER_SHARD, FLOOD_FRACTION)


# -- small, for tests ----------------------------------------------------------------------------
SMALL_IDS = 20_000


def _small(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ranks = np.minimum((rng.pareto(0.6, size=(count, IDS_PER_EXAMPLE)) * 100).astype(np.int64), SMALL_IDS - 1)
    clicks = (np.where(ranks < 300, np.sin(ranks * 0.7), 0.0).mean(axis=1) > 0).astype(np.float32)
    return ranks, clicks


def build_small_dynamic_model():
    from raytf.layers import DynamicEmbedding

    import keras

    return _model(DynamicEmbedding(16, embeddings_initializer=keras.initializers.Constant(0.1),
                                   name="items"))  # pooled as the sharded one


def build_small_sharded_model():
    import keras

    from raytf.layers import ShardedEmbedding

    table = ShardedEmbedding(SMALL_IDS, 16, embeddings_initializer=keras.initializers.Constant(0.1), name="items")
    return _model(lambda ids: keras.layers.GlobalAveragePooling1D()(table(ids)))


def small_train_examples(shard_index: int, num_shards: int) -> tf.data.Dataset:
    ids, clicks = _small(8192, seed=2)
    return tf.data.Dataset.from_tensor_slices((ids[shard_index::num_shards], clicks[shard_index::num_shards]))


def small_eval_examples() -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(_small(1024, seed=3))
