"""scikit-learn's bundled 8x8 digits (1,797 images, no download) and a small Keras MLP."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

EVAL_FRACTION = 0.2


def _split():
    from sklearn.datasets import load_digits

    digits = load_digits()
    features = (digits.data / 16.0).astype(np.float32)  # pixel values 0..16 -> 0..1
    labels = digits.target.astype(np.int32)
    order = np.random.default_rng(0).permutation(len(labels))  # fixed split, same on every worker
    cut = int(len(labels) * (1 - EVAL_FRACTION))
    return (features[order[:cut]], labels[order[:cut]]), (features[order[cut:]], labels[order[cut:]])


def build_model():
    import keras

    return keras.Sequential(
        [
            keras.Input(shape=(64,)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


def train_examples(shard_index: int, num_shards: int) -> tf.data.Dataset:
    (features, labels), _ = _split()
    return tf.data.Dataset.from_tensor_slices((features[shard_index::num_shards], labels[shard_index::num_shards]))


def eval_examples() -> tf.data.Dataset:
    _, (features, labels) = _split()
    return tf.data.Dataset.from_tensor_slices((features, labels))
