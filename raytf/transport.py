"""How a worker's gradient buffer reaches a parameter server and fresh parameters come back.

Two transports share one shape, so the exchange logic never knows which one it uses:

* `shm`: when worker and server share a node, each (worker, server) pair gets a fixed gradient
  slot and the server publishes parameters into fixed slots, all memory-mapped files in
  /dev/shm/raytf-<uid>/<run id>/ (directories 0700, files 0600: other local users read no
  gradient or parameter). A step copies bytes into a buffer that already exists; only a tiny control
  message goes through Ray. Fresh object-store allocations per step are what make the plain
  path slow, and reused buffers avoid them.
* `object_store`: the buffers travel as Ray call arguments and return values (works across
  nodes). The server puts each published version into the object store once and hands every
  worker the same reference.

The server side is a `ServerSlots`, the worker side a `WorkerLink` per server. Which one a pair
uses is decided by the nodes the two run on: at wiring, and again when a restarted worker
rejoins (it may come back on another node, where the slot files of its old node do not exist).
"""

from __future__ import annotations

import glob
import os
import shutil
import stat
from dataclasses import dataclass

import numpy as np

from raytf.errors import ClusterError

SHM_ROOT = "/dev/shm"
SHM_ROOT_ENV = "RAYTF_SHM_ROOT"  # another tmpfs for the exchange files (read on each node)


def shm_root() -> str:
    return os.environ.get(SHM_ROOT_ENV) or SHM_ROOT


def shm_available() -> bool:
    root = shm_root()
    return os.path.isdir(root) and os.access(root, os.W_OK)


def shm_user_dir() -> str:
    """<root>/raytf-<uid>: only this user may enter it, so nobody else can open (or plant) a run's files."""
    return os.path.join(shm_root(), f"raytf-{os.getuid()}")


def shm_run_dir(run_id: str) -> str:
    """Where a run's exchange files live on this node: <root>/raytf-<uid>/<run id>/ (both 0700)."""
    return os.path.join(shm_user_dir(), run_id)


def _private_dir(path: str) -> str:
    """`path` as a directory owned by this user with mode 0700; refuses a symlink or one planted by
    someone else (the root is world-writable: another user could create the name first)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise ClusterError(
            f"{path} is not a directory owned by you (uid {os.getuid()}); another user may have created it, "
            "and raytf will not put its exchange buffers where others can read them.",
            f"Remove it (or have its owner remove it), then retry; or set {SHM_ROOT_ENV} to a tmpfs only you can write.",
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def make_run_dir(run_id: str) -> str:
    _private_dir(shm_user_dir())
    return _private_dir(shm_run_dir(run_id))


def remove_shm_files(run_id: str) -> int:
    """Remove every slot file of a run on this node, and its directory (after a crash, too).
    Returns how many files there were."""
    run_dir = shm_run_dir(run_id)
    if os.path.islink(run_dir) or not os.path.isdir(run_dir):
        return 0
    count = len(os.listdir(run_dir))
    shutil.rmtree(run_dir, ignore_errors=True)
    return count


@dataclass(frozen=True)
class LinkSpec:
    """What a worker needs to talk to one server: the slot files, or None for the object store.

    The paths are relative to the shared-memory root of the node: a worker maps them under its own
    node's root, so a link made for another node finds no file rather than some other file."""

    grad_path: str | None = None
    params_path: str | None = None

    @property
    def kind(self) -> str:
        return "shm" if self.grad_path else "object_store"


def _map(path: str, size: int, create: bool) -> np.ndarray:
    """Map the slot file at `path`; a new one is created 0600 whatever the umask, and never over an
    existing file (O_EXCL: a planted file or symlink makes this fail instead of being used)."""
    flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0) | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    try:
        if create:
            os.ftruncate(fd, size * 4)
        with os.fdopen(os.dup(fd), "r+b") as file:
            return np.memmap(file, dtype=np.float32, mode="r+", shape=(size,))  # the mapping outlives the file
    finally:
        os.close(fd)


class ServerSlots:
    """Server side of the links to all workers for one shard of `size` floats."""

    def __init__(self, run_id: str, server: int, size: int, shm_workers: set[int], shared_params: bool) -> None:
        self._size = size
        self._run_id = run_id
        self._name = f"ps{server}-"
        self._dir: str | None = None
        self._grads: dict[int, np.ndarray] = {}
        self._params: dict[int, np.ndarray] = {}
        self._specs: dict[int, LinkSpec] = {}
        self._shared: tuple[np.ndarray, str] | None = None  # the one parameter slot of sync without backups
        self._shared_params = shared_params
        self._slot_versions: dict[object, int] = {}  # "shared" or worker -> the version its slot holds
        self._published_ref = None
        self._published_version = -1
        if size == 0:
            shm_workers = set()  # a server that holds rows of sparse tables only: nothing dense to map
        for worker in sorted(shm_workers):
            self._add(worker)

    def _create(self, suffix: str) -> tuple[np.ndarray, str]:
        if self._dir is None:
            self._dir = make_run_dir(self._run_id)
            for stale in glob.glob(os.path.join(self._dir, self._name + "*")):
                _unlink(stale)  # left by a process of this server that died (its restart is here)
        path = os.path.join(self._dir, self._name + suffix)
        return _map(path, self._size, create=True), path

    def _add(self, worker: int) -> None:
        self._grads[worker], grad_path = self._create(f"g{worker}")
        if self._shared_params:
            # The policy guarantees nobody reads while it is written (a barrier releases all at once).
            self._shared = self._shared or self._create("p")
            self._params[worker], params_path = self._shared
        else:
            self._params[worker], params_path = self._create(f"p{worker}")
        root = shm_root()
        self._specs[worker] = LinkSpec(grad_path=os.path.relpath(grad_path, root),
                                       params_path=os.path.relpath(params_path, root))

    def _drop(self, worker: int) -> None:
        spec = self._specs.pop(worker, None)
        if spec is None:
            return
        del self._grads[worker], self._params[worker]
        root = shm_root()
        _unlink(os.path.join(root, spec.grad_path))
        if not self._shared_params:
            _unlink(os.path.join(root, spec.params_path))
            self._slot_versions.pop(worker, None)

    def relink(self, worker: int, shm: bool) -> LinkSpec:
        """The link of a worker that came back, maybe on another node: fresh slots when it shares this
        server's node (`shm`), else none (the object store). Called with the exchange's lock held."""
        self._drop(worker)
        if shm and self._size:
            self._add(worker)
        return self.link_spec(worker)

    def link_spec(self, worker: int) -> LinkSpec:
        return self._specs.get(worker, LinkSpec())

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
        for worker in list(self._specs):
            self._drop(worker)
        if self._shared is not None:
            _unlink(self._shared[1])
            self._shared = None
        if self._dir is not None:
            try:
                os.rmdir(self._dir)  # the last server of the run on this node takes the directory along
            except OSError:
                pass  # another server's files are still in it
            self._dir = None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class WorkerLink:
    """Worker side of the link to one server."""

    def __init__(self, spec: LinkSpec, size: int) -> None:
        self.kind = spec.kind
        root = shm_root()
        self._grad = _map(os.path.join(root, spec.grad_path), size, create=False) if spec.grad_path else None
        self._params = _map(os.path.join(root, spec.params_path), size, create=False) if spec.params_path else None

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
