"""A click model with string keys (item names, looked up in a `DynamicEmbedding(key_dtype="string")`) and
an int64 user id beside them, and the same model on the strings' int64 keys hashed in the data by hand."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from examples.recsys_dynamic import _small

USERS = 50


def _model(item_dtype: str):
    import keras

    from raytf.layers import DynamicEmbedding

    items = keras.Input((20,), dtype=item_dtype, name="item_names")
    user = keras.Input((1,), dtype="int64", name="user")
    pooled = DynamicEmbedding(16, key_dtype=item_dtype, combiner="mean", name="items",
                              embeddings_initializer=keras.initializers.Constant(0.1))(items)
    person = DynamicEmbedding(4, combiner="sum", name="users", embeddings_initializer=keras.initializers.Constant(0.1))(user)
    hidden = keras.layers.Dense(16, activation="relu")(keras.layers.Concatenate()([pooled, person]))
    return keras.Model({"item_names": items, "user": user}, keras.layers.Dense(1, activation="sigmoid")(hidden))


def build_string_model():
    return _model("string")


def build_hashed_model():
    return _model("int64")


def _examples(count: int, seed: int, hashed: bool) -> tf.data.Dataset:
    ranks, clicks = _small(count, seed)
    names = tf.constant(np.char.add("item-", ranks.astype(str)))
    users = (ranks[:, :1] * 7919) % USERS
    items = tf.strings.to_hash_bucket_fast(names, 2**62) if hashed else names
    return tf.data.Dataset.from_tensor_slices(({"item_names": items, "user": users}, clicks))


def string_train(shard_index: int, num_shards: int) -> tf.data.Dataset:
    return _examples(4096, 2, False).shard(num_shards, shard_index)


def hashed_train(shard_index: int, num_shards: int) -> tf.data.Dataset:
    return _examples(4096, 2, True).shard(num_shards, shard_index)


def string_eval() -> tf.data.Dataset:
    return _examples(512, 3, False)


def hashed_eval() -> tf.data.Dataset:
    return _examples(512, 3, True)


# -- ragged lists: a history of item names of 0..12 items per example, looked up with a mean --------------
HISTORY = 12


def build_ragged_model():
    import keras

    from raytf.layers import DynamicEmbedding

    history = keras.Input((None,), dtype="string", ragged=True, name="history")
    pooled = DynamicEmbedding(8, key_dtype="string", combiner="mean", max_ids_per_example=HISTORY, name="history_items",
                              embeddings_initializer=keras.initializers.RandomUniform(-0.5, 0.5, seed=1))(history)
    hidden = keras.layers.Dense(8, activation="relu")(pooled)
    return keras.Model(history, keras.layers.Dense(1, activation="sigmoid")(hidden))


def ragged_examples(count: int = 1024, seed: int = 4) -> tf.data.Dataset:
    ranks, clicks = _small(count, seed)
    lengths = np.random.default_rng(seed).integers(0, HISTORY + 1, size=count)  # empty histories too
    names = [[f"item-{r}" for r in row[:n]] for row, n in zip(ranks, lengths)]
    return tf.data.Dataset.from_tensor_slices((tf.ragged.constant(names, dtype=tf.string), clicks))


def ragged_train(shard_index: int, num_shards: int) -> tf.data.Dataset:
    return ragged_examples().shard(num_shards, shard_index)


def ragged_eval() -> tf.data.Dataset:
    return ragged_examples(256, seed=5)


def write_ragged_parquet(directory) -> None:
    """ragged_examples() (train) and ragged_examples(256, seed=5) (eval) as Parquet files: `history` a list
    column of item names of different lengths, `clicked` the label."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for name, dataset in (("train", ragged_examples()), ("eval", ragged_eval())):
        rows = [(x.numpy().tolist(), float(y)) for x, y in dataset]
        table = pa.table({"history": pa.array([[v.decode() for v in h] for h, _ in rows], type=pa.list_(pa.string())),
                          "clicked": [y for _, y in rows]})
        pq.write_table(table, f"{directory}/{name}.parquet", row_group_size=300)
