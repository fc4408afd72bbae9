"""Checkpoints written by raytf before its package was laid out in folders (tests/fixtures/
legacy-checkpoints: step 20 of a dense digits run with Adam and of a sparse ShardedEmbedding run
with Adagrad, both on 2 parameter servers) still resume, into another number of servers."""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("tensorflow")

import raytf  # noqa: E402
from tests.conftest import ROOT  # noqa: E402
from tests.driver.test_training import digits_config  # noqa: E402

pytestmark = pytest.mark.slow

LEGACY = ROOT / "tests" / "fixtures" / "legacy-checkpoints"


def resumed(ray_cluster, tmp_path, fixture: str, config: dict) -> dict:
    shutil.copytree(LEGACY / fixture / "checkpoints", tmp_path / "run" / "checkpoints")
    return raytf.fit(config, address=ray_cluster.gcs_address, resume=True)


def test_a_dense_checkpoint_of_the_old_layout_resumes_on_one_server(ray_cluster, tmp_path):
    config = digits_config(tmp_path, name="legacy-digits", steps=30, batch_size=32)
    summary = resumed(ray_cluster, tmp_path, "digits", config)
    assert summary["resumed_from_step"] == 20
    assert summary["per_server"][0]["version"] == 30 and summary["per_server"][0]["pushes"] == 2 * 10
    assert summary["eval"]["accuracy"] > 0.5  # 20 steps were trained before: a fresh start is at ~0.1


def test_a_sparse_checkpoint_of_the_old_layout_resumes_on_three_servers(ray_cluster, tmp_path):
    config = {
        "name": "legacy-recsys", "model": "examples.recsys:build_small_sharded_model",
        "data": {"train": "examples.recsys:small_train_examples", "eval": "examples.recsys:small_eval_examples"},
        "loss": "binary_crossentropy", "optimizer": {"name": "adagrad", "learning_rate": 0.05}, "batch_size": 64,
        "steps": 30, "distribution": {"parameter_servers": 3, "workers": 2, "mode": "sync"},
        "output_dir": str(tmp_path / "run"),
    }
    summary = resumed(ray_cluster, tmp_path, "recsys", config)
    assert summary["resumed_from_step"] == 20
    assert [s["version"] for s in summary["per_server"]] == [30, 30, 30]
    assert summary["sparse"]["tables"][0]["rows"] == 20_000
