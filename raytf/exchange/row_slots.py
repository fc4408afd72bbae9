"""Sparse rows on the fast path: one fixed shared-memory file per (worker, server) for the rows of a step.

Beside the dense gradient and parameter slots (raytf.exchange.transport), a worker that reaches its
server over shared memory and the doorbell writes, per sparse table, the distinct local ids of its
batch that the server owns and their summed gradient rows, and the local ids of the rows it wants
for a coming batch; the server reads them in place when the doorbell rings, and writes the rows
asked for back into the same file before it answers. No Ray call per step, and nothing in the
file is allocated per step: a step's rows are bounded by the ids one batch looks up
(`TableSpec.per_batch`), so every segment has a fixed capacity.

Layout (every array 64-byte aligned): a header of int64 counts (per table: pushed, wanted), then per
table: pushed ids (int64), pushed rows (float32, width each), wanted ids (int64), rows sent back.
Who writes what when: the worker writes the pushed and wanted parts before it rings and reads the
rows sent back after the answer; the server reads and writes between the ring and its answer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from raytf.runtime import ALIGN_BYTES, aligned_bytes


def _aligned(offset: int) -> int:
    return -(-offset // ALIGN_BYTES) * ALIGN_BYTES


@dataclass(frozen=True)
class RowLayout:
    """Where each table's segments sit in a row slot file: per table (capacity, width)."""

    tables: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, specs: Sequence) -> "RowLayout | None":
        """The layout for sparse tables `specs` (raytf.exchange.tables.TableSpec), or None when one has no
        fixed number of ids per batch (its rows then travel in Ray calls)."""
        if not specs or any(spec.per_batch <= 0 for spec in specs):
            return None
        return cls(tuple((spec.per_batch, spec.width) for spec in specs))

    def _offsets(self) -> tuple[list[tuple[int, int, int, int]], int]:
        offset = _aligned(16 * len(self.tables))
        places = []
        for capacity, width in self.tables:
            pushed_ids = offset
            pushed_rows = _aligned(pushed_ids + 8 * capacity)
            wanted_ids = _aligned(pushed_rows + 4 * capacity * width)
            sent_rows = _aligned(wanted_ids + 8 * capacity)
            offset = _aligned(sent_rows + 4 * capacity * width)
            places.append((pushed_ids, pushed_rows, wanted_ids, sent_rows))
        return places, offset

    @property
    def nbytes(self) -> int:
        return self._offsets()[1]


class RowSlot:
    """Typed views of one row slot: a shared-memory file either side maps (`path`), or, for a pair
    that talks over the cross-node wire (raytf.exchange.wire_link), a buffer in this process that
    the wire fills and sends from (`path` None). See the module for who writes what when."""

    def __init__(self, path: str | None, layout: RowLayout, create: bool) -> None:
        self.path = path
        self.layout = layout
        if path is None:
            raw = aligned_bytes(layout.nbytes)
        else:
            flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0) | getattr(os, "O_NOFOLLOW", 0)
            fd = os.open(path, flags, 0o600)
            try:
                if create:
                    os.ftruncate(fd, layout.nbytes)
                with os.fdopen(os.dup(fd), "r+b") as file:
                    raw = np.memmap(file, dtype=np.uint8, mode="r+", shape=(layout.nbytes,))
            finally:
                os.close(fd)
        places, _ = layout._offsets()
        self.counts = np.ndarray((len(layout.tables), 2), np.int64, raw, 0)  # per table: pushed, wanted
        self.pushed_ids, self.pushed_rows, self.wanted_ids, self.sent_rows = [], [], [], []
        for (capacity, width), (ids_at, rows_at, wanted_at, sent_at) in zip(layout.tables, places):
            self.pushed_ids.append(np.ndarray((capacity,), np.int64, raw, ids_at))
            self.pushed_rows.append(np.ndarray((capacity, width), np.float32, raw, rows_at))
            self.wanted_ids.append(np.ndarray((capacity,), np.int64, raw, wanted_at))
            self.sent_rows.append(np.ndarray((capacity, width), np.float32, raw, sent_at))

    @classmethod
    def in_memory(cls, layout: RowLayout) -> "RowSlot":
        return cls(None, layout, create=True)

    # -- the worker's side ------------------------------------------------------------------
    def write_push(self, rows: Sequence[tuple[np.ndarray, np.ndarray]] | None, wanted: Sequence[np.ndarray]) -> None:
        """Per table, the pushed (local ids, summed rows), or None (a non-finite gradient: nothing
        to apply), and the local ids of the rows wanted back."""
        for k, ids in enumerate(wanted):
            pushed = 0
            if rows is not None:
                local, summed = rows[k]
                pushed = len(local)
                np.copyto(self.pushed_ids[k][:pushed], local)
                np.copyto(self.pushed_rows[k][:pushed], summed)
            np.copyto(self.wanted_ids[k][:len(ids)], ids)
            self.counts[k] = (pushed, len(ids))

    def rows_sent(self) -> tuple[np.ndarray, ...]:
        """Per table, the rows the server sent back (views; valid until the next push)."""
        return tuple(rows[:int(n)] for rows, n in zip(self.sent_rows, self.counts[:, 1]))

    # -- the server's side ------------------------------------------------------------------
    def read_push(self) -> tuple[tuple, tuple]:
        """Per table the pushed (local ids, summed rows), and per table the wanted local ids (views)."""
        counts = [(int(p), int(w)) for p, w in self.counts]
        rows = tuple((ids[:p], values[:p]) for ids, values, (p, _) in zip(self.pushed_ids, self.pushed_rows, counts))
        wanted = tuple(ids[:w] for ids, (_, w) in zip(self.wanted_ids, counts))
        return rows, wanted

    def send(self, rows: Sequence[np.ndarray]) -> None:
        """Per table, the rows asked for, in the order asked."""
        for k, values in enumerate(rows):
            np.copyto(self.sent_rows[k][:len(values)], values)
