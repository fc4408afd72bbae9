"""`raytf export OUTPUT_DIR --savedmodel DEST`: a model with a DynamicEmbedding, saved as a run saves it,
exported and loaded by TensorFlow alone: the same predictions, unknown keys on the zero row; a
missing model or an existing destination is a clear error."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from typer.testing import CliRunner

from raytf.cli import app
from raytf.layers import DynamicEmbedding


def test_export_writes_a_savedmodel_that_predicts_as_the_keras_model(tmp_path):
    ids = np.random.default_rng(0).integers(0, 2**40, size=(200, 3))
    inputs = keras.Input((3,), dtype="int64")
    model = keras.Model(inputs, keras.layers.Dense(1)(DynamicEmbedding(4, combiner="sum", name="items")(inputs)))
    model.compile("sgd", "mse")
    model.fit(ids, np.ones(200), epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    result = CliRunner().invoke(app, ["export", str(tmp_path), "--savedmodel", str(tmp_path / "served")])
    assert result.exit_code == 0, result.output
    served = tf.saved_model.load(str(tmp_path / "served"))
    np.testing.assert_allclose(served.serve(tf.constant(ids[:5])).numpy(), model.predict(ids[:5], verbose=0),
                               rtol=1e-6)
    bias = model.layers[-1].get_weights()[1]
    np.testing.assert_allclose(served.serve(tf.constant([[2**50, 2**51, 7]], tf.int64)).numpy()[0], bias, rtol=1e-6)
    again = CliRunner().invoke(app, ["export", str(tmp_path), "--savedmodel", str(tmp_path / "served")])
    assert again.exit_code == 2 and "exists already" in again.output


def test_a_savedmodel_takes_ragged_string_lists_dense_padded_with_empty_strings(tmp_path):
    lists = keras.Input((None,), dtype="string", ragged=True)
    table = DynamicEmbedding(4, key_dtype="string", combiner="mean", max_ids_per_example=4, name="history",
                             embeddings_initializer="uniform")
    model = keras.Model(lists, keras.layers.Dense(1)(table(lists)))
    history = tf.ragged.constant([["a", "b", "c"], ["d"], [], ["a", "e"]])
    model.compile("sgd", "mse")
    model.fit(tf.data.Dataset.from_tensor_slices((history, np.ones(4))).batch(2), epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    result = CliRunner().invoke(app, ["export", str(tmp_path), "--savedmodel", str(tmp_path / "served")])
    assert result.exit_code == 0, result.output
    assert "ragged inputs: a dense tensor padded with '' (strings) or -1 (int keys)" in " ".join(result.output.split())
    served = tf.saved_model.load(str(tmp_path / "served"))
    np.testing.assert_allclose(served.serve(history.to_tensor(default_value="")).numpy(),
                               model.predict(history, verbose=0), rtol=1e-6)


def test_export_of_a_directory_without_a_model_says_what_to_pass(tmp_path):
    result = CliRunner().invoke(app, ["export", str(tmp_path), "--savedmodel", str(tmp_path / "out")])
    assert result.exit_code == 2 and "no trained model there" in result.output
