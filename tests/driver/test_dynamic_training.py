"""DynamicEmbedding end to end on the shared local cluster (examples/recsys_dynamic.py's small click
model): with a small id space and no admission or eviction it trains the same model as a fixed
ShardedEmbedding table (every row 0.1 at first, SGD); its saved model loads with Keras alone and
predicts what the run evaluated; its first checkpoint and the later ones' deltas replay into the final
table; a checkpointed run resumes into another number of servers, its rows
re-cut by key hash."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import raytf  # noqa: E402
from tests.driver.test_training import live_actor_names  # noqa: E402

pytestmark = pytest.mark.slow


def dynamic_config(tmp_path, name: str, model: str = "examples.recsys_dynamic:build_small_dynamic_model",
                   steps: int = 12, **distribution) -> dict:
    return {
        "name": name,
        "model": model,
        "data": {"train": "examples.recsys_dynamic:small_train_examples",
                 "eval": "examples.recsys_dynamic:small_eval_examples", "shuffle_buffer": 0},
        "loss": "binary_crossentropy",
        "metrics": ["accuracy"],
        "optimizer": {"name": "sgd", "learning_rate": 0.5},
        "batch_size": 64,
        "steps": steps,
        "distribution": {"parameter_servers": 2, "workers": 2, **distribution},
        "checkpoint": {"every_steps": 6, "keep": 5, "deltas": True},
        "output_dir": str(tmp_path / name),
    }


def test_a_dynamic_table_trains_the_fixed_tables_model_saves_with_its_live_rows_and_resumes_resharded(
        ray_cluster, tmp_path, monkeypatch):
    import keras

    events, snapshots = [], []

    class Progress:  # what the progress line shows
        def update(self, snapshot):
            snapshots.append(snapshot)

        def close(self):
            pass

    dynamic = raytf.fit(dynamic_config(tmp_path, "dyn"), address=ray_cluster.gcs_address, on_event=events.append,
                        progress=Progress())
    fixed = raytf.fit(dynamic_config(tmp_path, "fixed", model="examples.recsys_dynamic:build_small_sharded_model"),
                      address=ray_cluster.gcs_address)
    assert any("items (dynamic keys x 16)" in e for e in events), events
    (table,) = dynamic["sparse"]["tables"]
    assert table["dynamic"] and table["live"] == table["created"] > 100 and table["evicted"] == 0
    assert dynamic["final_loss"] == pytest.approx(fixed["final_loss"], rel=1e-6)
    assert snapshots and all(s.rows_live > 0 for s in snapshots) and "  rows " in snapshots[-1].line()
    from rich.console import Console

    from raytf import cli

    monkeypatch.setattr(cli, "out", Console(record=True, width=200))  # the command's summary shows the rows
    cli.print_summary(dynamic)
    assert f"rows of 'items' live / created / evicted │ {table['live']:,} / {table['created']:,} / 0" \
        in cli.out.export_text()
    # The saved model: the live keys and their trained rows, loaded with Keras alone.
    model = keras.models.load_model(dynamic["model_path"])
    keys, rows = model.get_layer("items").live_rows()
    assert len(keys) == table["live"] and np.abs(rows - 0.1).max() > 1e-3  # 0.1 at first: trained
    sharded = keras.models.load_model(fixed["model_path"]).get_layer("items").embeddings.numpy()
    np.testing.assert_allclose(rows, sharded[keys], rtol=1e-5, atol=1e-7)  # the same rows as the fixed table's
    from examples.recsys_dynamic import small_eval_examples

    evaluated = model.evaluate(small_eval_examples().batch(256), return_dict=True, verbose=0)
    assert evaluated["loss"] == pytest.approx(dynamic["eval"]["loss"], rel=1e-5)
    # Delta export: the step-6 snapshot and the step-12 deltas, replayed, give the final table.
    from raytf.exchange.deltas import read_table

    followed_keys, followed_rows = read_table(tmp_path / "dyn", "items")
    np.testing.assert_array_equal(followed_keys, keys)
    np.testing.assert_array_equal(followed_rows, rows)
    # Resumed from step 12 into 3 servers: every key on the server its hash names, none lost.
    config = dynamic_config(tmp_path, "dyn", steps=18, parameter_servers=3)
    resumed = raytf.fit(config, address=ray_cluster.gcs_address, resume=True)
    assert resumed["resumed_from_step"] == 12 and resumed["parameter_servers"] == 3
    (after,) = resumed["sparse"]["tables"]
    assert after["live"] >= table["live"] and after["created"] == after["live"] - table["live"]
    # A key re-cut to a server that does not own it would be created again by its owner: two rows, one key.
    resumed_keys, _ = keras.models.load_model(resumed["model_path"]).get_layer("items").live_rows()
    assert len(resumed_keys) == after["live"] and set(keys.tolist()) <= set(resumed_keys.tolist())
    assert live_actor_names(ray_cluster) == []


def test_with_adagrad_a_dynamic_table_trains_the_fixed_tables_model_too(ray_cluster, tmp_path):
    """Adagrad's row update with its accumulator slot (created with the row, at the initial value)."""
    import keras

    adagrad = {"name": "adagrad", "learning_rate": 0.3}
    runs = []
    for name, model in (("dyn-adagrad", "examples.recsys_dynamic:build_small_dynamic_model"),
                        ("fixed-adagrad", "examples.recsys_dynamic:build_small_sharded_model")):
        config = dynamic_config(tmp_path, name, model=model, steps=8)
        config["optimizer"] = adagrad
        runs.append(raytf.fit(config, address=ray_cluster.gcs_address))
    dynamic, fixed = runs
    assert dynamic["final_loss"] == pytest.approx(fixed["final_loss"], rel=1e-6)
    keys, rows = keras.models.load_model(dynamic["model_path"]).get_layer("items").live_rows()
    table = keras.models.load_model(fixed["model_path"]).get_layer("items").embeddings.numpy()
    np.testing.assert_allclose(rows, table[keys], rtol=1e-5, atol=1e-7)
    assert live_actor_names(ray_cluster) == []


