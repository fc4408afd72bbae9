"""The driver's groups of actors at Ray's boundary (raytf.driver.groups), against real actors."""

from __future__ import annotations

import os
import signal

import pytest

from raytf.cluster.connection import connect
from raytf.driver.groups import WorkerGroup


@pytest.fixture
def driver(ray_cluster):
    import ray

    with connect(ray_cluster.gcs_address):
        yield ray


def test_a_lost_worker_is_waited_for_until_its_new_process_answers(driver):
    """A call sent while Ray has not yet seen an actor's process die fails with ActorUnavailableError
    instead of waiting for the restart (Ray 2.60): a rollback that sets a lost worker up again must wait
    until it is back first (the cause of a flaky failure in test_multinode's killed-leader run)."""
    ray = driver

    @ray.remote(num_cpus=0, max_restarts=2)
    class Replica:
        def pid(self) -> int:
            return os.getpid()

        def node_id(self) -> str:
            return ray.get_runtime_context().get_node_id()

    def killed() -> tuple:
        handle = Replica.remote()
        pid = ray.get(handle.pid.remote())
        os.kill(pid, signal.SIGKILL)
        return handle, pid

    handle, _ = killed()
    with pytest.raises(ray.exceptions.ActorUnavailableError):  # what the rollback ran into
        ray.get(handle.pid.remote())
    ray.kill(handle)

    handle, old_pid = killed()
    WorkerGroup([handle], threads=1).wait_back([0])
    assert ray.get(handle.pid.remote(), timeout=10) != old_pid
    ray.kill(handle)
