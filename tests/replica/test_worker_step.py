"""The worker's gradient step, in-process (no Ray): parameters passed in, per-variable gradients
laid into each server's flat buffer, XLA and its fallback."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from raytf.config import config_from_dict  # noqa: E402
from raytf.exchange.sharding import plan_shards  # noqa: E402
from raytf.replica.model import variable_specs  # noqa: E402
from raytf.replica.worker import Worker  # noqa: E402


def make_worker(model: str, servers: int = 2, data: str = "examples.digits:train_examples", index: int = 0):
    cfg = config_from_dict({"model": model, "data": {"train": data},
                            "loss": "sparse_categorical_crossentropy", "batch_size": 16})
    from raytf.driver.prepare import prepare

    plan = plan_shards(variable_specs(prepare(cfg).model), servers)
    worker = Worker("test", index)
    worker.setup(cfg.to_dict(), plan, num_workers=2, threads=1)
    give_own_parameters(worker)
    return worker, plan


def make_click_worker(model: str, servers: int, tables: list[str] | None = None):
    """A worker of a small click model (examples/recsys.py's data, batch 8) whose sparse tables are
    `tables` (None: the default, auto); returns it, its plan and its config."""
    cfg = config_from_dict({"model": model, "loss": "binary_crossentropy",
                            "data": {"train": "examples.recsys:small_train_examples"}, "batch_size": 8,
                            "distribution": {"parameter_servers": servers},
                            **({"sparse": {"tables": tables}} if tables is not None else {})})
    from raytf.driver.prepare import prepare

    plan = prepare(cfg).plan
    worker = Worker("test", 0)
    worker.setup(cfg.to_dict(), plan, num_workers=2, threads=1)
    return worker, plan, cfg


def give_own_parameters(worker):
    """What a pull does: the servers' flat buffers, here packed from the replica's own initial values."""
    tvars = worker.model.trainable_variables
    worker.params = [shard.pack([tvars[i].numpy() for i in shard.variables]) for shard in worker.plan.shards]


def test_step_returns_every_servers_gradients_and_they_land_in_its_buffer(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # output_dir default lands here
    worker, plan = make_worker("examples.digits:build_model")
    loss, grads, table_grads, finite = worker._compute()
    assert np.isfinite(float(loss)) and bool(finite) and table_grads == []
    assert [tuple(g.shape) for g in grads] == [plan.variables[i].shape for s in plan.shards for i in s.variables]
    assert all(np.abs(g.numpy()).sum() > 0 for g in grads)
    # The same gradients as Keras computes on the replica's variables (which hold the same values).
    import keras

    from raytf.replica.model import make_loss

    x, y = next(iter(worker.iterator))  # not the same batch: compare on one batch below instead
    worker.upcoming.appendleft((x, y))
    _, grads, _, _ = worker._compute()
    with tf.GradientTape() as tape:
        loss = make_loss(worker.config.loss)(y, worker.model(x, training=True))
    want = dict(zip(map(id, worker.model.trainable_variables), tape.gradient(loss, worker.model.trainable_variables)))
    order = [worker.model.trainable_variables[i] for s in plan.shards for i in s.variables]
    for got, var in zip(grads, order):
        np.testing.assert_allclose(got.numpy(), want[id(var)].numpy(), rtol=1e-4, atol=1e-6)
    assert isinstance(worker.model, keras.Model)
    # Laid into each server's flat buffer at the plan's offsets, one copy per variable.
    from raytf.exchange.transport import LinkSpec, WorkerLink

    for shard, group in zip(plan.shards, worker._by_shard([g.numpy() for g in grads])):
        buffer = WorkerLink(LinkSpec(), shard.size).send(group, shard.offsets)  # object store: a staging buffer
        for part, g in zip(shard.parts(buffer), group):
            np.testing.assert_array_equal(part, g.reshape(-1))


def test_the_step_reads_the_published_buffers_in_place(tmp_path, monkeypatch):
    """No copy from a slot: the step's parameter tensors are the slot's memory, so a new version
    the server writes there is what the next step computes with."""
    monkeypatch.chdir(tmp_path)
    worker, plan = make_worker("examples.digits:build_model", servers=1)
    (flat,) = worker.params
    tensors = worker._param_tensors()
    for tensor, part in zip(tensors, plan.shards[0].parts(flat)):
        assert np.shares_memory(np.from_dlpack(tensor), part)  # the tensor is a view of the buffer
    x, y = worker.upcoming[0] if worker.upcoming else worker._ahead(1)[0]
    before = float(worker._compute()[0])
    flat[:] = 0.0  # the server publishes all-zero parameters in place
    worker.upcoming.appendleft((x, y))
    after = worker._compute()
    assert float(after[0]) != before
    np.testing.assert_allclose(float(after[0]), np.log(10), rtol=1e-5)  # zero weights: uniform over 10 classes


def test_the_step_reads_a_read_only_object_store_buffer_in_place_and_never_writes_it(tmp_path, monkeypatch):
    """Over the object store the parameters come back read-only (shared by the node's workers): the
    step reads them without a copy, with XLA and with the graph fallback, and leaves them as they were."""
    monkeypatch.chdir(tmp_path)
    worker, plan = make_worker("examples.digits:build_model", servers=1)
    from raytf.runtime import aligned_zeros

    (flat,) = worker.params
    shared = aligned_zeros(flat.size)
    shared[:] = flat
    shared.flags.writeable = False  # what ray.get gives for a numpy array
    before = shared.copy()
    worker.params = [shared]
    for tensor, part in zip(worker._param_tensors(), plan.shards[0].parts(shared)):
        assert np.shares_memory(np.from_dlpack(tensor), part)
    x, y = worker._ahead(1)[0]
    xla_loss = float(worker._compute()[0])
    worker._step = tf.function(worker._step_fn)  # the fallback without XLA: graph kernels
    worker.upcoming.appendleft((x, y))
    graph_loss = float(worker._compute()[0])
    np.testing.assert_array_equal(shared, before)
    np.testing.assert_allclose(graph_loss, xla_loss, rtol=1e-5)


def test_a_read_only_buffer_lives_as_long_as_the_tensor_over_it():
    """The tensor over a read-only buffer holds the buffer's owner (an object-store buffer stays pinned)."""
    import gc
    import weakref

    from raytf.runtime import aligned_zeros, as_tensor

    owner = aligned_zeros(4096)
    owner[:] = np.arange(4096)
    owner.flags.writeable = False
    alive = weakref.ref(owner.base)
    tensor = as_tensor(owner, read_only=True)
    assert np.shares_memory(np.from_dlpack(tensor), owner)
    assert not np.shares_memory(np.from_dlpack(as_tensor(owner)), owner)  # not vouched for: a copy
    del owner
    gc.collect()
    assert alive() is not None and float(tf.reduce_sum(tensor)) == float(np.arange(4096).sum())
    del tensor
    gc.collect()
    assert alive() is None


def test_step_flags_a_non_finite_gradient(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Shard 1 of nan_data has a NaN pixel in example 100: the 7th batch of 16 holds it.
    worker, _ = make_worker("examples.digits:build_model", data="tests.badinput.nan_data:train_examples", index=1)
    flags = [bool(worker._compute()[3]) for _ in range(8)]
    assert flags == [True] * 6 + [False, True]


def test_step_flags_a_non_finite_gradient_of_sparse_rows_alone(tmp_path, monkeypatch):
    """A row of zeros under sqrt(|x|): the loss and the dense gradients are finite, the row's own
    summed gradient is not, and the step says so."""
    monkeypatch.chdir(tmp_path)
    worker, _, _ = make_click_worker("tests.badinput.recsys_data:build_model_with_a_root_of_its_rows", 1, ["items"])
    give_own_parameters(worker)
    flags = []
    for zero_row in (False, True):
        request = worker._request_of(0)
        rows = np.full((len(request.ids[0][0]), 16), 0.25, np.float32)
        rows[0] = 0.0 if zero_row else 0.5
        worker.tables.load(request, [[rows]])
        loss, dense, (summed,), finite = worker._compute()
        assert np.isfinite(float(loss)) and all(np.isfinite(g.numpy()).all() for g in dense)
        assert np.isfinite(summed.numpy()).all() != zero_row
        flags.append(bool(finite))
    assert flags == [True, False]


def test_step_falls_back_when_xla_cannot_compile(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    worker, plan = make_worker("tests.badinput.xla_models:build_model", servers=1)
    loss, grads, _, _ = worker._compute()
    assert "XLA could not compile the step" in capsys.readouterr().out
    assert np.isfinite(float(loss)) and sum(int(np.prod(g.shape)) for g in grads) == plan.shards[0].values
    worker._compute()  # later steps use the graph function without checking again


def test_a_sparse_tables_gradient_leaves_the_step_summed_in_the_order_of_the_batchs_row_request(tmp_path, monkeypatch):
    """The table is in no server's flat buffer; its gradient leaves the compiled step deduplicated:
    the summed rows of the distinct ids the batch asked for, server by server in the request's
    order, equal to numpy's dedupe and split of the replica's own gradient."""
    monkeypatch.chdir(tmp_path)
    from raytf.exchange.tables import dedupe, split
    from raytf.replica.model import make_loss

    worker, plan, cfg = make_click_worker("examples.recsys:build_small_model", 2, ["items"])
    assert [t.layer for t in plan.tables] == ["items"]
    give_own_parameters(worker)
    x, y = worker._ahead(1)[0]
    table = worker.model.trainable_variables[plan.tables[0].variable]
    # The rows in the step: the batch's rows (here the replica's own) in a block, looked up by position.
    assert worker.tables.in_step
    request = worker._request_of(0)
    worker.tables.load(request, [[table.numpy()[request.ids[j][0]]] for j in range(2)])
    loss, grads, table_grads, finite = worker._compute()
    assert bool(finite) and sum(int(np.prod(g.shape)) for g in grads) == 16 * 32 + 32 + 32 + 1  # the dense layers only
    (summed,) = table_grads
    assert summed.shape == (8 * 20, 16)  # fixed capacity: the ids one batch looks up
    per_server, _, distinct = worker.tables.gradient([summed.numpy()], worker.batch_request)
    # By hand: the replica's own sparse gradient, deduplicated and split in numpy.
    with tf.GradientTape() as tape:
        out = make_loss(cfg.loss)(y, worker.model(x, training=True))
    want = tape.gradient(out, table)
    unique, rows = dedupe(want.indices.numpy().astype(np.int64).reshape(-1), want.values.numpy().reshape(-1, 16))
    assert distinct == len(unique) == len(np.unique(x))
    assert np.abs(summed.numpy()[distinct:]).sum() == 0  # past the distinct ids: padding
    for server, (want_local, want_rows) in enumerate(split(plan.tables[0], unique, rows)):
        ((got_local, got_rows),) = per_server[server]
        order = np.argsort(got_local)  # in order of first lookup, numpy's sorted
        np.testing.assert_array_equal(got_local[order], want_local)
        np.testing.assert_allclose(got_rows[order], want_rows, rtol=1e-5, atol=1e-7)


def test_a_model_that_reads_its_ids_twice_keeps_the_rows_in_its_tables(tmp_path, monkeypatch, capsys):
    """The step looks rows up by position only where nothing but the table reads the ids; here a dense
    layer reads them too, which the worker finds (the model's output changes) and says."""
    monkeypatch.chdir(tmp_path)
    worker, _, _ = make_click_worker("tests.badinput.recsys_data:build_model_reading_ids_twice", 1, ["items"])
    assert not worker.tables.in_step
    assert "another layer reads them" in capsys.readouterr().out
    give_own_parameters(worker)
    loss, _, (summed,), finite = worker._compute()
    assert bool(finite) and np.isfinite(float(loss)) and np.abs(summed.numpy()).sum() > 0


def test_a_sharded_embeddings_step_reads_its_rows_by_position_too(tmp_path, monkeypatch):
    """Its cache is not read either: the rows given for the batch are looked up by position, and the
    step's summed gradient rows are those of the batch's distinct ids (checked on the summed total)."""
    monkeypatch.chdir(tmp_path)
    worker, _, _ = make_click_worker("examples.recsys:build_small_sharded_model", 2)
    assert worker.tables.in_step
    give_own_parameters(worker)
    request = worker._request_of(0)
    rows = [[np.full((len(request.ids[j][0]), 16), 0.01 * (j + 1), np.float32)] for j in range(2)]
    worker.tables.load(request, rows)
    loss, _, (summed,), finite = worker._compute()
    assert bool(finite) and np.isfinite(float(loss))
    distinct = request.count()
    assert np.abs(summed.numpy()[:distinct]).sum() > 0 and np.abs(summed.numpy()[distinct:]).sum() == 0