def test_string_keys_train_as_their_hashes_and_the_saved_model_looks_up_strings(ray_cluster, tmp_path):
    """A string-keyed table (beside an int64 one, the model's inputs a dict) trains exactly as the same
    model on the strings' int64 keys hashed by hand; the saved model takes the strings."""
    import keras

    from tests.driver.key_inputs_data import hashed_eval, string_eval

    runs = {}
    for kind in ("string", "hashed"):
        config = dynamic_config(tmp_path, kind, model=f"tests.driver.key_inputs_data:build_{kind}_model", steps=8)
        config["data"] = {"train": f"tests.driver.key_inputs_data:{kind}_train",
                          "eval": f"tests.driver.key_inputs_data:{kind}_eval", "shuffle_buffer": 0}
        runs[kind] = raytf.fit(config, address=ray_cluster.gcs_address)
    strings, hashed = runs["string"], runs["hashed"]
    assert strings["final_loss"] == pytest.approx(hashed["final_loss"], rel=1e-6)
    assert [t["live"] for t in strings["sparse"]["tables"]] == [t["live"] for t in hashed["sparse"]["tables"]]
    on_strings = keras.models.load_model(strings["model_path"])
    on_keys = keras.models.load_model(hashed["model_path"])
    keys, rows = on_strings.get_layer("items").live_rows()
    np.testing.assert_array_equal(keys, on_keys.get_layer("items").live_rows()[0])
    np.testing.assert_allclose(rows, on_keys.get_layer("items").live_rows()[1], rtol=1e-6)
    (words, _), = string_eval().batch(32).take(1)
    (hashes, _), = hashed_eval().batch(32).take(1)
    np.testing.assert_allclose(on_strings.predict(words, verbose=0), on_keys.predict(hashes, verbose=0), rtol=1e-5)
    evaluated = on_strings.evaluate(string_eval().batch(256), return_dict=True, verbose=0)
    assert evaluated["loss"] == pytest.approx(strings["eval"]["loss"], rel=1e-5)
    assert live_actor_names(ray_cluster) == []


def test_ragged_lists_train_as_a_plain_model_fit_does(ray_cluster, tmp_path):
    """Ragged histories of item names (0 to 12 per example, some empty) with a mean: one worker's sync SGD
    under raytf (rows on two servers, each batch padded to max_ids_per_example) gives the model that
    Keras's own fit on the same batches gives (the padding has no row, no gradient and no count)."""
    import keras

    from tests.driver.key_inputs_data import build_ragged_model, ragged_eval, ragged_train

    config = dynamic_config(tmp_path, "ragged", model="tests.driver.key_inputs_data:build_ragged_model", steps=8,
                            workers=1)
    config["data"] = {"train": "tests.driver.key_inputs_data:ragged_train",
                      "eval": "tests.driver.key_inputs_data:ragged_eval", "shuffle_buffer": 0}
    config["checkpoint"] = {"every_steps": 0}
    trained = raytf.fit(config, address=ray_cluster.gcs_address)
    keras.utils.set_random_seed(0)  # the run's seed: the same initial dense weights and rows
    local = build_ragged_model()
    local.compile(keras.optimizers.SGD(0.5), "binary_crossentropy")
    local.fit(ragged_train(0, 1).batch(64).take(8), epochs=1, shuffle=False, verbose=0)
    saved = keras.models.load_model(trained["model_path"])
    keys, rows = saved.get_layer("history_items").live_rows()
    local_keys, local_rows = local.get_layer("history_items").live_rows()
    # The run also created the rows of the batch after its last (asked for ahead), untrained.
    assert set(local_keys.tolist()) < set(keys.tolist())
    np.testing.assert_allclose(rows[np.isin(keys, local_keys)], local_rows, rtol=1e-4, atol=1e-6)
    seen = ragged_train(0, 1).take(8 * 64).batch(8 * 64).get_single_element()[0]
    np.testing.assert_allclose(saved.predict(seen, verbose=0), local.predict(seen, verbose=0), rtol=1e-4, atol=1e-6)
    evaluated = saved.evaluate(ragged_eval().batch(256), return_dict=True, verbose=0)
    assert evaluated["loss"] == pytest.approx(trained["eval"]["loss"], rel=1e-5)
    # The same lists from Parquet (a list column of different lengths per row): the same run.
    from tests.driver.key_inputs_data import write_ragged_parquet

    write_ragged_parquet(tmp_path)
    config = dict(config, name="ragged-files", output_dir=str(tmp_path / "ragged-files"))
    config["data"] = {"train": {"format": "parquet", "paths": str(tmp_path / "train.parquet"), "label": "clicked"},
                      "eval": {"format": "parquet", "paths": str(tmp_path / "eval.parquet"), "label": "clicked"},
                      "shuffle_buffer": 0}
    from_files = raytf.fit(config, address=ray_cluster.gcs_address)
    assert from_files["final_loss"] == pytest.approx(trained["final_loss"], rel=1e-5)
    assert from_files["eval"]["loss"] == pytest.approx(trained["eval"]["loss"], rel=1e-5)
    files_keys, files_rows = keras.models.load_model(from_files["model_path"]).get_layer("history_items").live_rows()
    np.testing.assert_array_equal(files_keys, keys)
    np.testing.assert_allclose(files_rows, rows, rtol=1e-5, atol=1e-7)
