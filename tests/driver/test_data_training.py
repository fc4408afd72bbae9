"""Training from files and for epochs, end to end on the shared local cluster: the click model reads
Parquet files (2 workers, 2 epochs, evaluated on a Parquet file), and BatchNorm's statistics in the saved
model are the mean over the workers' shards, not one worker's."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")

import raytf  # noqa: E402

pytestmark = pytest.mark.slow


def test_the_click_model_trains_for_epochs_from_parquet_files_validated_every_epoch(ray_cluster, tmp_path):
    from examples.recsys import write_parquet
    from tests.driver.test_training import tensorboard_scalars

    write_parquet(str(tmp_path / "data"), items=20_000)
    events, snapshots = [], []

    class Progress:
        def update(self, snapshot):
            snapshots.append(snapshot)

        def close(self):
            pass

    spec = {"format": "parquet", "label": "clicked"}
    run = tmp_path / "run"
    summary = raytf.fit({
        "name": "files", "model": "examples.recsys:build_small_model",
        "data": {"train": {**spec, "paths": str(tmp_path / "data" / "train-*.parquet")},
                 "eval": {**spec, "paths": str(tmp_path / "data" / "eval.parquet")}, "shuffle_buffer": 1000},
        "loss": "binary_crossentropy", "metrics": ["accuracy"], "optimizer": {"name": "adam", "learning_rate": 0.01},
        "batch_size": 256, "epochs": 3, "eval": {"every_epochs": 1},
        "checkpoint": {"every_steps": 0, "keep": 1, "keep_best": "accuracy"},
        "distribution": {"parameter_servers": 2, "workers": 2}, "output_dir": str(run)},
        address=ray_cluster.gcs_address, on_event=events.append, progress=Progress())
    # 40,000 rows in 4 files: 20,000 per worker, 79 batches of 256 (the last filled up) an epoch
    assert any("40,000 rows in 4 parquet files" in e and "a pass over it is 79 steps" in e for e in events), events
    assert summary["steps"] == 3 * 79
    assert summary["eval"]["accuracy"] > 0.75  # learnt (the no-skill rate is ~0.5)
    assert snapshots[-1].epoch == (3, 3) and snapshots[-1].line().startswith("epoch 3/3  step 237/237")
    # Validated after every epoch: in the events, the progress line, TensorBoard and the summary's history.
    history = summary["eval_history"]
    assert [(h["step"], h["epoch"]) for h in history] == [(79, 1), (158, 2), (237, 3)]
    assert history[-1]["accuracy"] == summary["eval"]["accuracy"]
    assert sum(e.startswith("eval at epoch") for e in events) == 3, events
    assert any(s.evaluation and s.evaluation.startswith("eval accuracy ") for s in snapshots)
    assert [step for step in tensorboard_scalars(run / "tensorboard")["eval/accuracy"]] == [79, 158, 237]
    # The best epoch's checkpoint is kept besides the newest (keep: 1).
    best = max(history, key=lambda h: h["accuracy"])
    assert summary["best_checkpoint"]["step"] == best["step"] and summary["best_checkpoint"]["value"] == best["accuracy"]
    kept = sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*"))
    assert kept == sorted({best["step"], 237})


def test_batchnorm_statistics_are_the_mean_over_the_workers_shards_also_in_checkpoints_and_resumed(
        ray_cluster, tmp_path):
    import keras

    from raytf.driver.checkpoints import latest, read_non_trainable

    def train(steps: int, resume: bool = False) -> dict:
        return raytf.fit({
            "name": "bn", "model": "tests.driver.shifted_data:build_model",
            "data": {"train": "tests.driver.shifted_data:train_examples"}, "loss": "mse",
            "optimizer": {"name": "sgd", "learning_rate": 0.01}, "batch_size": 64, "steps": steps,
            "checkpoint": {"every_steps": 30}, "distribution": {"parameter_servers": 1, "workers": 2},
            "output_dir": str(tmp_path / "bn")}, address=ray_cluster.gcs_address, resume=resume)

    summary = train(60)
    norm = keras.models.load_model(summary["model_path"]).get_layer("norm")
    # worker 0's own moving mean is ~0, worker 1's ~10: the model keeps their mean
    assert float(np.asarray(norm.moving_mean)[0]) == pytest.approx(5.0, abs=0.5)
    checkpoint = latest(tmp_path / "bn" / "checkpoints")
    assert checkpoint.step == 60
    moving_mean = read_non_trainable(checkpoint.directory)[0]  # the layer's first non-trainable value
    assert float(moving_mean[0]) == pytest.approx(5.0, abs=0.5)
    # One more step from the checkpoint (momentum 0.8): workers starting from its 5 give 0.8 * 5 + 0.2 * 0 and
    # 0.8 * 5 + 0.2 * 10, mean 5; had they started from the initial 0, the mean would be 1.
    resumed = train(61, resume=True)
    norm = keras.models.load_model(resumed["model_path"]).get_layer("norm")
    assert float(np.asarray(norm.moving_mean)[0]) == pytest.approx(5.0, abs=0.5)
