"""Shared-memory slots: what a worker writes, the server reads, and back; who may read them; clean-up."""

import glob
import os
import stat
import uuid

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from raytf.errors import ClusterError  # noqa: E402
from raytf.exchange.transport import (  # noqa: E402
    SHM_ROOT_ENV,
    ServerSlots,
    WorkerLink,
    remove_shm_files,
    shm_available,
    shm_run_dir,
    shm_user_dir,
)

pytestmark = pytest.mark.skipif(not shm_available(), reason="no writable /dev/shm on this machine")


def test_gradient_and_parameters_round_trip():
    run = f"test-{uuid.uuid4().hex[:8]}"
    size = 1000
    server = ServerSlots(run, 0, size, shm_workers={0, 1}, shared_params=False)
    try:
        links = [WorkerLink(server.link_spec(w), size) for w in (0, 1)]
        grads = [np.full(size, w + 1.5, np.float32) for w in (0, 1)]
        assert [link.send([g], (0,)) for link, g in zip(links, grads)] == [None, None]  # nothing travels in the call
        for w in (0, 1):
            np.testing.assert_array_equal(server.gradient(w, None).numpy(), grads[w])
        server.publish(np.arange(size, dtype=np.float32), version=1, worker=1)
        np.testing.assert_array_equal(links[1].receive(server.reply(1)), np.arange(size))
        # async slots are per worker: worker 0's slot was not written
        assert not links[0].receive(0).any() and not links[0].receive(1).any()
    finally:
        server.close()
    assert glob.glob(os.path.join(shm_run_dir(run), "*")) == []


def test_a_slot_is_written_once_per_version():
    """Publishing the version a slot already holds copies nothing (async answers every push)."""
    run = f"test-{uuid.uuid4().hex[:8]}"
    server = ServerSlots(run, 0, 4, shm_workers={0}, shared_params=False)
    try:
        link = WorkerLink(server.link_spec(0), 4)
        server.publish(np.full(4, 1.0, np.float32), version=7, worker=0)
        first = server.reply(0)
        server.publish(np.full(4, 2.0, np.float32), version=7, worker=0)  # same version: no copy, same buffer
        assert server.reply(0) == first
        np.testing.assert_array_equal(link.receive(first), np.full(4, 1.0))
        server.publish(np.full(4, 3.0, np.float32), version=8, worker=0)
        np.testing.assert_array_equal(link.receive(server.reply(0)), np.full(4, 3.0))
    finally:
        server.close()


def test_a_new_version_never_lands_in_the_buffer_the_worker_computes_on():
    """Async and ssp compute on the last answer's parameters while the next push is answered: each
    new version goes to the other of the worker's two buffers, and the reply says which."""
    run = f"test-{uuid.uuid4().hex[:8]}"
    server = ServerSlots(run, 0, 5, shm_workers={0}, shared_params=False)
    try:
        spec = server.link_spec(0)
        assert spec.halves == 2
        link = WorkerLink(spec, 5)
        server.publish(np.full(5, 1.0, np.float32), version=1, worker=0)
        computing = server.reply(0)
        in_use = link.receive(computing)
        for version in range(2, 6):
            server.publish(np.full(5, float(version), np.float32), version=version, worker=0)
            answered = server.reply(0)
            assert answered != computing
            np.testing.assert_array_equal(in_use, np.full(5, float(version - 1)))  # untouched under the step
            computing, in_use = answered, link.receive(answered)
            np.testing.assert_array_equal(in_use, np.full(5, float(version)))
    finally:
        server.close()


def test_sync_mode_shares_one_parameter_slot():
    run = f"test-{uuid.uuid4().hex[:8]}"
    server = ServerSlots(run, 3, 10, shm_workers={0, 1}, shared_params=True)
    try:
        specs = [server.link_spec(w) for w in (0, 1)]
        assert specs[0].params_path == specs[1].params_path
        assert specs[0].grad_path != specs[1].grad_path
        assert len(glob.glob(os.path.join(shm_run_dir(run), "*"))) == 3
    finally:
        server.close()


def test_object_store_workers_get_no_slots():
    run = f"test-{uuid.uuid4().hex[:8]}"
    server = ServerSlots(run, 0, 10, shm_workers={1}, shared_params=True)
    try:
        assert server.link_spec(0).kind == "object_store"
        assert server.link_spec(1).kind == "shm"
        payload = WorkerLink(server.link_spec(0), 10).send([np.ones(3, np.float32), np.ones(2, np.float32)], (0, 5))
        np.testing.assert_array_equal(payload, [1, 1, 1, 0, 0, 1, 1, 0, 0, 0])  # laid at the offsets, zeros between
        assert server.gradient(0, payload).numpy().sum() == 5
    finally:
        server.close()


