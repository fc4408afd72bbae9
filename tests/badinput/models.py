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


def build_embedding_model(regularizer=None):
    """FEATURES item ids per example (of 10 items) -> embedding 'items' -> class scores."""
    import keras

    return keras.Sequential([keras.Input(shape=(FEATURES,), dtype="int32"),
                             keras.layers.Embedding(10, 4, embeddings_regularizer=regularizer, name="items"),
                             keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(CLASSES, activation="softmax")])


def build_regularized_embedding_model():
    return build_embedding_model(regularizer="l2")


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


def build_model_float16():
    import keras

    return keras.Sequential([keras.Input(shape=(FEATURES,)), keras.layers.Dense(CLASSES, activation="softmax", dtype="float16")])


def build_frozen_model():
    model = build_model()
    model.trainable = False
    return model


def build_binary_model():
    import keras

    return keras.Sequential([keras.Input(shape=(FEATURES,)), keras.layers.Dense(1, activation="sigmoid")])


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


def fractional_labels(shard_index: int, num_shards: int) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices((_features(), _labels().astype(np.float32) + 0.5))


def binary_labels(shard_index: int, num_shards: int) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices((_features(), (_labels() % 2).astype(np.float32)[:, None]))


def float_class_ids(shard_index: int, num_shards: int) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices((_features(), _labels().astype(np.float32)))


def binary_labels_up_to_six(shard_index: int, num_shards: int) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices((_features(), (_labels() * 3).astype(np.float32)[:, None]))


def nan_features(shard_index: int, num_shards: int) -> tf.data.Dataset:
    features = _features()
    features[1, 2] = np.nan
    return tf.data.Dataset.from_tensor_slices((features, _labels()))


def dict_features(shard_index: int, num_shards: int) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(({"pixels": _features()}, _labels()))


def varying_shapes(shard_index: int, num_shards: int) -> tf.data.Dataset:
    # Like variable-length records read from files: example i has 2 + i % 3 features.
    def examples():
        for i in range(EXAMPLES):
            yield np.ones(2 + i % 3, np.float32), np.int32(i % CLASSES)

    spec = (tf.TensorSpec((None,), tf.float32), tf.TensorSpec((), tf.int32))
    return tf.data.Dataset.from_generator(examples, output_signature=spec)


def fails_while_reading(shard_index: int, num_shards: int) -> tf.data.Dataset:
    # The function returns a dataset; it breaks only when iterated (a corrupt record, say).
    def check(features, label):
        tf.debugging.assert_less(label, tf.constant(0, tf.int32), message="record 0 is corrupt")
        return features, label

    return tf.data.Dataset.from_tensor_slices((_features(), _labels())).map(check)


def eval_data() -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices((_features(n=8), _labels(n=8)))


def eval_data_six_features() -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices((_features(n=8, width=6), _labels(n=8)))


def eval_labels_up_to_nine() -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices((_features(n=10), np.arange(10, dtype=np.int32)))


def item_ids(shard_index: int, num_shards: int) -> tf.data.Dataset:
    ids = (np.arange(EXAMPLES * FEATURES).reshape(EXAMPLES, FEATURES) % 10).astype(np.int32)
    return tf.data.Dataset.from_tensor_slices((ids, _labels()))


def item_ids_out_of_range(shard_index: int, num_shards: int) -> tf.data.Dataset:
    ids = (np.arange(EXAMPLES * FEATURES).reshape(EXAMPLES, FEATURES) % 10).astype(np.int32)
    ids[1, 2] = 10  # the table has rows 0..9
    return tf.data.Dataset.from_tensor_slices((ids, _labels()))
