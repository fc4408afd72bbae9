"""How a worker's gradient buffer reaches a parameter server and fresh parameters come back.

Three transports share one shape, so the exchange logic never knows which one it uses:

* `shm`: when worker and server share a node, each (worker, server) pair gets a fixed gradient
  slot and the server publishes parameters into fixed slots (which the worker's step reads in
  place, no copy), all memory-mapped files in
  /dev/shm/raytf-<uid>/<run id>/ (directories 0700, files 0600: other local users read no
  gradient or parameter). A step copies bytes into a buffer that already exists; only a tiny control
  message goes through Ray. Fresh object-store allocations per step are what make the plain
  path slow, and reused buffers avoid them.
* `wire`: for a pair on different nodes, a direct TCP connection (raytf.exchange.wire_link over
  raytf.exchange.wire): the server listens on its node's address, the worker connects with the
  run's secret, and each push and its answer go over it from and into buffers that exist for the
  whole run (the server's side of them is here, kept like the slots). No Ray call per step.
* `object_store`: the buffers travel as Ray call arguments and return values (works across
  nodes, the fallback). The server puts each published version into the object store once and
  hands every worker the same reference.

The server side is a `ServerSlots`, the worker side a `WorkerLink` per server. Which one a pair
uses is decided by the nodes the two run on: at wiring, and again when a restarted worker
rejoins (it may come back on another node, where the slot files of its old node do not exist).
"""

from __future__ import annotations

import glob
import os
import shutil
import stat
from dataclasses import dataclass, field

import numpy as np

from raytf.errors import ClusterError
from raytf.exchange.row_slots import RowLayout, RowSlot
from raytf.exchange.wire_link import Parts
from raytf.runtime import ALIGN_BYTES, aligned_zeros

ALIGN_FLOATS = ALIGN_BYTES // 4

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


TRANSPORTS = ("auto", "shm", "wire", "object_store")


def choose_link(transport: str, same_node: bool, rows_bounded: bool = True) -> str:
    """The kind of link a (worker, server) pair gets: "shm", "wire" or "object_store".

    `same_node`: they share a node whose shared memory is usable. `rows_bounded`: the model's sparse
    tables (if any) bound a step's rows (raytf.exchange.row_slots), which the wire needs: its buffers
    are fixed for the run."""
    if transport == "shm" and not same_node:
        raise ClusterError(
            "distribution.transport is 'shm', but a worker runs on another node than its parameter server "
            "(or the node has no usable shared memory).",
            "Use transport: auto, which takes shared memory on one node and the wire across nodes.",
        )
    if transport in ("auto", "shm") and same_node:
        return "shm"
    if transport in ("auto", "wire") and rows_bounded:
        return "wire"
    return "object_store"


@dataclass(frozen=True)
class LinkSpec:
    """What a worker needs to talk to one server: the slot files, the wire's address, or neither
    (the object store).

    The paths are relative to the shared-memory root of the node: a worker maps them under its own
    node's root, so a link made for another node finds no file rather than some other file."""

    grad_path: str | None = None
    params_path: str | None = None
    halves: int = 1  # parameter buffers in the file: 2 where the worker computes while the server publishes
    bell_path: str | None = None  # the server's doorbell (raytf.exchange.doorbell), when pushes go over it
    rows_path: str | None = None  # the pair's sparse rows (raytf.exchange.row_slots), with shared memory
    wire_address: tuple[str, int] | None = None  # the server's wire listener (host, port)
    wire_secret: bytes = field(default=b"", repr=False)  # the run's secret, proven in the wire's handshake

    @property
    def kind(self) -> str:
        if self.grad_path:
            return "shm"
        return "wire" if self.wire_address else "object_store"