def test_sweep_removes_files_left_by_a_crash():
    run = f"test-{uuid.uuid4().hex[:8]}"
    ServerSlots(run, 0, 10, shm_workers={0}, shared_params=True)  # never closed: "crashed"
    assert remove_shm_files(run) == 2
    assert not os.path.exists(shm_run_dir(run))


def _mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_slots_are_private_to_the_user_whatever_the_umask():
    """0600 files in a 0700 per-user, per-run directory, even with an umask that lets everyone read."""
    run = f"test-{uuid.uuid4().hex[:8]}"
    old_umask = os.umask(0)
    try:
        server = ServerSlots(run, 0, 16, shm_workers={0, 1}, shared_params=False)
    finally:
        os.umask(old_umask)
    try:
        files = glob.glob(os.path.join(shm_run_dir(run), "*"))
        assert sorted(os.path.basename(f) for f in files) == ["ps0-g0", "ps0-g1", "ps0-p0", "ps0-p1"]
        assert {_mode(f) for f in files} == {0o600}
        assert _mode(shm_run_dir(run)) == 0o700 and _mode(shm_user_dir()) == 0o700
        assert os.lstat(shm_user_dir()).st_uid == os.getuid()
    finally:
        server.close()
    assert not os.path.exists(shm_run_dir(run))  # the last server takes the run's directory along


def test_a_planted_user_directory_is_refused(tmp_path, monkeypatch):
    """Another local user could create raytf-<uid> first (the root is world-writable): a symlink there
    is refused, not followed."""
    monkeypatch.setenv(SHM_ROOT_ENV, str(tmp_path))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o777)
    os.symlink(elsewhere, shm_user_dir())
    with pytest.raises(ClusterError, match=r"not a directory owned by you.*") as info:
        ServerSlots("planted", 0, 8, shm_workers={0}, shared_params=True)
    assert SHM_ROOT_ENV in info.value.fix
    assert list(elsewhere.iterdir()) == []


def test_a_loose_user_directory_is_made_private(tmp_path, monkeypatch):
    monkeypatch.setenv(SHM_ROOT_ENV, str(tmp_path))
    os.mkdir(shm_user_dir(), 0o755)
    os.chmod(shm_user_dir(), 0o777)
    server = ServerSlots("loose", 0, 8, shm_workers={0}, shared_params=True)
    try:
        assert _mode(shm_user_dir()) == 0o700
    finally:
        server.close()


def test_a_restarted_server_replaces_the_files_of_its_dead_process():
    """Files are created O_EXCL; a server's new process sweeps what its killed one left (same names)."""
    run = f"test-{uuid.uuid4().hex[:8]}"
    ServerSlots(run, 0, 8, shm_workers={0}, shared_params=True)  # its process was SIGKILLed
    other = ServerSlots(run, 1, 8, shm_workers={0}, shared_params=True)  # another server of the run, alive
    again = ServerSlots(run, 0, 8, shm_workers={0}, shared_params=True)
    try:
        link = WorkerLink(again.link_spec(0), 8)
        again.publish(np.full(8, 4.0, np.float32), version=1, worker=0)
        np.testing.assert_array_equal(link.receive(again.reply(0)), np.full(8, 4.0))
        assert len(glob.glob(os.path.join(shm_run_dir(run), "ps1-*"))) == 2  # the other server's were left alone
    finally:
        again.close()
        other.close()
    assert not os.path.exists(shm_run_dir(run))


def test_relink_moves_a_worker_between_shared_memory_and_the_object_store():
    """A restarted worker on another node gets no slots (and its old ones go); back on the server's
    node, fresh ones."""
    run = f"test-{uuid.uuid4().hex[:8]}"
    server = ServerSlots(run, 0, 6, shm_workers={0, 1}, shared_params=True)
    try:
        assert server.relink(1, "object_store").kind == "object_store"
        assert sorted(os.listdir(shm_run_dir(run))) == ["ps0-g0", "ps0-p"]  # the shared slot stays for worker 0
        assert server.gradient(1, np.ones(6, np.float32)).numpy().sum() == 6
        spec = server.relink(1, "shm")
        assert spec.kind == "shm" and spec.params_path == server.link_spec(0).params_path
        link = WorkerLink(spec, 6)
        assert link.send([np.full(6, 2.0, np.float32)], (0,)) is None
        np.testing.assert_array_equal(server.gradient(1, None).numpy(), np.full(6, 2.0))
    finally:
        server.close()
    assert not os.path.exists(shm_run_dir(run))


