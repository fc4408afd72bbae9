"""A synthetic click model with a large item table: what sparse embedding tables are for.

Each example is a user's 20 item ids, drawn from a Zipf-like distribution over the catalogue (a
few items are popular, most are rare), and a click label that a hidden per-item score decides,
so the model has something to learn: `Embedding(items, 64)` -> mean over the 20 items -> MLP ->
click probability. `build_model`/`train_examples`/`eval_examples` use a 1,000,000-item table
(256 MB); the `small_*` ones a 20,000-item table for tests; `build_huge_model` a 10,000,000-item
`raytf.layers.ShardedEmbedding` (2.56 GB) that no worker holds whole; `build_dynamic_model` the
1,000,000-item model with a `raytf.layers.DynamicEmbedding` (rows made on first touch);
`build_string_model` the same with item names as string keys.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

IDS_PER_EXAMPLE = 20
WIDTH = 64
EXAMPLES = 40_000
EVAL_EXAMPLES = 4_000


def _model(items: int, width: int, table=None, dtype: str = "int32"):
    import keras

    ids = keras.Input(shape=(IDS_PER_EXAMPLE,), dtype=dtype, name="item_ids")
    embedded = (table or keras.layers.Embedding(items, width, name="items"))(ids)
    pooled = keras.layers.GlobalAveragePooling1D()(embedded)
    hidden = keras.layers.Dense(32, activation="relu")(pooled)
    return keras.Model(ids, keras.layers.Dense(1, activation="sigmoid")(hidden))


def _examples(items: int, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Zipf-like popularity (Pareto-distributed ranks: a batch of 256 touches ~3,000 distinct items of a
    # million); ids are the ranks shuffled over the catalogue.
    ranks = np.minimum((rng.pareto(0.6, size=(count, IDS_PER_EXAMPLE)) * 500).astype(np.int64), items - 1)
    permutation = np.random.default_rng(1).permutation(items)
    ids = permutation[ranks].astype(np.int32)
    # The hidden click tendency of the 1,000 most popular items (the rest are neutral): seen often
    # enough to be learnt, and spread over the whole table by the permutation.
    score = np.where(ranks < 1000, np.sin(ranks * 0.7), 0.0)
    clicks = (score.mean(axis=1) + rng.normal(0, 0.02, count) > 0).astype(np.float32)
    return ids, clicks


def _train(items: int, shard_index: int, num_shards: int) -> tf.data.Dataset:
    ids, clicks = _examples(items, EXAMPLES, seed=2)
    return tf.data.Dataset.from_tensor_slices((ids[shard_index::num_shards], clicks[shard_index::num_shards]))


def _eval(items: int) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(_examples(items, EVAL_EXAMPLES, seed=3))


def build_model():
    return _model(1_000_000, WIDTH)


def train_examples(shard_index: int, num_shards: int) -> tf.data.Dataset:
    return _train(1_000_000, shard_index, num_shards)


def eval_examples() -> tf.data.Dataset:
    return _eval(1_000_000)


PARQUET_DIR = "runs/data/recsys"  # relative to where raytf runs (the repository's root for examples/recsys.yaml)
PARQUET_FILES = 4


def write_parquet(directory: str = PARQUET_DIR, items: int = 1_000_000) -> list[str]:
    """The click data as Parquet, written on first use (examples/recsys.yaml's `make`): the training
    examples in PARQUET_FILES files (item_ids: a list of 20 ids per row; clicked: 0 or 1), the
    evaluation examples in eval.parquet. Returns the files."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(directory, exist_ok=True)
    paths = [os.path.join(directory, f"train-{i}.parquet") for i in range(PARQUET_FILES)] + [
        os.path.join(directory, "eval.parquet")]
    if all(os.path.exists(path) for path in paths):
        return paths
    ids, clicks = _examples(items, EXAMPLES, seed=2)
    parts = [(path, ids[i::PARQUET_FILES], clicks[i::PARQUET_FILES]) for i, path in enumerate(paths[:-1])]
    parts.append((paths[-1], *_examples(items, EVAL_EXAMPLES, seed=3)))
    for path, part_ids, part_clicks in parts:
        table = pa.table({"item_ids": pa.FixedSizeListArray.from_arrays(pa.array(part_ids.reshape(-1)), IDS_PER_EXAMPLE),
                          "clicked": pa.array(part_clicks)})
        pq.write_table(table, path + ".tmp", row_group_size=4096)
        os.replace(path + ".tmp", path)  # whole files only, also when two runs start at once
    return paths


def ray_train_dataset():
    """The training examples of write_parquet's files as a Ray Data dataset (format: ray_data)."""
    import ray.data

    return ray.data.read_parquet(write_parquet()[:-1])


def build_small_model():
    return _model(20_000, 16)


def small_train_examples(shard_index: int, num_shards: int) -> tf.data.Dataset:
    return _train(20_000, shard_index, num_shards)


def small_eval_examples() -> tf.data.Dataset:
    return _eval(20_000)


def build_small_sharded_model():
    from raytf.layers import ShardedEmbedding

    return _model(20_000, 16, ShardedEmbedding(20_000, 16, name="items"))


def build_dynamic_model():
    """The click model with a `raytf.layers.DynamicEmbedding` over the same ids (keys < 1,000,000 here):
    rows made on first touch, no admission, no eviction (the benchmark's fixed-versus-dynamic pair)."""
    from raytf.layers import DynamicEmbedding

    return _model(1_000_000, WIDTH, DynamicEmbedding(WIDTH, name="items"))


def build_string_model():
    """The click model with the items named ("item-<id>") and a `DynamicEmbedding(key_dtype="string")`:
    raytf hashes the names to int64 keys where the data is read (the benchmark's string-versus-int64 pair)."""
    from raytf.layers import DynamicEmbedding

    return _model(1_000_000, WIDTH, DynamicEmbedding(WIDTH, key_dtype="string", name="items"), dtype="string")


def _named(dataset: tf.data.Dataset) -> tf.data.Dataset:
    return dataset.map(lambda ids, clicks: (tf.strings.join(["item-", tf.strings.as_string(ids)]), clicks))


def string_train_examples(shard_index: int, num_shards: int) -> tf.data.Dataset:
    return _named(train_examples(shard_index, num_shards)).cache()  # (named once, not every pass)


def string_eval_examples() -> tf.data.Dataset:
    return _named(eval_examples())


HUGE = 10_000_000


def build_huge_model():
    """A 10,000,000 x 64 table (2.56 GB): only the parameter servers ever hold it whole."""
    from raytf.layers import ShardedEmbedding

    return _model(HUGE, WIDTH, ShardedEmbedding(HUGE, WIDTH, name="items"))


def huge_train_examples(shard_index: int, num_shards: int) -> tf.data.Dataset:
    return _train(HUGE, shard_index, num_shards)


def huge_eval_examples() -> tf.data.Dataset:
    return _eval(HUGE)
