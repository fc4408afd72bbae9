"""Shared-memory slots: what a worker writes, the server reads, and back; and clean-up."""

import glob
import uuid

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from raytf.transport import ServerSlots, WorkerLink, remove_shm_files, shm_available, shm_prefix  # noqa: E402

pytestmark = pytest.mark.skipif(not shm_available(), reason="no writable /dev/shm on this machine")


def test_gradient_and_parameters_round_trip():
    run = f"test-{uuid.uuid4().hex[:8]}"
    size = 1000
    server = ServerSlots(run, 0, size, shm_workers={0, 1}, shared_params=False)
    try:
        links = [WorkerLink(server.link_spec(w), size) for w in (0, 1)]
        grads = [np.full(size, w + 1.5, np.float32) for w in (0, 1)]
        assert [link.send(g) for link, g in zip(links, grads)] == [None, None]  # nothing travels in the call
        for w in (0, 1):
            np.testing.assert_array_equal(server.gradient(w, None).numpy(), grads[w])
        server.publish(np.arange(size, dtype=np.float32), version=1, worker=1)
        assert server.reply(1) is None
        np.testing.assert_array_equal(links[1].receive(None).numpy(), np.arange(size))
        # async slots are per worker: worker 0's slot was not written
        assert not links[0].receive(None).numpy().any()
    finally:
        server.close()
    assert glob.glob(shm_prefix(run) + "*") == []


def test_a_slot_is_written_once_per_version():
    """Publishing the version a slot already holds copies nothing (async answers every push)."""
    run = f"test-{uuid.uuid4().hex[:8]}"
    server = ServerSlots(run, 0, 4, shm_workers={0}, shared_params=False)
    try:
        link = WorkerLink(server.link_spec(0), 4)
        server.publish(np.full(4, 1.0, np.float32), version=7, worker=0)
        server.publish(np.full(4, 2.0, np.float32), version=7, worker=0)  # same version: no copy
        np.testing.assert_array_equal(link.receive(None).numpy(), np.full(4, 1.0))
        server.publish(np.full(4, 3.0, np.float32), version=8, worker=0)
        np.testing.assert_array_equal(link.receive(None).numpy(), np.full(4, 3.0))
    finally:
        server.close()


def test_sync_mode_shares_one_parameter_slot():
    run = f"test-{uuid.uuid4().hex[:8]}"
    server = ServerSlots(run, 3, 10, shm_workers={0, 1}, shared_params=True)
    try:
        specs = [server.link_spec(w) for w in (0, 1)]
        assert specs[0].params_path == specs[1].params_path
        assert specs[0].grad_path != specs[1].grad_path
        assert len(glob.glob(shm_prefix(run) + "*")) == 3
    finally:
        server.close()


def test_object_store_workers_get_no_slots():
    run = f"test-{uuid.uuid4().hex[:8]}"
    server = ServerSlots(run, 0, 10, shm_workers={1}, shared_params=True)
    try:
        assert server.link_spec(0).kind == "object_store"
        assert server.link_spec(1).kind == "shm"
        payload = np.ones(10, np.float32)
        assert server.gradient(0, payload).numpy().sum() == 10
    finally:
        server.close()


def test_sweep_removes_files_left_by_a_crash():
    run = f"test-{uuid.uuid4().hex[:8]}"
    ServerSlots(run, 0, 10, shm_workers={0}, shared_params=True)  # never closed: "crashed"
    assert remove_shm_files(run) == 2
    assert glob.glob(shm_prefix(run) + "*") == []
