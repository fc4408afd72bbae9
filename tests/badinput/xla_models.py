"""A model with an op XLA cannot compile (a Python function inside the graph)."""

import keras
import tensorflow as tf


class PythonIdentity(keras.layers.Layer):
    def call(self, x):
        y = tf.py_function(lambda a: a, [x], tf.float32)
        return tf.ensure_shape(y, x.shape)


def build_model():
    return keras.Sequential([keras.Input(shape=(64,)), keras.layers.Dense(16), PythonIdentity(), keras.layers.Dense(10)])
