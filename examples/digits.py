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



def _ray_dataset(features, labels):
    """Rows of raw pixel values (0..16, as the data set has them) scaled by a Ray Data map: a lazy dataset,
    whose reading runs as Ray tasks."""
    import ray.data

    raw = ray.data.from_items([{"pixels": row * 16.0, "digit": int(label)} for row, label in zip(features, labels)])
    return raw.map_batches(_scaled, batch_format="numpy")


def _scaled(batch: dict) -> dict:
    return {"pixels": (batch["pixels"] / 16.0).astype(np.float32), "digit": batch["digit"]}


def ray_train_dataset():
    """The training images as a Ray Data dataset (examples/digits_ray_data.yaml): columns pixels (64
    floats) and digit; raytf splits it between the workers (streaming_split, equal)."""
    (features, labels), _ = _split()
    return _ray_dataset(features, labels)


def ray_eval_dataset():
    _, (features, labels) = _split()
    return _ray_dataset(features, labels)
