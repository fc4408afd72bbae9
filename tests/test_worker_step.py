"""The worker's gradient step, in-process (no Ray): flat buffers per server, XLA and its fallback."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from raytf.config import config_from_dict  # noqa: E402
from raytf.model import variable_specs  # noqa: E402
from raytf.sharding import plan_shards  # noqa: E402
from raytf.worker import Worker  # noqa: E402


def make_worker(model: str, servers: int = 2):
    cfg = config_from_dict({"model": model, "data": {"train": "examples.digits:train_examples"},
                            "loss": "sparse_categorical_crossentropy", "batch_size": 16})
    from raytf.training import prepare

    plan = plan_shards(variable_specs(prepare(cfg).model), servers)
    worker = Worker("test", 0)
    worker.setup(cfg.to_dict(), plan, num_workers=2, threads=1)
    return worker, plan


def test_step_returns_one_flat_gradient_per_server(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # output_dir default lands here
    worker, plan = make_worker("examples.digits:build_model")
    loss, flats = worker._compute()
    assert np.isfinite(float(loss))
    assert [int(f.shape[0]) for f in flats] == [s.size for s in plan.shards]
    assert all(np.abs(f.numpy()).sum() > 0 for f in flats)


def test_step_falls_back_when_xla_cannot_compile(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    worker, plan = make_worker("tests.badinput.xla_models:build_model", servers=1)
    loss, flats = worker._compute()
    assert "XLA could not compile the step" in capsys.readouterr().out
    assert np.isfinite(float(loss)) and int(flats[0].shape[0]) == plan.shards[0].size
    worker._compute()  # later steps use the graph function without checking again
