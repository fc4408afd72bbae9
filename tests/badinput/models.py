"""Deliberately broken model and data functions for the bad-input tests.

Configs name them as import paths, e.g. `model: tests.badinput.models:returns_a_string`.
Everything is tiny (4 features, 3 classes, 16 examples) so a check costs milliseconds.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

FEATURES = 4
CLASSES = 3
EXAMPLES = 16

NOT_CALLABLE = 42  # `model: tests.badinput.models:NOT_CALLABLE`


def _features(n: int = EXAMPLES, width: int = FEATURES) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, width)).astype(np.float32)


def _labels(n: int = EXAMPLES, high: int = CLASSES) -> np.ndarray:
    return (np.arange(n) % high).astype(np.int32)


# -- models --------------------------------------------------------------------------------


def build_model():
    import keras

    return keras.Sequential([keras.Input(shape=(FEATURES,)), keras.layers.Dense(CLASSES, activation="softmax")])


def build_model_five_inputs():
    import keras

    return keras.Sequential([keras.Input(shape=(5,)), keras.layers.Dense(CLASSES, activation="softmax")])


def returns_a_string():
    return "a model, honest"


def returns_a_layer():
    import keras

    return keras.layers.Dense(CLASSES)


def raises_while_building():
    raise RuntimeError("the model function is broken on purpose")


# -- data ----------------------------------------------------------------------------------


def train_data(shard_index: int, num_shards: int) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices((_features(), _labels()))


def train_data_takes_no_arguments() -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices((_features(), _labels()))


def returns_a_list(shard_index: int, num_shards: int):
    return [(row, label) for row, label in zip(_features(), _labels())]


def features_only(shard_index: int, num_shards: int) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(_features())


def three_tuples(shard_index: int, num_shards: int) -> tf.data.Dataset:
    weights = np.ones(EXAMPLES, np.float32)
    return tf.data.Dataset.from_tensor_slices((_features(), _labels(), weights))


def string_features(shard_index: int, num_shards: int) -> tf.data.Dataset:
    text = np.array([f"example {i}" for i in range(EXAMPLES)])
    return tf.data.Dataset.from_tensor_slices((text, _labels()))


def string_labels(shard_index: int, num_shards: int) -> tf.data.Dataset:
    names = np.array(["cat", "dog", "bird", "fish"] * (EXAMPLES // 4))
    return tf.data.Dataset.from_tensor_slices((_features(), names))


def ten_features(shard_index: int, num_shards: int) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices((_features(width=10), _labels()))


def labels_up_to_seven(shard_index: int, num_shards: int) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices((_features(), _labels(high=8)))


def negative_labels(shard_index: int, num_shards: int) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices((_features(), _labels() - 1))


def empty(shard_index: int, num_shards: int) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices((_features(n=0), _labels(n=0)))


def raises_while_loading(shard_index: int, num_shards: int) -> tf.data.Dataset:
    raise FileNotFoundError("/data/train.csv")


def eval_data() -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices((_features(n=8), _labels(n=8)))


def eval_data_six_features() -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices((_features(n=8, width=6), _labels(n=8)))
