"""raytf.layers.DynamicEmbedding outside raytf: a local hash table that trains with model.fit, saves
its live keys and rows, and loads with keras.models.load_model to the same predictions (unknown keys
on the default row); string keys; bad settings refused with the key named."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from raytf.exchange.dynamic_rows import initial_key_rows
from raytf.layers import DynamicEmbedding


def click_model(key_dtype="int64", combiner="mean", local_capacity=65536):
    inputs = keras.Input((3,), dtype="string" if key_dtype == "string" else "int64")
    x = DynamicEmbedding(4, key_dtype=key_dtype, combiner=combiner, local_capacity=local_capacity, name="items",
                         embeddings_initializer=keras.initializers.RandomUniform(-0.1, 0.1))(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    model.compile(keras.optimizers.Adam(0.05), "binary_crossentropy")
    return model


def test_trains_saves_and_loads_to_the_same_predictions_with_unknown_keys_on_the_default_row(tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 2**50, size=(600, 3))
    labels = (ids[:, 0] % 2).astype("float32")  # learnable only through the rows of the keys
    model = click_model()
    first = model.fit(ids, labels, epochs=1, batch_size=50, verbose=0).history["loss"][0]
    last = model.fit(ids, labels, epochs=40, batch_size=50, verbose=0).history["loss"][-1]
    assert last < first - 0.1
    layer = model.get_layer("items")
    keys, rows = layer.live_rows()
    np.testing.assert_array_equal(keys, np.unique(ids))
    untouched = initial_key_rows({"name": "uniform", "low": -0.1, "high": 0.1, "seed": 0}, keys, 4)
    assert not np.allclose(rows, untouched)  # trained
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.predict(ids[:20], verbose=0), model.predict(ids[:20], verbose=0), rtol=1e-6)
    unknown = np.array([[2**55, 2**55 + 1, 2**55 + 2]])
    bias = float(loaded.layers[-1].get_weights()[1][0])  # zero rows: the output is the dense bias alone
    assert float(loaded.predict(unknown, verbose=0)[0, 0]) == pytest.approx(1 / (1 + np.exp(-bias)), rel=1e-5)


def test_string_keys_and_keys_past_the_local_capacity():
    model = click_model(key_dtype="string", combiner="sum", local_capacity=4)
    import tensorflow as tf

    words = tf.constant([["a", "b", "c"], ["c", "d", "e"], ["f", "g", "a"]])
    model.fit(tf.data.Dataset.from_tensor_slices((words, [1.0, 0.0, 1.0])).batch(3), epochs=1, verbose=0)
    keys, _ = model.get_layer("items").live_rows()
    assert len(keys) == 4  # a, b, c, d got rows; e, f, g read the default row
    known = model(tf.constant([["a", "b", "c"]]), training=False)
    zeros = model(tf.constant([["e", "f", "g"]]), training=False)  # the default rows: the bias alone
    bias = float(model.layers[-1].get_weights()[1][0])
    assert float(zeros[0, 0]) == pytest.approx(1 / (1 + np.exp(-bias)), rel=1e-5)
    assert float(known[0, 0]) != pytest.approx(float(zeros[0, 0]), rel=1e-4)


@pytest.mark.parametrize("kwargs, message", [
    ({"eviction": {"ttl_steps": -5}}, "eviction.ttl_steps must be an int >= 1"),
    ({"eviction": {"capacity": 0}}, "eviction.capacity must be an int >= 1"),
    ({"combiner": "max"}, "combiner must be None, 'sum', 'mean' or 'sqrtn'"),
    ({"admission": {"min_cout": 3}}, "unknown key 'min_cout'.*Did you mean 'min_count'"),
    ({"admission": {"probability": 1.5}}, "admission.probability must be a number in"),
    ({"key_dtype": "float32"}, "key_dtype must be one of int64, string"),
    ({"max_ids_per_example": 0}, "max_ids_per_example must be a positive int or None"),
])
def test_bad_settings_are_refused_with_the_key_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DynamicEmbedding(8, **kwargs)


def test_keys_out_of_range_are_refused_with_the_fix():
    from raytf.errors import TrainingError
    from raytf.exchange.tables import TableSpec
    from raytf.replica.sparse import _dynamic

    assert _dynamic(DynamicEmbedding(4, admission={"min_count": 2}, name="items")) == {
        "admission": {"min_count": 2}, "eviction": {}}
    spec = TableSpec(variable=0, layer="items", rows=2**62, width=4, servers=2, partition="hash", dynamic={})
    with pytest.raises(TrainingError, match=r"worker 1: .* key -3 for the DynamicEmbedding 'items'") as bad:
        spec.check_ids(np.array([5, -3]), worker=1)
    assert "key % 2**62" in bad.value.fix


# -- string keys and ragged lists under raytf (raytf.replica.key_inputs) ------------------------------
def test_the_data_path_hashes_strings_to_the_keys_the_layer_looks_up():
    """The same int64 keys from the layer (a plain model.fit, the saved model), a tf.data map and numpy
    batches (files, Ray Data), for str and bytes alike; other features untouched."""
    import tensorflow as tf

    from raytf.replica.key_inputs import KeyInput, KeyTransform

    words = np.array([["apple", "pear", "apple"], ["", "kiwi", "\u00e9t\u00e9"]])
    layer_keys = DynamicEmbedding(4, key_dtype="string").keys_of(tf.constant(words)).numpy()
    assert layer_keys.dtype == np.int64 and (layer_keys >= 0).all() and (layer_keys < 2**62).all()
    assert layer_keys[0, 0] == layer_keys[0, 2] and len(set(layer_keys.ravel().tolist())) == 5
    keys = KeyTransform((KeyInput("words", "items", strings=True, pad_to=None),))
    batch = ({"words": words.astype(object), "n": np.arange(2)}, np.ones(2), np.ones(2))
    (features, labels, weights), = keys.batches(iter([batch]))
    np.testing.assert_array_equal(features["words"], layer_keys)
    np.testing.assert_array_equal(features["n"], np.arange(2))
    bytes_words = np.vectorize(lambda w: w.encode())(words).astype(object)
    alone = KeyTransform((KeyInput(0, "items", strings=True, pad_to=None),))  # a model of one input
    np.testing.assert_array_equal(alone.features(bytes_words), layer_keys)
    batched = tf.data.Dataset.from_tensor_slices(({"words": words, "n": np.arange(2)}, [0.0, 1.0], [1.0, 1.0])).batch(2)
    (x, _, _), = keys.dataset(batched)  # batches of (features, labels, weights)
    np.testing.assert_array_equal(x["words"].numpy(), layer_keys)


def test_ragged_lists_are_padded_or_cut_to_max_ids_per_example_said_once(capsys):
    import tensorflow as tf

    from raytf.replica.key_inputs import PAD, KeyInput, KeyTransform

    pad = KeyTransform((KeyInput(0, "history", strings=True, pad_to=3),), worker=1)
    lists = tf.ragged.constant([["a", "b"], [], ["c", "d", "e", "f"]])
    keys = pad.features(lists).numpy()
    expected = DynamicEmbedding(4, key_dtype="string").keys_of(tf.constant(["a", "b", "c", "d", "e"])).numpy()
    np.testing.assert_array_equal(keys, [[expected[0], expected[1], PAD], [PAD] * 3, expected[2:5]])
    assert "worker 1: examples with more than max_ids_per_example=3 ids for the DynamicEmbedding 'history' are cut" \
        in capsys.readouterr().out
    pad.features(lists)
    assert capsys.readouterr().out == ""  # once


def test_a_replica_takes_the_hashed_keys_and_padded_lists_and_computes_what_the_strings_give():
    import tensorflow as tf

    from raytf.replica.key_inputs import KeyTransform, key_inputs, take_keys
    from raytf.replica.layers import rows_on_servers

    words = tf.constant([["a", "b", "c"], ["c", "d", "e"]])
    with rows_on_servers(batch_size=2):
        replica = click_model(key_dtype="string")
    inputs = key_inputs(replica)
    assert [(k.name, k.strings, k.pad_to) for k in inputs] == [(0, True, None)]
    on_strings = replica(words, training=False)
    take_keys(replica, inputs)
    np.testing.assert_allclose(replica(KeyTransform(inputs).features(words), training=False), on_strings)
    lists = keras.Input((None,), dtype="int64", ragged=True)
    with rows_on_servers(batch_size=2):
        table = DynamicEmbedding(4, combiner="sqrtn", max_ids_per_example=5, name="h")
        ragged = keras.Model(lists, table(lists))
    (history,) = key_inputs(ragged)
    assert (history.strings, history.pad_to) == (False, 5)
    table.embeddings.assign(np.arange(table.capacity * 4, dtype="float32").reshape(-1, 4))  # the row cache
    table.cached_ids.assign(np.concatenate([[3, 7], np.full(table.capacity - 2, 2**62)]))
    padded = KeyTransform((history,)).features(tf.ragged.constant([[3, 7, 7], []], dtype=tf.int64))
    out = ragged(padded, training=False).numpy()
    np.testing.assert_allclose(out[0], (np.arange(4) + 2 * np.arange(4, 8)) / np.sqrt(3))
    np.testing.assert_allclose(out[1], 0)  # no ids: zeros


@pytest.mark.parametrize("layer, problem", [
    (dict(combiner=None, max_ids_per_example=4), "it has no combiner"),
    (dict(combiner="mean"), "it has no max_ids_per_example"),
])
def test_ragged_ids_under_raytf_need_a_combiner_and_max_ids_per_example(layer, problem):
    from raytf.errors import ConfigError
    from raytf.replica.layers import rows_on_servers

    lists = keras.Input((None,), dtype="int64", ragged=True)
    with rows_on_servers(batch_size=2), pytest.raises(ConfigError, match=f"'h' looks up ragged ids, but {problem}") as err:
        DynamicEmbedding(4, name="h", **layer)(lists)
    assert "max_ids_per_example=N" in err.value.fix


def test_ragged_lists_with_a_combiner_train_and_save_in_a_plain_model_fit(tmp_path):
    import tensorflow as tf

    lists = keras.Input((None,), dtype="int64", ragged=True)
    model = keras.Model(lists, keras.layers.Dense(1, activation="sigmoid")(DynamicEmbedding(4, combiner="mean")(lists)))
    model.compile(keras.optimizers.Adam(0.05), "binary_crossentropy")
    history = tf.ragged.constant([[1, 2, 3], [4], [], [2, 5]], dtype=tf.int64)
    data = tf.data.Dataset.from_tensor_slices((history, [1.0, 0.0, 0.0, 1.0])).batch(2)
    losses = model.fit(data, epochs=30, verbose=0).history["loss"]
    assert losses[-1] < losses[0] - 0.05
    model.save(tmp_path / "m.keras")
    np.testing.assert_allclose(keras.models.load_model(tmp_path / "m.keras").predict(history, verbose=0),
                               model.predict(history, verbose=0), rtol=1e-6)


def test_a_table_of_strings_must_look_up_a_model_input_as_it_is():
    import tensorflow as tf

    from raytf.errors import ConfigError
    from raytf.replica.key_inputs import key_inputs

    text = keras.Input((1,), dtype="string", name="text")
    words = keras.layers.Lambda(lambda t: tf.strings.lower(t), output_shape=(1,))(text)
    out = keras.layers.Dense(1)(DynamicEmbedding(4, key_dtype="string", combiner="sum", name="words")(words))
    with pytest.raises(ConfigError, match="'words' has string keys.*looks up a tensor the model computes") as err:
        key_inputs(keras.Model(text, out))
    assert "to_hash_bucket_fast" in err.value.fix
