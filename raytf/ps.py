"""The parameter-server actor: one shard of the variables, and the exchange that updates it.

What a push means (barrier, async, bounded staleness, backup workers) is the run's consistency
policy, in the `Exchange` state machine of `raytf.exchange`; this actor gives that state machine
its backend: the shard as a flat TensorFlow variable with fused `ResourceApply*` updates
(`raytf.optimizers`), the transport that publishes the parameters (`raytf.transport`), and the
server's own checkpoint shards (the driver writes a checkpoint's manifest once all are in).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raytf.checkpoint import SavedShard, ShardState, step_dir, write_shard
from raytf.config import DistributionConfig, OptimizerConfig
from raytf.exchange import Exchange, Push, Reply, ServerStats, Status, policy_for
from raytf.runtime import configure_tensorflow
from raytf.transport import LinkSpec, ServerSlots, shm_available


@dataclass(frozen=True)
class ServerSettings:
    run_name: str
    distribution: DistributionConfig  # the workers and the consistency policy
    threads: int
    target_version: int
    updates_per_step: int = 1  # server versions per training step (the policy's)
    checkpoint_dir: str | None = None
    every_versions: int = 0  # 0: checkpoint only at the target


class ParameterServer:
    """A Ray actor (threaded: one thread per waiting worker) holding one shard."""

    def __init__(self, run_id: str, index: int, description: str = "") -> None:
        self.run_id = run_id
        self.index = index
        self.description = description or f"shard {index}"
        self.ready = False  # False in a fresh (or restarted) process until setup
        self.slots: ServerSlots | None = None
        self.exchange: Exchange | None = None
        self._setup_lock = threading.Lock()

    def __repr__(self) -> str:
        # The dashboard's Actors view shows this ("Repr"); it is taken when the actor starts.
        return f"ParameterServer(run={self.run_id}, {self.description})"

    # -- set-up -----------------------------------------------------------------------------
    def setup(self, state: ShardState, optimizer: OptimizerConfig, settings: ServerSettings) -> dict:
        """Start (or restart, after a rollback) from `state`. Returns where its start-up time went."""
        from raytf.startup import ActorTimer

        timer = ActorTimer()
        with timer.span("actor_imports"):
            configure_tensorflow(settings.threads)
            from raytf.metrics import ActorMetrics
            from raytf.optimizers import FlatOptimizer

        with timer.span("actor_model_build"), self._setup_lock:
            if self.slots is not None:
                self.slots.close()
                self.slots = None
            if not self.ready:
                self.metrics = ActorMetrics(settings.run_name, "ps", self.index)
            self.settings = settings
            self.policy = policy_for(settings.distribution)
            self.opt = FlatOptimizer(optimizer, state.params, state.slots, state.iterations)
            self.saved: dict[int, SavedShard] = {}
            self.seconds_apply = 0.0  # where a server's time goes, for the summary
            self.seconds_publish = 0.0
            self.exchange = Exchange(self.policy, self, workers=settings.distribution.workers,
                                     target=settings.target_version, version=state.version,
                                     every_versions=settings.every_versions, observer=self.metrics)
            self.ready = True
        return {"timings": timer.spans}

    def node_info(self) -> tuple[str, bool]:
        import ray

        return ray.get_runtime_context().get_node_id(), shm_available()

    def process_id(self) -> int:
        return os.getpid()

    def is_ready(self) -> bool:
        return self.ready

    def open_links(self, shm_workers: list[int]) -> list[LinkSpec]:
        n = self.settings.distribution.workers
        self.slots = ServerSlots(self.run_id, self.index, self.opt.size, set(shm_workers),
                                 shared_params=self.policy.shared_parameter_slot)
        return [self.slots.link_spec(w) for w in range(n)]

    # -- the exchange's backend (called with the exchange's lock held) ----------------------
    def apply(self, grads: list) -> None:
        started = time.perf_counter()
        self.opt.apply_mean(grads)
        seconds = time.perf_counter() - started
        self.seconds_apply += seconds
        self.metrics.observe("raytf_apply_seconds", seconds)

    def publish(self, version: int, worker: int) -> None:
        started = time.perf_counter()
        params = self.opt.params_view()
        self.slots.publish(params, version, worker)
        del params  # a live view would make the next update copy the buffer first
        self.seconds_publish += time.perf_counter() - started

    def checkpoint(self, version: int) -> None:
        if not self.settings.checkpoint_dir:
            return
        params, slots, iterations = self.opt.state()
        directory = step_dir(Path(self.settings.checkpoint_dir), version // self.settings.updates_per_step)
        self.saved[version] = write_shard(directory, self.index, ShardState(params, slots, iterations, version))
        for old in sorted(self.saved)[:-8]:  # the driver reads them every second; keep a few
            del self.saved[old]

    # -- the workers' calls -----------------------------------------------------------------
    def pull(self, worker: int, at_version: int | None = None) -> Reply:
        """The parameters, once the version is at least `at_version` (a rejoining worker's start)."""
        return self._reply(worker, self.exchange.pull(worker, at_version))

    def push(self, worker: int, base_version: int, payload, steps_done: int, loss: float | None,
             finite: bool = True) -> Reply:
        grad = self.slots.gradient(worker, payload) if finite else None
        outcome = self.exchange.push(Push(worker, base_version, steps_done, loss, finite), grad)
        return self._reply(worker, outcome)

    def _reply(self, worker: int, outcome) -> Reply:
        payload = None if outcome.status is Status.ROLLBACK else self.slots.reply(worker)
        return Reply(outcome.status, outcome.version, payload, outcome.dropped)

    # -- control by the driver --------------------------------------------------------------
    def abort(self) -> None:
        """Release every waiting call with ROLLBACK (a checkpoint is about to be restored)."""
        self.exchange.abort()

    def set_target(self, version: int) -> bool:
        """Stop at `version` (a step boundary the driver chose); False if already past it."""
        return self.exchange.set_target(version)

    def remove_worker(self, worker: int) -> None:
        self.exchange.remove(worker)

    def admit(self, worker: int, first_round: int) -> bool:
        return self.exchange.admit(worker, first_round)

    def current_version(self) -> int:
        return self.exchange.current_version()

    # -- reporting --------------------------------------------------------------------------
    def stats(self) -> ServerStats:
        """The exchange's counts, checkpoint shards written and timings; a restarted process that
        was not set up again reports only that it is not ready."""
        if not self.ready:
            return ServerStats(ready=False)
        exchange = self.exchange.stats()
        with self.exchange.lock:  # the backend's counters move under the exchange's lock
            updates = max(exchange.updates, 1)
            received = exchange.pushes - exchange.nonfinite_skipped  # gradients that came with a payload
            return ServerStats(ready=True, exchange=exchange, saved=dict(self.saved), bytes_in=received * self.opt.size * 4,
                               ms_apply_per_update=1000 * self.seconds_apply / updates,
                               ms_publish_per_update=1000 * self.seconds_publish / updates)

    def get_params(self) -> np.ndarray:
        with self.exchange.lock:
            return np.array(self.opt.params_view(), copy=True)

    def close(self) -> None:
        if self.slots is not None:
            self.slots.close()
