"""Training from files and for epochs, end to end on the shared local cluster: the click model reads
Parquet files (2 workers, 2 epochs, evaluated on a Parquet file), and BatchNorm's statistics in the saved
model are the mean over the workers' shards, not one worker's."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")

import raytf  # noqa: E402

pytestmark = pytest.mark.slow


def test_the_click_model_trains_for_epochs_from_parquet_files(ray_cluster, tmp_path):
    from examples.recsys import write_parquet

    write_parquet(str(tmp_path / "data"), items=20_000)
    events, snapshots = [], []

    class Progress:
        def update(self, snapshot):
            snapshots.append(snapshot)

        def close(self):
            pass

    spec = {"format": "parquet", "label": "clicked"}
    summary = raytf.fit({
        "name": "files", "model": "examples.recsys:build_small_model",
        "data": {"train": {**spec, "paths": str(tmp_path / "data" / "train-*.parquet")},
                 "eval": {**spec, "paths": str(tmp_path / "data" / "eval.parquet")}, "shuffle_buffer": 1000},
        "loss": "binary_crossentropy", "metrics": ["accuracy"], "optimizer": {"name": "adam", "learning_rate": 0.01},
        "batch_size": 256, "epochs": 2, "distribution": {"parameter_servers": 2, "workers": 2},
        "output_dir": str(tmp_path / "run")}, address=ray_cluster.gcs_address, on_event=events.append, progress=Progress())
    # 40,000 rows in 4 files: 20,000 per worker, 79 batches of 256 (the last filled up) an epoch
    assert any("40,000 rows in 4 parquet files" in e and "a pass over it is 79 steps" in e for e in events), events
    assert summary["steps"] == 2 * 79
    assert summary["eval"]["accuracy"] > 0.75  # learnt (the no-skill rate is ~0.5)
    assert snapshots[-1].epoch == (2, 2) and snapshots[-1].line().startswith("epoch 2/2  step 158/158")


def test_batchnorm_statistics_are_the_mean_over_the_workers_shards(ray_cluster, tmp_path):
    import keras

    summary = raytf.fit({
        "name": "bn", "model": "tests.driver.shifted_data:build_model",
        "data": {"train": "tests.driver.shifted_data:train_examples"}, "loss": "mse",
        "optimizer": {"name": "sgd", "learning_rate": 0.01}, "batch_size": 64, "steps": 60,
        "distribution": {"parameter_servers": 1, "workers": 2}, "output_dir": str(tmp_path / "bn")},
        address=ray_cluster.gcs_address)
    norm = keras.models.load_model(summary["model_path"]).get_layer("norm")
    # worker 0's own moving mean is ~0, worker 1's ~10: the model keeps their mean
    assert float(np.asarray(norm.moving_mean)[0]) == pytest.approx(5.0, abs=0.5)
