"""Synthetic MNIST-shaped data (784 features, 10 classes) and the benchmark MLP 784-1024-1024-10.

The data is generated, so nothing is downloaded; labels come from a fixed random linear teacher,
so the loss really goes down.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

FEATURES = 784
CLASSES = 10
EXAMPLES_PER_SHARD = 8192


def build_model():
    import keras

    return keras.Sequential(
        [
            keras.Input(shape=(FEATURES,)),
            keras.layers.Dense(1024, activation="relu"),
            keras.layers.Dense(1024, activation="relu"),
            keras.layers.Dense(CLASSES),
        ]
    )


def _examples(seed: int, count: int):
    rng = np.random.default_rng(seed)
    teacher = np.random.default_rng(1234).standard_normal((FEATURES, CLASSES)).astype(np.float32)
    features = rng.standard_normal((count, FEATURES)).astype(np.float32)
    labels = np.argmax(features @ teacher, axis=1).astype(np.int32)
    return features, labels


def train_examples(shard_index: int, num_shards: int) -> tf.data.Dataset:
    del num_shards  # every shard is generated independently
    return tf.data.Dataset.from_tensor_slices(_examples(100 + shard_index, EXAMPLES_PER_SHARD))


def eval_examples() -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(_examples(7, 2048))
