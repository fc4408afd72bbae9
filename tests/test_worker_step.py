"""The worker's gradient step, in-process (no Ray): flat buffers per server, XLA and its fallback."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from raytf.config import config_from_dict  # noqa: E402
from raytf.model import variable_specs  # noqa: E402
from raytf.sharding import plan_shards  # noqa: E402
from raytf.worker import Worker  # noqa: E402


def make_worker(model: str, servers: int = 2, data: str = "examples.digits:train_examples", index: int = 0):
    cfg = config_from_dict({"model": model, "data": {"train": data},
                            "loss": "sparse_categorical_crossentropy", "batch_size": 16})
    from raytf.training import prepare

    plan = plan_shards(variable_specs(prepare(cfg).model), servers)
    worker = Worker("test", index)
    worker.setup(cfg.to_dict(), plan, num_workers=2, threads=1)
    return worker, plan


def test_step_returns_one_flat_gradient_per_server(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # output_dir default lands here
    worker, plan = make_worker("examples.digits:build_model")
    loss, flats, table_grads, finite = worker._compute()
    assert np.isfinite(float(loss)) and bool(finite) and table_grads == []
    assert [int(f.shape[0]) for f in flats] == [s.size for s in plan.shards]
    assert all(np.abs(f.numpy()).sum() > 0 for f in flats)


def test_step_flags_a_non_finite_gradient(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Shard 1 of nan_data has a NaN pixel in example 100: the 7th batch of 16 holds it.
    worker, _ = make_worker("examples.digits:build_model", data="tests.badinput.nan_data:train_examples", index=1)
    flags = [bool(worker._compute()[3]) for _ in range(8)]
    assert flags == [True] * 6 + [False, True]


def test_step_falls_back_when_xla_cannot_compile(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    worker, plan = make_worker("tests.badinput.xla_models:build_model", servers=1)
    loss, flats, _, _ = worker._compute()
    assert "XLA could not compile the step" in capsys.readouterr().out
    assert np.isfinite(float(loss)) and int(flats[0].shape[0]) == plan.shards[0].size
    worker._compute()  # later steps use the graph function without checking again


def test_a_sparse_tables_gradient_leaves_the_step_as_ids_and_rows(tmp_path, monkeypatch):
    """The table is in no server's flat buffer; its gradient is the looked-up ids and their rows."""
    monkeypatch.chdir(tmp_path)
    cfg = config_from_dict({"model": "examples.recsys:build_small_model", "loss": "binary_crossentropy",
                            "data": {"train": "examples.recsys:small_train_examples"}, "batch_size": 8,
                            "sparse": {"tables": ["items"]}, "distribution": {"parameter_servers": 2}})
    from raytf.training import prepare

    plan = prepare(cfg).plan
    assert [t.layer for t in plan.tables] == ["items"]
    worker = Worker("test", 0)
    worker.setup(cfg.to_dict(), plan, num_workers=2, threads=1)
    loss, flats, table_grads, finite = worker._compute()
    assert bool(finite) and sum(int(f.shape[0]) for f in flats) == 16 * 32 + 32 + 32 + 1  # the dense layers only
    ((ids, rows),) = table_grads
    assert ids.shape == (8 * 20,) and rows.shape == (8 * 20, 16)
    per_server, _, distinct = worker.tables.gradient([(ids.numpy(), rows.numpy())])
    assert distinct == len(np.unique(ids.numpy()))
    assert sum(len(local) for tables in per_server for local, _ in tables) == distinct  # each id to one server