def map_slot(path: str, size: int, create: bool, halves: int = 0) -> np.ndarray:
    """Map the slot file at `path` (`size` floats, or `halves` buffers of `size`: shape (halves, size));
    a new one is created 0600 whatever the umask, and never over an existing file (O_EXCL: a planted
    file or symlink makes this fail instead of being used)."""
    flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0) | getattr(os, "O_NOFOLLOW", 0)
    # A server of sparse rows only has no dense part, and a file can't map empty. Each buffer starts on
    # a 64-byte boundary: a variable of the second one that did not would be copied by every step
    # that reads it (raytf.runtime.as_tensor), 7 MB into fresh, page-faulting memory for the benchmark MLP.
    mapped = -(-max(size, ALIGN_FLOATS) // ALIGN_FLOATS) * ALIGN_FLOATS
    shape = (halves, mapped) if halves else (mapped,)
    fd = os.open(path, flags, 0o600)
    try:
        if create:
            os.ftruncate(fd, max(halves, 1) * mapped * 4)
        with os.fdopen(os.dup(fd), "r+b") as file:
            buffer = np.memmap(file, dtype=np.float32, mode="r+", shape=shape)  # the mapping outlives the file
    finally:
        os.close(fd)
    # A plain ndarray over the mapping (which it keeps alive): slicing a np.memmap builds a memmap per
    # slice (~5 µs each, several per step).
    return np.asarray(buffer)[..., :size]


class ServerSlots:
    """Server side of the links to all workers for one shard of `size` floats."""

    def __init__(self, run_id: str, server: int, size: int, shm_workers: set[int], shared_params: bool,
                 rows: RowLayout | None = None, wire_workers: set[int] = frozenset(),
                 wire_rows: RowLayout | None = None, carried_workers: set[int] = frozenset()) -> None:
        self._size = size
        self._layout = rows  # the sparse tables' row slots, where a step's rows are bounded
        self._wire_layout = wire_rows  # the same for pairs on the wire (which needs them bounded)
        self._rows: dict[int, RowSlot] = {}
        self._run_id = run_id
        self._name = f"ps{server}-"
        self._dir: str | None = None
        self._grads: dict[int, np.ndarray] = {}
        self._params: dict[int, np.ndarray] = {}
        self._specs: dict[int, LinkSpec] = {}
        self._wire: set[int] = set()  # the workers on the wire: their buffers are in this process
        # Workers whose pushes their node's leader sums and carries (raytf.exchange.local_reduce): no
        # buffer here; a pull of theirs (a Ray call) is answered through the object store.
        self._carried: set[int] = set(carried_workers)
        self._shared: tuple[np.ndarray, str] | None = None  # the one parameter slot of sync without backups
        # Per wire worker, the parameters published for it: a view of the parameters' own buffer, no
        # copy. Consistent while it is sent: an update while a view is alive writes another buffer
        # (FlatOptimizer.params_view), and in sync none comes before every worker's answer is out.
        self._views: dict[int, np.ndarray] = {}
        self._shared_params = shared_params
        self._shared_version = -1  # the version the shared slot holds
        self._given: dict[int, tuple[int, int]] = {}  # worker -> (half, version) it was last answered with
        self._published_ref = None
        self._published_version = -1
        for worker in sorted(shm_workers):
            self._add(worker)
        for worker in sorted(wire_workers):
            self._add_wire(worker)
        for worker in self._carried:
            self._specs[worker] = LinkSpec()

    def _path(self, suffix: str) -> str:
        """A file of this server in the run's private directory (made on first use, when what a dead
        process of this server left there is swept)."""
        if self._dir is None:
            self._dir = make_run_dir(self._run_id)
            for stale in glob.glob(os.path.join(self._dir, self._name + "*")):
                unlink_if_there(stale)  # left by a process of this server that died (its restart is here)
        return os.path.join(self._dir, self._name + suffix)

    def _create(self, suffix: str, halves: int = 0) -> tuple[np.ndarray, str]:
        path = self._path(suffix)
        return map_slot(path, self._size, create=True, halves=halves), path

    def _add(self, worker: int) -> None:
        self._grads[worker], grad_path = self._create(f"g{worker}")
        if self._shared_params:
            # The policy guarantees nobody reads while it is written: a barrier releases all workers
            # at once, and none computes again before every one has pushed.
            self._shared = self._shared or self._create("p", halves=1)
            self._params[worker], params_path = self._shared
        else:
            # Two buffers: a worker may compute on the parameters of its last answer while its next
            # push is answered (async, ssp), so each answer goes to the buffer it is not reading.
            self._params[worker], params_path = self._create(f"p{worker}", halves=2)
        root = shm_root()
        rows_path = None
        if self._layout is not None:
            self._rows[worker] = RowSlot(self._path(f"r{worker}"), self._layout, create=True)
            rows_path = os.path.relpath(self._rows[worker].path, root)
        self._specs[worker] = LinkSpec(grad_path=os.path.relpath(grad_path, root),
                                       params_path=os.path.relpath(params_path, root),
                                       halves=self._params[worker].shape[0], rows_path=rows_path)

    def _add_wire(self, worker: int) -> None:
        """Buffers for a worker on the wire: its gradient is received into one (and its rows into a
        row slot). Its answer needs none: `publish` keeps a view of the parameters' own buffer for
        the connection's thread to send (`take_published`)."""
        self._wire.add(worker)
        self._grads[worker] = aligned_zeros(self._size)
        if self._wire_layout is not None:
            self._rows[worker] = RowSlot.in_memory(self._wire_layout)
        self._specs[worker] = LinkSpec()  # the server adds its listener's address

    def wire_buffers(self, worker: int) -> tuple[np.ndarray, RowSlot | None] | None:
        """A wire worker's (gradient buffer, row slot), or None if it is not on the wire."""
        if worker not in self._wire:
            return None
        return self._grads[worker], self._rows.get(worker)

    def take_published(self, worker: int) -> np.ndarray | None:
        """The parameters published for a wire worker (once: the caller sends them and drops them)."""
        return self._views.pop(worker, None)

    def is_wire(self, worker: int) -> bool:
        return worker in self._wire

    def is_carried(self, worker: int) -> bool:
        return worker in self._carried

    def _drop(self, worker: int) -> None:
        spec = self._specs.pop(worker, None)
        if spec is None:
            return
        if worker in self._carried:
            self._carried.discard(worker)
            return
        if worker in self._wire:
            self._wire.discard(worker)
            del self._grads[worker]
            self._rows.pop(worker, None)
            self._views.pop(worker, None)
            return
        del self._grads[worker], self._params[worker]
        self._rows.pop(worker, None)
        root = shm_root()
        unlink_if_there(os.path.join(root, spec.grad_path))
        if spec.rows_path:
            unlink_if_there(os.path.join(root, spec.rows_path))
        if not self._shared_params:
            unlink_if_there(os.path.join(root, spec.params_path))
        self._given.pop(worker, None)

    def relink(self, worker: int, kind: str) -> LinkSpec:
        """The link of a worker that came back, maybe on another node: fresh slots when it shares this
        server's node (`kind` "shm"), fresh buffers for the wire, or none (the object store). Called
        with the exchange's lock held."""
        self._drop(worker)
        if kind == "shm":
            self._add(worker)
        elif kind == "wire":
            self._add_wire(worker)
        return self.link_spec(worker)

    def link_spec(self, worker: int) -> LinkSpec:
        return self._specs.get(worker, LinkSpec())

    def row_slot(self, worker: int) -> RowSlot | None:
        """The worker's row slot, where its sparse rows travel (shared memory, fixed-size tables)."""
        return self._rows.get(worker)

    def bell_path(self) -> str:
        """Where this server's doorbell socket goes: beside its slots, in the run's private directory."""
        return self._path("bell")

    def gradient(self, worker: int, payload: np.ndarray | None, tensor: bool = True):
        """The worker's gradient as a TF tensor (`tensor`, else the numpy array): over the slot it
        wrote, or over the payload it sent (the call's own argument in the object store: read by the
        update only, never copied)."""
        from raytf.runtime import as_tensor

        if not self._size:
            return None  # rows only: no dense part
        values = payload if payload is not None else self._grads[worker]
        return as_tensor(values, read_only=True) if tensor else values

    def publish(self, params: np.ndarray, version: int, worker: int) -> None:
        """Make `params` (at `version`) readable for `worker`; called by the server with its lock held,
        before `worker` is answered.

        Shared slot (sync without backups): written once per version, while every shm worker waits
        at the barrier. Otherwise the worker's own two buffers: the one it was not last answered with
        gets the new version (the other may be under its step right now); the same version again is
        answered with the same buffer, uncopied. Object-store workers get one `ray.put` per version,
        shared by all of them. Wire workers get a view of `params` itself, sent by their connection's
        thread (`take_published`).
        """
        if worker in self._wire:
            self._views[worker] = params
            return
        if worker in self._params:
            slot = self._params[worker]
            if self._shared_params:
                if self._shared_version != version:
                    np.copyto(slot[0], params)
                    self._shared_version = version
                self._given[worker] = (0, version)
                return
            half, held = self._given.get(worker, (1, -1))
            if held != version:
                half = 1 - half
                np.copyto(slot[half], params)
                self._given[worker] = (half, version)
        elif version != self._published_version:
            import ray

            self._published_ref, self._published_version = ray.put(params), version

    def reply(self, worker: int, in_call: bool = False):
        """What the reply to `worker` carries: which buffer of its slot to read, or the reference.
        A wire worker answered in a Ray call (`in_call`: its first pull) gets the parameters put
        into the object store: it has no mapping of this process's memory."""
        if worker in self._wire:
            if not in_call:
                return 0  # the wire's thread sends the parameters itself
            import ray

            return [ray.put(self.take_published(worker))]
        if worker in self._params:
            return self._given[worker][0]
        return [self._published_ref]  # wrapped so Ray passes the reference, not the value

    def close(self) -> None:
        for worker in list(self._specs):
            self._drop(worker)
        if self._shared is not None:
            unlink_if_there(self._shared[1])
            self._shared = None
        self._views.clear()
        if self._dir is not None:
            try:
                os.rmdir(self._dir)  # the last server of the run on this node takes the directory along
            except OSError:
                pass  # another server's files are still in it
            self._dir = None


def unlink_if_there(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class WorkerLink:
    """Worker side of the link to one server, for a flat buffer of `size` floats."""

    def __init__(self, spec: LinkSpec, size: int, rows: RowLayout | None = None) -> None:
        self.kind = spec.kind
        self.size = size
        root = shm_root()
        # The sparse rows' slot (raytf.exchange.row_slots): on the doorbell's path, rows go there; on the
        # wire, into a buffer of this process that the wire sends from and receives into.
        if spec.rows_path and rows:
            self.rows = RowSlot(os.path.join(root, spec.rows_path), rows, create=False)
        else:
            self.rows = RowSlot.in_memory(rows) if self.kind == "wire" and rows else None
        self._grad = map_slot(os.path.join(root, spec.grad_path), size, create=False) if spec.grad_path else None
        self._params = (map_slot(os.path.join(root, spec.params_path), size, create=False, halves=spec.halves)
                        if spec.params_path else None)
        # Object store: the gradient is gathered here and copied out by the call (Ray puts a large
        # argument into the object store when the call is made); zeros stay between the parts.
        # The wire sends the parts themselves (raytf.exchange.wire_link.Parts): no gathering copy.
        self.wire_parts = None
        self._staging = None
        if self.kind == "wire":
            self.wire_parts = Parts(size)
        elif self._grad is None:
            self._staging = aligned_zeros(size)

    def send(self, parts, offsets) -> np.ndarray | None:
        """Hand over a gradient given as `parts` (arrays) to lay at `offsets` of the flat buffer: one
        copy each, straight into the slot. Returns what must travel in the call or on the wire (None:
        it is in the slot)."""
        if self.wire_parts is not None:
            self.wire_parts.set(parts, offsets)  # sent from where they are when the push is rung
            return None
        buffer = self._grad if self._grad is not None else self._staging
        for part, offset in zip(parts, offsets):
            part = np.asarray(part).reshape(-1)
            np.copyto(buffer[offset:offset + part.size], part)
        return None if self._grad is not None else buffer

    def receive(self, payload) -> np.ndarray:
        """The published parameters, flat: the buffer of the slot the reply names (read in place,
        for shm; the server writes it again only after this worker's next call), or the
        object-store copy (read-only), or the wire's buffer the answer was received into."""
        if isinstance(payload, np.ndarray):
            return payload
        if self._params is not None and not isinstance(payload, list):
            return self._params[payload]
        import ray

        return ray.get(payload[0])  # a pull's answer (a Ray call's) to a worker whose pushes another carries
