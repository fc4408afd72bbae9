"""A parameter server's state and its checkpoint shard file.

Every server writes its own shard (`ps-<i>.npz`) into the step's directory, under a temporary name,
fsynced and renamed; the driver writes the manifest once every shard is in
(`raytf.driver.checkpoints`), so a directory without a manifest is not a checkpoint.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PREFIX = "step-"


@dataclass(frozen=True)
class TableState:
    """One server's rows of a sparse table (`raytf.exchange.tables`), in its local order, and their slots."""

    params: np.ndarray  # (rows of this server, width)
    slots: dict[str, np.ndarray] | None = None  # None: fresh optimizer slots
    iterations: int = 0
    # A dynamic table's (raytf.exchange.dynamic_rows): each row's key, how often it was touched and the
    # last update it was touched at (None for a fixed table, whose rows are in its local order).
    keys: np.ndarray | None = None
    touches: np.ndarray | None = None
    last: np.ndarray | None = None


@dataclass(frozen=True)
class ShardState:
    """One server's state: what it starts from and what a checkpoint holds."""

    params: np.ndarray
    slots: dict[str, np.ndarray] | None = None  # None: fresh optimizer slots
    iterations: int = 0
    version: int = 0
    tables: tuple[TableState, ...] = ()  # its rows of each sparse table, in the plan's order
    deltas: dict[str, np.ndarray] | None = None  # checkpoint.deltas: the delta file's columns (raytf.exchange.deltas)


@dataclass(frozen=True)
class SavedShard:
    """What a server reports after writing its shard file."""

    index: int
    version: int
    file: str
    crc32: int


def root_of(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def step_dir(root: Path, step: int) -> Path:
    return root / f"{PREFIX}{step:08d}"


def checksum(arrays: dict[str, np.ndarray]) -> int:
    crc = 0
    for key in sorted(arrays):
        crc = zlib.crc32(np.ascontiguousarray(arrays[key]).view(np.uint8), crc)
    return crc


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_shard(directory: Path, index: int, state: ShardState) -> SavedShard:
    """Write one server's shard (called in the server, which owns the arrays)."""
    arrays = {"params": state.params, **{f"slot.{name}": value for name, value in (state.slots or {}).items()}}
    counters = {"iterations": np.int64(state.iterations), "version": np.int64(state.version)}
    for k, table in enumerate(state.tables):
        arrays[f"table{k}.params"] = table.params
        for name in ("keys", "touches", "last"):
            if getattr(table, name) is not None:
                arrays[f"table{k}.{name}"] = getattr(table, name)
        arrays.update({f"table{k}.slot.{name}": value for name, value in (table.slots or {}).items()})
        counters[f"table{k}.iterations"] = np.int64(table.iterations)
    directory.mkdir(parents=True, exist_ok=True)
    if state.deltas is not None:  # before the shard: a checkpoint whose shard is complete has its delta
        from raytf.exchange.deltas import DELTA_PREFIX

        atomic_write(directory / f"{DELTA_PREFIX}{index}.npz", lambda f: np.savez(f, **state.deltas))
    name = f"ps-{index}.npz"
    atomic_write(directory / name, lambda f: np.savez(f, **counters, **arrays))
    return SavedShard(index=index, version=state.version, file=name, crc32=checksum(arrays))


class ShardWriter:
    """A server's shard files, written by one writer thread so that the exchange goes on meanwhile.

    The caller hands over copies of its state (the next updates must not change what is written)
    with the exchange's lock held. A periodic checkpoint's file is written in the background, one
    at a time (the next waits for it, so a slow disk holds training back instead of piling up
    copies in memory); the run's last checkpoint is written before `write` returns (the driver
    reads it as soon as the workers are done). A failed background write is kept, no later
    checkpoint is written, and `collect` raises it: in the driver's statistics call, which ends the
    run with it. (Raised in `write`, it would come out of a push served on a doorbell or wire thread,
    where it cannot reach anyone: the worker would see its server gone, the run would roll back to
    the checkpoint before and fail at the same one again, for ever.)
    """

    KEEP = 8  # shards remembered for the driver (it reads them every second)

    def __init__(self, index: int, write=None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.index = index
        self.saved: dict[int, SavedShard] = {}  # version -> its shard, once the file is complete
        self._write = write or write_shard
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="raytf-checkpoint")
        self._pending = None  # (version, Future) of the file being written
        self.error: BaseException | None = None  # a failed background write, raised by `collect`

    def write(self, directory: Path, state: ShardState, last: bool) -> None:
        self._finish(wait=True)
        if self.error is not None:
            return  # the run is about to end with it (`collect`); a later file would not be trusted either
        if last:
            self._record(state.version, self._write(directory, self.index, state))
        else:
            self._pending = (state.version, self._thread.submit(self._write, directory, self.index, state))

    def collect(self, wait: bool) -> None:
        """Record the background write once it is done (waiting for it if `wait`); raise its error."""
        self._finish(wait)
        if self.error is not None:
            raise self.error

    def _finish(self, wait: bool) -> None:
        if self._pending is None or not (wait or self._pending[1].done()):
            return
        (version, future), self._pending = self._pending, None
        error = future.exception()
        if error is None:
            self._record(version, future.result())
        else:
            self.error = error

    def reset(self) -> None:
        """Forget every shard (a rollback restarts the run); a write under way is finished first."""
        self.collect(wait=True)
        self.saved = {}

    def close(self) -> None:
        """Let a write under way finish (the run ended early); its error is not raised over the
        reason it ended, and its checkpoint gets no manifest anyway."""
        self._thread.shutdown(wait=True)

    def _record(self, version: int, shard: SavedShard) -> None:
        self.saved[version] = shard
        for old in sorted(self.saved)[:-self.KEEP]:
            del self.saved[old]
