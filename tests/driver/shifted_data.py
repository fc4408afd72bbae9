"""A model with BatchNormalization, and shards whose features have different means: worker i's
examples have x ~ N(10 * i, 1), so each worker's moving mean alone is 10 * i, and the mean over all
shards (equal in size) is 10 * (workers - 1) / 2."""

import numpy as np
import tensorflow as tf


def build_model():
    import keras

    x = keras.Input(shape=(1,))
    normalized = keras.layers.BatchNormalization(momentum=0.8, name="norm")(x)  # quick to follow its data
    return keras.Model(x, keras.layers.Dense(1)(normalized))


def train_examples(shard_index: int, num_shards: int) -> tf.data.Dataset:
    rng = np.random.default_rng(shard_index)
    x = rng.normal(10.0 * shard_index, 1.0, size=(2048, 1)).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices((x, 0.5 * x[:, 0]))
