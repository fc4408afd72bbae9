"""Data for the sparse-table tests: the small click model's, one id out of the table's range."""

import tensorflow as tf

from examples.recsys import _examples


def out_of_range_examples(shard_index: int, num_shards: int) -> tf.data.Dataset:
    ids, clicks = _examples(20_000, 2_000, seed=2)
    ids[5, 3] = 20_000  # the table has rows 0..19,999
    return tf.data.Dataset.from_tensor_slices((ids[shard_index::num_shards], clicks[shard_index::num_shards]))


def build_model_reading_ids_twice():
    """The small click model, with its item ids also fed (as numbers) to a dense layer: the ids must
    reach the model as they are, so the step cannot look rows up by position."""
    import keras

    from examples.recsys import IDS_PER_EXAMPLE

    ids = keras.Input(shape=(IDS_PER_EXAMPLE,), dtype="int32", name="item_ids")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(20_000, 16, name="items")(ids))
    as_numbers = keras.layers.Dense(4)(keras.ops.cast(ids, "float32") / 20_000.0)
    hidden = keras.layers.Dense(32, activation="relu")(keras.layers.Concatenate()([pooled, as_numbers]))
    return keras.Model(ids, keras.layers.Dense(1, activation="sigmoid")(hidden))


def build_model_with_a_root_of_its_rows():
    """The small click model with sqrt(|row|) after its table: the forward pass and the dense
    layers' gradients stay finite for a row of zeros, but that row's own gradient is NaN (0 * inf)."""
    import keras

    from examples.recsys import IDS_PER_EXAMPLE

    ids = keras.Input(shape=(IDS_PER_EXAMPLE,), dtype="int32", name="item_ids")
    rows = keras.layers.Embedding(20_000, 16, name="items")(ids)
    pooled = keras.layers.GlobalAveragePooling1D()(keras.ops.sqrt(keras.ops.abs(rows)))
    hidden = keras.layers.Dense(32, activation="relu")(pooled)
    return keras.Model(ids, keras.layers.Dense(1, activation="sigmoid")(hidden))
