"""Sparse tables end to end on the shared local cluster: the small click model (examples/recsys.py,
a 20,000 x 16 item table), exchanged row by row against the whole-table exchange and by hand."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import raytf  # noqa: E402
from raytf.errors import TrainingError  # noqa: E402
from tests.driver.test_training import by_hand_sgd, live_actor_names, scrape_raytf_metrics  # noqa: E402

pytestmark = pytest.mark.slow
ADAM = {"name": "adam", "learning_rate": 0.01}  # learns the click model in ~100 steps (lazily on the table)


def recsys_config(tmp_path, name: str, steps: int = 8, tables="auto", optimizer=None, **distribution) -> dict:
    return {
        "name": name,
        "model": "examples.recsys:build_small_model",
        "data": {"train": "examples.recsys:small_train_examples", "eval": "examples.recsys:small_eval_examples",
                 "shuffle_buffer": 0},
        "loss": "binary_crossentropy",
        "metrics": ["accuracy"],
        "optimizer": optimizer or {"name": "sgd", "learning_rate": 0.5},
        "batch_size": 64,
        "steps": steps,
        "distribution": {"parameter_servers": 2, "workers": 2, **distribution},
        "sparse": {"tables": tables, "min_bytes": 0},
        "output_dir": str(tmp_path / name),
    }


def trained(summary) -> list[np.ndarray]:
    import keras

    return [v.numpy() for v in keras.models.load_model(summary["model_path"]).trainable_variables]


@pytest.mark.parametrize("optimizer, transport", [({"name": "sgd", "learning_rate": 0.1}, "auto"),
                                                  ({"name": "adagrad", "learning_rate": 0.3}, "wire")],
                         ids=["sgd-shm", "adagrad-wire"])
def test_row_exchange_trains_the_same_model_as_the_whole_table_exchange(ray_cluster, tmp_path, optimizer, transport):
    """The SGD run checkpoints as it goes (that must not change its numbers) and is then resumed into
    another number of servers (test_resume_into_another_number_of_servers: a run costs ~20 s here).
    The Adagrad run's rows go over the cross-node wire (here between processes of one node) to one
    server, so its step reads them where the wire put them (with two, they are copied into a block)."""
    events = []
    name = f"rows-{optimizer['name']}"
    config = recsys_config(tmp_path, name, optimizer=optimizer, transport=transport,
                           parameter_servers=2 if transport == "auto" else 1)
    if optimizer["name"] == "sgd":
        config["checkpoint"] = {"every_steps": 4}
    sparse = raytf.fit(config, address=ray_cluster.gcs_address, on_event=events.append)
    dense = raytf.fit(recsys_config(tmp_path, "whole", tables="none", optimizer=optimizer), address=ray_cluster.gcs_address)
    assert [t["layer"] for t in sparse["sparse"]["tables"]] == ["items"] and dense["sparse"]["tables"] == []
    # The rows took the fast path to every server (of two, one holds no dense variable): slots and doorbell, or the
    # wire; no Ray call.
    fast_path = {"auto": "shm+doorbell", "wire": "wire"}[transport]
    assert {kind for kinds in sparse["links"] for kind in kinds} == {fast_path}, sparse["links"]
    assert any("Sparse tables" in e and "items (20,000 x 16" in e for e in events), events
    for got, want in zip(trained(sparse), trained(dense)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert sparse["final_loss"] == pytest.approx(dense["final_loss"], rel=1e-5)
    if optimizer["name"] == "sgd":  # and both are the mean gradient applied by hand
        reference = by_hand_sgd(recsys_config(tmp_path, "whole", tables="none", optimizer=optimizer), steps=8)
        for got, want in zip(trained(sparse), reference):  # summed in another order: float32 rounding differs
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=5e-5)
    assert live_actor_names(ray_cluster) == []
    assert_bytes_follow_the_formula(ray_cluster, rows=sparse, whole=dense, run=name)
    if optimizer["name"] == "sgd":
        assert_resumes_into_another_number_of_servers(ray_cluster, config)


def assert_resumes_into_another_number_of_servers(ray_cluster, config: dict) -> None:
    """A run of 2 servers, checkpointed at step 8, resumed with 3 (its rows and dense parts resharded)."""
    config = {**config, "steps": 12, "distribution": {**config["distribution"], "parameter_servers": 3}}
    summary = raytf.fit(config, address=ray_cluster.gcs_address, resume=True)
    assert summary["resumed_from_step"] == 8 and summary["parameter_servers"] == 3
    assert summary["per_server"][0]["version"] == 12


def assert_bytes_follow_the_formula(ray_cluster, rows: dict, whole: dict, run: str) -> None:
    """Rows: 4 N_dense + U (4 D + 8) each way per worker-step; the whole table: 4 (V D + N_dense).
    (Part of the exactness test: its two runs are the ones to count, and a run costs ~20 s here.)"""
    n_dense = 16 * 32 + 32 + 32 + 1  # the two Dense layers
    unique = rows["sparse"]["unique_ids_per_step"]
    assert 0 < unique <= 64 * 20
    assert rows["bytes_per_worker_step"]["pushed"] == pytest.approx(4 * n_dense + unique * (4 * 16 + 8))
    assert whole["bytes_per_worker_step"]["pushed"] == 4 * (20_000 * 16 + n_dense)
    assert whole["bytes_per_worker_step"]["pushed"] > 10 * rows["bytes_per_worker_step"]["pushed"]
    # Pulled: the dense parameters and the asked-for rows, one pull more than pushes (the start).
    assert rows["bytes_per_worker_step"]["pulled"] < 2 * rows["bytes_per_worker_step"]["pushed"]
    exported = scrape_raytf_metrics(ray_cluster, run=run, wanted={"ray_raytf_sparse_rows_total"})
    assert ("ray_raytf_sparse_rows_total", "worker") in exported


@pytest.mark.parametrize("mode, model", [("async", "examples.recsys:build_small_model"),
                                         ("ssp", "examples.recsys:build_small_sharded_model")], ids=["async", "ssp-sharded"])
def test_row_exchange_under_overlapping_policies(ray_cluster, tmp_path, mode, model):
    """The ssp run trains the model with a ShardedEmbedding: test_a_sharded_embedding_trains_and_saves_as_an_
    ordinary_keras_model is checked on it (one run for both: a run costs ~25 s here); its rows go over
    the cross-node wire (here between processes of one node), computing while a push is in flight."""
    events = []
    transport = "wire" if mode == "ssp" else "auto"
    config = recsys_config(tmp_path, f"rows-{mode}", steps=100, mode=mode, optimizer=ADAM, transport=transport)
    config["model"] = model
    summary = raytf.fit(config, address=ray_cluster.gcs_address, on_event=events.append)
    assert summary["updates"] == 200 and summary["staleness"]["max"] >= 1
    assert {kind for kinds in summary["links"] for kind in kinds} == {"wire" if mode == "ssp" else "shm+doorbell"}
    assert summary["eval"]["accuracy"] > 0.6, summary["eval"]
    # Adam on a row-exchanged table is lazy (only the touched rows' slots move), and the run says so.
    assert summary["sparse"]["lazy"] is True
    assert any("adam updates only the rows a step touches" in e for e in events), events
    if model.endswith("sharded_model"):
        assert_a_sharded_embedding_saves_as_an_ordinary_keras_model(summary)
    assert live_actor_names(ray_cluster) == []


def assert_a_sharded_embedding_saves_as_an_ordinary_keras_model(summary: dict) -> None:
    import keras

    assert [t["layer"] for t in summary["sparse"]["tables"]] == ["items"]
    model = keras.models.load_model(summary["model_path"])
    table = model.get_layer("items").embeddings.numpy()
    assert table.shape == (20_000, 16)
    assert summary["eval"]["accuracy"] > 0.6, summary["eval"]


# Resuming into another number of servers: assert_resumes_into_another_number_of_servers, on the SGD run of
# test_row_exchange_trains_the_same_model_as_the_whole_table_exchange.


def test_an_out_of_range_id_stops_the_run_naming_worker_table_and_id(ray_cluster, tmp_path):
    config = recsys_config(tmp_path, "bad-ids")
    config["data"]["train"] = "tests.badinput.recsys_data:out_of_range_examples"
    with pytest.raises(TrainingError, match=r"worker 1: data.train: the batch has id 20000 for the embedding table "
                                            r"'items', whose input_dim is 20000"):
        raytf.fit(config, address=ray_cluster.gcs_address)
    assert live_actor_names(ray_cluster) == []


# A sharded embedding trains (under ssp) and saves as an ordinary Keras model:
# assert_a_sharded_embedding_saves_as_an_ordinary_keras_model, on the ssp run of
# test_row_exchange_under_overlapping_policies.


def test_a_killed_server_rolls_back_its_rows_too(ray_cluster, tmp_path):
    """A server's rows are lost with it: every server restores its rows (and slots) from the newest
    checkpoint, and the run ends where an uninterrupted one does."""
    from tests.driver.test_faults import KillAt

    config = recsys_config(tmp_path, "sparse-kill-ps", steps=100, optimizer=ADAM)
    config["checkpoint"] = {"every_steps": 20}
    killer = KillAt("sparse-kill-ps", "ps", 1, step=30)
    summary = raytf.fit(config, address=ray_cluster.gcs_address, progress=killer, on_event=killer.on_event)
    assert killer.killed_at is not None
    (rollback,) = summary["rollbacks"]
    # The newest complete checkpoint before the loss was noticed (the kill lands at step 30 or later: the
    # run goes on until the driver sees the death).
    assert rollback["servers_lost"] == [1] and rollback["to_step"] % 20 == 0 and rollback["to_step"] >= 20
    assert 0 <= rollback["at_step"] - rollback["to_step"] <= 40, rollback
    assert [s["version"] for s in summary["per_server"]] == [100, 100]
    assert summary["eval"]["accuracy"] > 0.6, summary["eval"]
    assert live_actor_names(ray_cluster) == []
