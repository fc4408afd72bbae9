"""The exchange's typed messages: what workers send, what servers answer, what both report.

Plain frozen dataclasses of numbers and strings (and an opaque transport payload), so they pickle
between Ray actors and the driver unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Status(str, Enum):
    """Where an exchange call left the worker."""

    OK = "ok"  # go on training
    DONE = "done"  # the server reached its target version (the end, or a stop the driver asked for)
    ROLLBACK = "rollback"  # the driver aborted the exchange to restore a checkpoint
    SERVER_LOST = "server_lost"  # a server died under the worker; the driver restores and restarts the run


class ServerNotReady(Exception):
    """A worker called a server whose process Ray restarted and the driver has not set up again
    (it is rolling back): for the worker, as good as a lost server."""


@dataclass(frozen=True)
class Push:
    """One worker's gradient for one server's shard (the gradient itself travels by the transport)."""

    worker: int
    base_version: int  # the server version of the parameters the gradient was computed on
    steps_done: int = 0  # gradients the worker computed so far, this one included
    loss: float | None = None  # reported to one server only (progress)
    finite: bool = True  # False: NaN/Inf; it counts where a policy counts pushes, never in a mean


@dataclass(frozen=True)
class Outcome:
    """What the exchange decided about a push or a pull (before the transport adds the parameters)."""

    status: Status
    version: int  # the server version the answer's parameters are at
    dropped: bool = False  # the gradient came too late for its round and was not applied (backup workers)
    waited: float = 0.0  # seconds the call was held back (the barrier or the staleness bound)


@dataclass(frozen=True)
class Reply:
    """A server's answer to a worker: the outcome plus how to get the parameters."""

    status: Status
    version: int
    payload: Any = None  # shared memory: which buffer of the worker's slot; object store: [the reference]
    dropped: bool = False
    rows: tuple | None = None  # per sparse table: the rows the worker asked for (raytf.exchange.tables)


@dataclass(frozen=True)
class StalenessStats:
    applied: int = 0
    mean: float = 0.0
    max: int = 0
    histogram: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ExchangeStats:
    """What the exchange of one server counted since it (re)started."""

    version: int
    target: int
    pushes: int  # gradients received (applied, dropped or non-finite)
    applied: dict[int, int]  # worker -> its gradients in an applied update
    dropped: dict[int, int]  # worker -> its gradients that came too late for their round
    nonfinite_skipped: int
    updates: int  # versions produced (one per applied update)
    mean_update_size: float  # gradients averaged into one update (sync: the round size)
    staleness: StalenessStats
    clock_skew_max: int  # bounded staleness: the largest lead of a worker over the slowest one
    waited: dict[int, float]  # worker -> seconds its pushes were held back (barrier or bound)
    progress: dict[int, tuple[int, float, float]]  # worker -> (steps done, loss, time)
    members: tuple[int, ...]  # the live workers the exchange counts on


@dataclass(frozen=True)
class ServerStats:
    """One parameter server's report: its exchange, its checkpoint shards and where its time went."""

    ready: bool
    exchange: ExchangeStats | None = None
    saved: dict[int, Any] = field(default_factory=dict)  # version -> SavedShard
    ms_apply_per_update: float = 0.0
    ms_publish_per_update: float = 0.0
    peak_rss: int = 0  # the process's peak resident memory, bytes
    dynamic: tuple = ()  # per sparse table: a dynamic table's counts (rows created, evicted, live...), or None
    cpu_ms_per_update: float = 0.0  # the process's CPU (every thread, user and system) per update after the warm-up
    cpu_sys_ms_per_update: float = 0.0  # of which in the kernel

    @property
    def version(self) -> int:
        return self.exchange.version if self.exchange else 0


@dataclass(frozen=True)
class WorkerResult:
    """How one run of a worker ended and what it measured."""

    index: int
    status: Status
    steps: int  # gradients computed in this run
    final_loss: float
    measured_steps: int
    samples_per_second: float
    ms_compute_per_step: float
    ms_exchange_per_step: float
    startup: dict[str, tuple[float, float]] = field(default_factory=dict)  # first pull and step (wall clock)
    bytes_pushed: int = 0  # gradients sent: dense buffers, and sparse ids with their rows
    bytes_pulled: int = 0  # parameters loaded: dense buffers, and the rows asked for
    unique_ids: int = 0  # distinct sparse ids of its batches (all tables), over the run
    peak_rss: int = 0  # the process's peak resident memory, bytes
    wire_sent: int = 0  # bytes its wire links sent over the run (after compression, with frame headers)
    wire_received: int = 0  # and received
    cpu_ms_per_step: float = 0.0  # the process's CPU (every thread, user and system) per step after the warm-up
    cpu_sys_ms_per_step: float = 0.0  # of which in the kernel (socket copies, shared memory faults)


@dataclass
class Ticket:
    """A push's claim, kept by the policy: the round it waits for, or that it was dropped."""

    worker: int
    round: int | None = None  # released once the server's version reaches it (sync)
    dropped: bool = False
