"""The parameter-server actor: owns one shard of the variables and applies gradients to it.

How pushes turn into updates is an `Aggregation` policy, so new exchange rules (bounded
staleness, N-of-M quorums) are a new policy, not a new server:

* `SyncAggregation`: a barrier. Gradients for one version are collected as they arrive; when
  every live member has pushed, their mean is applied once and every waiter is released. A
  worker that dies is removed (the barrier then counts only the live ones); its restarted
  replacement is admitted from a future round, the same on every server, so all servers keep
  the same version.
* `AsyncAggregation`: every gradient is applied on arrival; its staleness (versions behind)
  is recorded.

Every reply carries a status: "ok", "done" (the server reached its target version: training,
or a stop the driver asked for, is complete) or "rollback" (the driver aborted the exchange to
restore a checkpoint). Servers write their shard of a checkpoint themselves at every
`every_versions` and at the target; the driver writes the manifest once all shards are in.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from raytf.checkpoint import SavedShard, ShardState, step_dir, write_shard
from raytf.config import OptimizerConfig
from raytf.runtime import configure_tensorflow
from raytf.transport import LinkSpec, ServerSlots, shm_available

OK, DONE, ROLLBACK = "ok", "done", "rollback"


@dataclass(frozen=True)
class ServerSettings:
    run_name: str
    mode: str
    num_workers: int
    threads: int
    target_version: int
    updates_per_step: int = 1  # versions per training step: 1 in sync, the worker count in async
    checkpoint_dir: str | None = None
    every_versions: int = 0  # 0: checkpoint only at the target


@dataclass
class StalenessStats:
    applied: int = 0
    total: int = 0
    max: int = 0
    histogram: dict[int, int] = field(default_factory=dict)
    observer: object = None  # the server's metrics, when running in Ray

    def record(self, staleness: int) -> None:
        if self.observer is not None:
            self.observer.observe("raytf_staleness", staleness)
        self.applied += 1
        self.total += staleness
        self.max = max(self.max, staleness)
        self.histogram[staleness] = self.histogram.get(staleness, 0) + 1

    @property
    def mean(self) -> float:
        return self.total / self.applied if self.applied else 0.0


class SyncAggregation:
    def __init__(self, server: "ParameterServer", workers: int) -> None:
        self.server = server
        self.members = set(range(workers))
        self.joining: dict[int, int] = {}  # worker -> first round (version) it must push for
        self.pending: dict[int, object] = {}  # worker -> its gradient for the round being built (None: skipped)

    def push(self, worker: int, grad, base_version: int) -> None:
        """Called with the server's lock held; returns once the round is applied (or stopped)."""
        s = self.server
        target = s.version + 1
        self.pending[worker] = grad
        self._complete_if_ready()
        while s.version < target and not s.stopped():
            s.cond.wait()

    def _required(self) -> set[int]:
        next_round = self.server.version + 1
        return self.members | {w for w, first in self.joining.items() if first <= next_round}

    def _complete_if_ready(self) -> None:
        required = self._required()
        if not required or not required <= self.pending.keys():
            return
        self.members = required
        self.joining = {w: first for w, first in self.joining.items() if w not in required}
        grads = [g for g in self.pending.values() if g is not None]
        self.pending = {}
        self.server.advance(grads, worker=None)
        for _ in grads:
            self.server.staleness.record(0)
        self.server.cond.notify_all()

    def remove(self, worker: int) -> None:
        """`worker` died: stop waiting for it (its gradient of this round is dropped too)."""
        self.members.discard(worker)
        self.joining.pop(worker, None)
        self.pending.pop(worker, None)
        if self.pending:
            self._complete_if_ready()

    def admit(self, worker: int, first_round: int) -> bool:
        """Make `worker` a member from round `first_round` on, if that round has not started yet."""
        if self.server.version >= first_round:
            return False
        self.joining[worker] = first_round
        return True


class AsyncAggregation:
    def __init__(self, server: "ParameterServer") -> None:
        self.server = server

    def push(self, worker: int, grad, base_version: int) -> None:
        s = self.server
        if grad is not None:
            s.staleness.record(s.version - base_version)
        s.advance([grad] if grad is not None else [], worker)

    def remove(self, worker: int) -> None:
        pass  # nobody waits for anybody

    def admit(self, worker: int, first_round: int) -> bool:
        return True


