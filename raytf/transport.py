"""How a worker's gradient buffer reaches a parameter server and fresh parameters come back.

Two transports share one shape, so the exchange logic never knows which one it uses:

* `shm`: when worker and server share a node, each (worker, server) pair gets a fixed gradient
  slot and the server publishes parameters into fixed slots, all memory-mapped files in
  /dev/shm. A step copies bytes into a buffer that already exists; only a tiny control
  message goes through Ray. Fresh object-store allocations per step are what make the plain
  path slow, and reused buffers avoid them.
* `object_store`: the buffers travel as Ray call arguments and return values (works across
  nodes). The server puts each published version into the object store once and hands every
  worker the same reference.

The server side is a `ServerSlots`, the worker side a `WorkerLink` per server.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

import numpy as np

SHM_ROOT = "/dev/shm"


def shm_available() -> bool:
    return os.path.isdir(SHM_ROOT) and os.access(SHM_ROOT, os.W_OK)


def shm_prefix(run_id: str) -> str:
    return os.path.join(SHM_ROOT, f"raytf-{run_id}-")


def remove_shm_files(run_id: str) -> int:
    """Remove every slot file of a run on this node (after a crash, too). Returns how many."""
    paths = glob.glob(shm_prefix(run_id) + "*")
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    return len(paths)


@dataclass(frozen=True)
class LinkSpec:
    """What a worker needs to talk to one server: the slot files, or None for the object store."""

    grad_path: str | None = None
    params_path: str | None = None

    @property
    def kind(self) -> str:
        return "shm" if self.grad_path else "object_store"


def _map(path: str, size: int, create: bool) -> np.ndarray:
    mode = "w+" if create else "r+"
    return np.memmap(path, dtype=np.float32, mode=mode, shape=(size,))


class ServerSlots:
    """Server side of the links to all workers for one shard of `size` floats."""

    def __init__(self, run_id: str, server: int, size: int, shm_workers: set[int], shared_params: bool) -> None:
        self._size = size
        self._prefix = f"{shm_prefix(run_id)}ps{server}-"
        self._grads: dict[int, np.ndarray] = {}
        self._params: dict[int, np.ndarray] = {}
        self._paths: list[str] = []
        shared = None
        if size == 0:
            shm_workers = set()  # a server that holds rows of sparse tables only: nothing dense to map
        for worker in sorted(shm_workers):
            self._grads[worker] = self._create(f"g{worker}")
            if shared_params:
                # The policy guarantees nobody reads while it is written (a barrier releases all at once).
                shared = shared if shared is not None else self._create("p")
                self._params[worker] = shared
            else:
                self._params[worker] = self._create(f"p{worker}")
        self._shared_params = shared_params
        self._slot_versions: dict[object, int] = {}  # "shared" or worker -> the version its slot holds
        self._published_ref = None
        self._published_version = -1

    def _create(self, suffix: str) -> np.ndarray:
        path = self._prefix + suffix
        self._paths.append(path)
        return _map(path, self._size, create=True)

    def link_spec(self, worker: int) -> LinkSpec:
        if worker not in self._grads:
            return LinkSpec()
        return LinkSpec(grad_path=self._grads[worker].filename, params_path=self._params[worker].filename)

    def gradient(self, worker: int, payload: np.ndarray | None):
        """The worker's gradient as a TF tensor: over the slot it wrote, or from the payload it sent."""
        from raytf.runtime import as_tensor

        return as_tensor(payload if payload is not None else self._grads[worker])

    def publish(self, params: np.ndarray, version: int, worker: int) -> None:
        """Make `params` (at `version`) readable for `worker`; called by the server with its lock held,
        before `worker` is answered.

        Shared slot (sync without backups): written once per version, while every shm worker waits
        at the barrier. Otherwise each worker's own slot, copied only when it holds an older version.
        Object-store workers get one `ray.put` per version, shared by all of them.
        """
        if worker in self._params:
            key = "shared" if self._shared_params else worker
            if self._slot_versions.get(key) != version:
                np.copyto(self._params[worker], params)
                self._slot_versions[key] = version
        elif version != self._published_version:
            import ray

            self._published_ref, self._published_version = ray.put(params), version

    def reply(self, worker: int):
        """What the reply to `worker` carries: nothing (it reads its slot) or the reference."""
        if worker in self._params:
            return None
        return [self._published_ref]  # wrapped so Ray passes the reference, not the value

    def close(self) -> None:
        self._grads.clear()
        self._params.clear()
        for path in self._paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


class WorkerLink:
    """Worker side of the link to one server."""

    def __init__(self, spec: LinkSpec, size: int) -> None:
        self.kind = spec.kind
        self._grad = _map(spec.grad_path, size, create=False) if spec.grad_path else None
        self._params = _map(spec.params_path, size, create=False) if spec.params_path else None

    def send(self, grad: np.ndarray) -> np.ndarray | None:
        """Hand over a gradient; returns what must travel in the call (None when it is in the slot)."""
        if self._grad is None:
            return grad
        np.copyto(self._grad, grad)
        return None

    def receive(self, payload):
        """The published parameters as a TF tensor (over the slot itself, for shm)."""
        from raytf.runtime import as_tensor

        if self._params is not None:
            return as_tensor(self._params)
        import ray

        return as_tensor(ray.get(payload[0]))
