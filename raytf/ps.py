"""The parameter-server actor: owns one shard of the variables and applies gradients to it.

How pushes turn into updates is an `Aggregation` policy, so new exchange rules (bounded
staleness, N-of-M quorums) are a new policy, not a new server:

* `SyncAggregation`: a barrier. Gradients for one version are summed as they arrive; when
  `quorum` workers have pushed, their mean is applied once and every waiter is released.
* `AsyncAggregation`: every gradient is applied on arrival; its staleness (versions behind)
  is recorded.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from raytf.config import OptimizerConfig
from raytf.runtime import configure_tensorflow
from raytf.transport import LinkSpec, ServerSlots, shm_available


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
    def __init__(self, server: "ParameterServer", quorum: int) -> None:
        self.server = server
        self.quorum = quorum
        self.pending: list = []  # gradients of the version being built (views of the workers' slots)

    def push(self, worker: int, grad, base_version: int) -> int:
        """Called with the server's lock held; returns the version the caller trains on next."""
        s = self.server
        target = s.version + 1
        self.pending.append(grad)
        if len(self.pending) >= self.quorum:
            s.apply_mean(self.pending, worker)
            for _ in self.pending:
                s.staleness.record(0)
            self.pending = []
            s.cond.notify_all()
        else:
            while s.version < target:
                s.cond.wait()
        return s.version


class AsyncAggregation:
    def __init__(self, server: "ParameterServer") -> None:
        self.server = server

    def push(self, worker: int, grad, base_version: int) -> int:
        s = self.server
        s.staleness.record(s.version - base_version)
        s.apply_mean([grad], worker)
        return s.version


class ParameterServer:
    """A Ray actor (threaded: one thread per waiting worker) holding one shard."""

    def __init__(self, run_id: str, index: int, description: str = "") -> None:
        self.run_id = run_id
        self.index = index
        self.description = description or f"shard {index}"

    def setup(self, initial: np.ndarray, optimizer: OptimizerConfig, mode: str, num_workers: int, threads: int,
              run_name: str) -> None:
        configure_tensorflow(threads)
        from raytf.metrics import ActorMetrics
        from raytf.optimizers import FlatOptimizer

        self.metrics = ActorMetrics(run_name, "ps", self.index)

        self.opt = FlatOptimizer(optimizer, initial)
        self.mode = mode
        self.num_workers = num_workers
        self.version = 0
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.staleness = StalenessStats(observer=self.metrics)
        self.aggregation = SyncAggregation(self, num_workers) if mode == "sync" else AsyncAggregation(self)
        self.slots: ServerSlots | None = None
        self.progress: dict[int, tuple[int, float, float]] = {}  # worker -> (steps done, loss, time)
        self.pushes = 0
        self.bytes_in = 0
        self.seconds_apply = 0.0  # where a server's time goes, for the summary
        self.seconds_publish = 0.0

    def __repr__(self) -> str:
        # The dashboard's Actors view shows this ("Repr"); it is taken when the actor starts.
        return f"ParameterServer(run={self.run_id}, {self.description})"

    # -- set-up -----------------------------------------------------------------------------
    def node_info(self) -> tuple[str, bool]:
        import ray

        return ray.get_runtime_context().get_node_id(), shm_available()

    def open_links(self, shm_workers: list[int]) -> list[LinkSpec]:
        self.slots = ServerSlots(
            self.run_id, self.index, self.opt.size, self.num_workers, set(shm_workers), shared_params=self.mode == "sync"
        )
        return [self.slots.link_spec(w) for w in range(self.num_workers)]

    # -- the exchange ---------------------------------------------------------------------
    def pull(self, worker: int):
        with self.lock:
            self.slots.publish(self.opt.params_view(), self.version, worker)
            return self.version, self.slots.reply(worker)

    def push(self, worker: int, base_version: int, payload, steps_done: int, loss: float | None):
        grad = self.slots.gradient(worker, payload)
        with self.lock:
            version = self.aggregation.push(worker, grad, base_version)
            self.pushes += 1
            self.bytes_in += self.opt.size * 4
            if loss is not None:
                self.progress[worker] = (steps_done, loss, time.time())
            return version, self.slots.reply(worker)

    def apply_mean(self, grads: list, worker: int) -> None:
        """Apply the mean of `grads` and publish the result for `worker` (sync: for everyone)."""
        t0 = time.perf_counter()
        self.opt.apply_mean(grads)
        t1 = time.perf_counter()
        params = self.opt.params_view()
        self.version += 1
        self.slots.publish(params, self.version, worker)
        self.seconds_apply += t1 - t0
        self.metrics.observe("raytf_apply_seconds", t1 - t0)
        self.seconds_publish += time.perf_counter() - t1
        del params  # a live view would make the next update copy the buffer first

    # -- reporting --------------------------------------------------------------------------
    def stats(self) -> dict:
        with self.lock:
            return {
                "version": self.version,
                "pushes": self.pushes,
                "bytes_in": self.bytes_in,
                "progress": dict(self.progress),
                "staleness_mean": self.staleness.mean,
                "staleness_max": self.staleness.max,
                "staleness_histogram": dict(self.staleness.histogram),
                "ms_apply_per_update": 1000 * self.seconds_apply / max(self.version, 1),
                "ms_publish_per_update": 1000 * self.seconds_publish / max(self.version, 1),
            }

    def get_params(self) -> np.ndarray:
        with self.lock:
            return np.array(self.opt.params_view(), copy=True)

    def close(self) -> None:
        if self.slots is not None:
            self.slots.close()