class ParameterServer:
    """A Ray actor (threaded: one thread per waiting worker) holding one shard."""

    def __init__(self, run_id: str, index: int, description: str = "") -> None:
        self.run_id = run_id
        self.index = index
        self.description = description or f"shard {index}"
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.aborted = False
        self.ready = False  # False in a fresh (or restarted) process until setup
        self.slots: ServerSlots | None = None
        self.nonfinite_skipped = 0

    def setup(self, state: ShardState, optimizer: OptimizerConfig, settings: ServerSettings) -> dict:
        """Start (or restart, after a rollback) from `state`. Returns where its start-up time went."""
        from raytf.startup import ActorTimer

        timer = ActorTimer()
        with timer.span("actor_imports"):
            configure_tensorflow(settings.threads)
            from raytf.metrics import ActorMetrics
            from raytf.optimizers import FlatOptimizer

        with timer.span("actor_model_build"), self.lock:
            if self.slots is not None:
                self.slots.close()
                self.slots = None
            if not self.ready:
                self.metrics = ActorMetrics(settings.run_name, "ps", self.index)
            self.settings = settings
            self.opt = FlatOptimizer(optimizer, state.params, state.slots, state.iterations)
            self.version = state.version
            self.target = settings.target_version
            self.aborted = False
            self.staleness = StalenessStats(observer=self.metrics)
            self.aggregation = (SyncAggregation(self, settings.num_workers) if settings.mode == "sync"
                                else AsyncAggregation(self))
            self.saved: dict[int, SavedShard] = {}
            self.progress: dict[int, tuple[int, float, float]] = {}  # worker -> (steps done, loss, time)
            self.pushes = 0
            self.bytes_in = 0
            self.seconds_apply = 0.0  # where a server's time goes, for the summary
            self.seconds_publish = 0.0
            self.updates = 0
            self.ready = True
        return {"timings": timer.spans}

    def __repr__(self) -> str:
        # The dashboard's Actors view shows this ("Repr"); it is taken when the actor starts.
        return f"ParameterServer(run={self.run_id}, {self.description})"

    # -- set-up -----------------------------------------------------------------------------
    def node_info(self) -> tuple[str, bool]:
        import ray

        return ray.get_runtime_context().get_node_id(), shm_available()

    def process_id(self) -> int:
        import os

        return os.getpid()

    def is_ready(self) -> bool:
        return self.ready

    def open_links(self, shm_workers: list[int]) -> list[LinkSpec]:
        n = self.settings.num_workers
        self.slots = ServerSlots(self.run_id, self.index, self.opt.size, n, set(shm_workers),
                                 shared_params=self.settings.mode == "sync")
        return [self.slots.link_spec(w) for w in range(n)]

    # -- control by the driver --------------------------------------------------------------
    def abort(self) -> None:
        """Release every waiting call with ROLLBACK (a checkpoint is about to be restored)."""
        with self.lock:
            self.aborted = True
            self.cond.notify_all()

    def set_target(self, version: int) -> bool:
        """Stop at `version` (a step boundary the driver chose); False if already past it."""
        with self.lock:
            if self.version > version:
                return False
            self.target = min(self.target, version)
            if self.version == self.target and self.version not in self.saved:
                self._save()
            self.cond.notify_all()
            return True

    def remove_worker(self, worker: int) -> None:
        with self.lock:
            self.aggregation.remove(worker)

    def admit(self, worker: int, first_round: int) -> bool:
        with self.lock:
            return self.aggregation.admit(worker, first_round)

    def current_version(self) -> int:
        with self.lock:
            return self.version

    def stopped(self) -> bool:
        return self.aborted or self.version >= self.target

    # -- the exchange ---------------------------------------------------------------------
    def pull(self, worker: int, at_version: int | None = None):
        """The parameters, once the version is at least `at_version` (a rejoining worker's start)."""
        with self.lock:
            if at_version is not None:
                while self.version < min(at_version, self.target) and not self.aborted:
                    self.cond.wait()
            return self._reply(worker)

    def push(self, worker: int, base_version: int, payload, steps_done: int, loss: float | None, finite: bool = True):
        grad = self.slots.gradient(worker, payload) if finite else None
        with self.lock:
            if not self.stopped():
                if not finite:
                    self.nonfinite_skipped += 1
                self.aggregation.push(worker, grad, base_version)
                self.pushes += 1
                self.bytes_in += self.opt.size * 4
            if loss is not None:
                self.progress[worker] = (steps_done, loss, time.time())
            return self._reply(worker)

    def _reply(self, worker: int):
        if self.aborted:
            return ROLLBACK, self.version, None
        # Async, or a stop between rounds: publish what is current for this worker.
        params = self.opt.params_view()
        self.slots.publish(params, self.version, worker)
        del params
        return (DONE if self.version >= self.target else OK), self.version, self.slots.reply(worker)

    def advance(self, grads: list, worker: int | None) -> None:
        """Apply the mean of `grads` (none: every gradient of the round was skipped) as the next
        version, publish it (sync: for everyone) and checkpoint when due."""
        t0 = time.perf_counter()
        if grads:
            self.opt.apply_mean(grads)
            self.updates += 1
        t1 = time.perf_counter()
        params = self.opt.params_view()
        self.version += 1
        self.slots.publish(params, self.version, worker)
        del params  # a live view would make the next update copy the buffer first
        self.seconds_apply += t1 - t0
        self.metrics.observe("raytf_apply_seconds", t1 - t0)
        self.seconds_publish += time.perf_counter() - t1
        every = self.settings.every_versions
        if self.version == self.target or (every and self.version % every == 0):
            self._save()

    def _save(self) -> None:
        if not self.settings.checkpoint_dir:
            return
        params, slots, iterations = self.opt.state()
        directory = step_dir(Path(self.settings.checkpoint_dir), self.version // self.settings.updates_per_step)
        self.saved[self.version] = write_shard(directory, self.index, ShardState(params, slots, iterations, self.version))
        for old in sorted(self.saved)[:-8]:  # the driver reads them every second; keep a few
            del self.saved[old]

    # -- reporting --------------------------------------------------------------------------
    def stats(self) -> dict:
        """Progress, checkpoint shards written (version -> SavedShard) and timings; a restarted
        process that was not set up again says only {"ready": False}."""
        with self.lock:
            if not self.ready:
                return {"ready": False}
            return {
                "ready": True,
                "saved": dict(self.saved),
                "version": self.version,
                "target": self.target,
                "pushes": self.pushes,
                "bytes_in": self.bytes_in,
                "progress": dict(self.progress),
                "nonfinite_skipped": self.nonfinite_skipped,
                "staleness_mean": self.staleness.mean,
                "staleness_max": self.staleness.max,
                "staleness_histogram": dict(self.staleness.histogram),
                "ms_apply_per_update": 1000 * self.seconds_apply / max(self.updates, 1),
                "ms_publish_per_update": 1000 * self.seconds_publish / max(self.updates, 1),
            }

    def get_params(self) -> np.ndarray:
        with self.lock:
            return np.array(self.opt.params_view(), copy=True)

    def close(self) -> None:
        if self.slots is not None:
            self.slots.close()