def test_a_link_made_for_another_node_finds_no_slot(tmp_path, monkeypatch):
    """Slot paths are relative to the node's shared-memory root: a worker on another node (another
    /dev/shm) cannot map its old pairing's slots. This is what broke a worker that Ray restarted
    on another node while it still held the LinkSpec of its first node."""
    run = f"test-{uuid.uuid4().hex[:8]}"
    server = ServerSlots(run, 0, 4, shm_workers={0}, shared_params=True)
    try:
        spec = server.link_spec(0)
        assert not os.path.isabs(spec.grad_path)
        monkeypatch.setenv(SHM_ROOT_ENV, str(tmp_path))  # the worker now runs on another node
        with pytest.raises(FileNotFoundError):
            WorkerLink(spec, 4)
    finally:
        monkeypatch.delenv(SHM_ROOT_ENV)
        server.close()


@pytest.mark.parametrize("transport, same_node, rows_bounded, kind", [
    ("auto", True, True, "shm"),
    ("auto", False, True, "wire"),
    ("auto", False, False, "object_store"),  # rows of no fixed bound: the wire's buffers cannot hold them
    ("shm", True, True, "shm"),
    ("wire", True, True, "wire"),  # asked for on one node, too
    ("object_store", True, True, "object_store"),
    ("object_store", False, True, "object_store"),
])
def test_each_pair_gets_the_link_its_placement_allows(transport, same_node, rows_bounded, kind):
    from raytf.exchange.transport import choose_link

    assert choose_link(transport, same_node, rows_bounded) == kind


def test_shm_across_nodes_is_refused_with_the_fix():
    from raytf.exchange.transport import choose_link

    with pytest.raises(ClusterError, match="another node") as err:
        choose_link("shm", same_node=False)
    assert "transport: auto" in err.value.fix


@pytest.mark.parametrize("shared", [True, False], ids=["sync-shared", "own"])
def test_wire_workers_get_buffers_in_the_process_and_no_files(shared):
    run = f"test-{uuid.uuid4().hex[:8]}"
    server = ServerSlots(run, 0, 10, shm_workers={0}, shared_params=shared, wire_workers={1, 2})
    try:
        assert server.is_wire(1) and server.is_wire(2) and not server.is_wire(0)
        assert sorted(os.listdir(shm_run_dir(run))) == (["ps0-g0", "ps0-p"] if shared else ["ps0-g0", "ps0-p0"])
        params = np.arange(10, dtype=np.float32)
        for worker in (1, 2):
            server.publish(params, version=1, worker=worker)
            assert server.reply(worker) == 0  # nothing to name: the wire's thread sends the parameters
            grad, rows = server.wire_buffers(worker)
            assert rows is None  # no sparse tables
            grad[:] = worker
            assert server.gradient(worker, None).numpy().sum() == 10 * worker  # the update reads what arrived
        # What is sent is the published array itself (a view of the variable's buffer: no copy), once.
        assert server.take_published(1) is params and server.take_published(1) is None
        assert server.wire_buffers(0) is None
        # A worker that came back on the servers' node gets slots, and the wire again elsewhere.
        assert server.relink(1, "shm").kind == "shm" and not server.is_wire(1)
        assert server.relink(1, "wire").kind == "object_store" and server.is_wire(1)  # the server adds its address
        assert server.take_published(2) is params and server.relink(2, "object_store").kind == "object_store"
    finally:
        server.close()
    assert not os.path.exists(shm_run_dir(run))


@pytest.mark.parametrize("size", [1000, 1003, 16])
def test_every_buffer_of_a_slot_starts_on_a_64_byte_boundary(tmp_path, size):
    """A parameter file of two buffers: the second starts aligned too, whatever the shard's size (a
    worker's step reads each variable in place only where it is aligned; elsewhere it copies)."""
    from raytf.exchange.transport import ALIGN_BYTES, map_slot
    from raytf.runtime import as_tensor

    both = map_slot(str(tmp_path / "p"), size, create=True, halves=2)
    assert both.shape == (2, size)
    assert [half.ctypes.data % ALIGN_BYTES for half in both] == [0, 0]
    both[1] = np.arange(size)
    tensor = as_tensor(both[1], read_only=True)
    both[1, 0] = -1.0  # the tensor is a view of the mapping, not a copy
    assert tensor.numpy()[0] == -1.0 and tensor.numpy()[-1] == size - 1
