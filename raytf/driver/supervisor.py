"""The driver's side of a running training: watch it, keep its checkpoints, recover from losses.

* A worker whose process dies is removed from every server's barrier at once (its peers go on),
  and Ray restarts the process; it then sets up again and is admitted back (`Worker.rejoin`).
* A parameter server that dies has lost its shard: every server is aborted and restored from
  the newest complete checkpoint (all to the same step), and the workers start again from it.
* Servers write their checkpoint shards themselves; the supervisor writes a checkpoint's
  manifest once every shard of it is in, then prunes old checkpoints.
* A stop request (Ctrl-C, SIGTERM) sets one target version on every server: training ends at
  that step boundary and the servers write the final checkpoint there.
* Every death of an actor is recorded (`restarts` in the summary) and announced once: seen as a
  failed call, or, where the driver had no call pending (a worker whose work was done), read from
  Ray's restart count of the actor, during the run and once more at its end.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from raytf.config import TrainConfig
from raytf.driver.actors import RunActors, wire
from raytf.driver.checkpoints import (
    Checkpoint,
    build_manifest,
    discard_after,
    latest,
    load,
    prune,
    write_manifest,
    write_non_trainable,
)
from raytf.driver.groups import BUSY, RESTART_TIMEOUT, Lost
from raytf.driver.restarts import RESTARTING, RESTORED, RESTORED_FROM_CHECKPOINT, RestartLog
from raytf.exchange.messages import ServerStats, Status, WorkerResult
from raytf.exchange.policies import policy_for
from raytf.exchange.server import ServerSettings
from raytf.exchange.shard_state import ShardState, step_dir
from raytf.exchange.sharding import ShardPlan


class Supervisor:
    def __init__(self, config: TrainConfig, run_id: str, plan: ShardPlan, actors: RunActors, settings: ServerSettings,
                 start: list[ShardState], reporters: list, on_event: Callable[[str], None], validator=None) -> None:
        self.config = config
        self.validator = validator  # raytf.driver.validation.Validator: evaluates checkpoints of the steps due
        self.run_id = run_id
        self.plan = plan
        self.actors = actors
        self.servers, self.workers = actors.servers, actors.workers
        self.settings = settings
        self.start_states = start  # restored when a server dies before the first checkpoint
        self.reporters = reporters
        self.on_event = on_event
        self.ups = settings.updates_per_step
        self.root = Path(settings.checkpoint_dir) if settings.checkpoint_dir else None
        self.start_step = start[0].version // self.ups
        self.results: dict[int, WorkerResult] = {}  # worker -> its last finished run
        self.first_steps: dict[int, dict] = {}  # worker -> its first run's first pull and step (start-up)
        self.steps_done = [0] * len(actors.workers)  # gradients each worker computed, over all its runs
        self.log = RestartLog(len(actors.workers), len(actors.servers), config.distribution.max_restarts, on_event)
        self.rollbacks: list[dict] = []
        self.manifests: set[int] = set()  # steps whose manifest this run wrote
        self.checkpoint_step: int | None = self.start_step if start[0].version else None
        self.rejoining: dict[int, float] = {}  # restarted worker -> deadline for its process to come back
        self.stop_requested = threading.Event()
        self.stop_version: int | None = None
        self.stats: list[ServerStats] | None = None
        self.policy = policy_for(config.distribution)
        self.nonfinite_reported = 0
        self.reported_step: int | None = None
        self.started = time.perf_counter()

    @property
    def restarts(self) -> list[dict]:
        """For the summary: one record per lost actor (`raytf.driver.restarts`)."""
        return self.log.records

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        """Train until every worker is done (or a requested stop is reached)."""
        self._start_runs(range(len(self.workers)))
        while self.workers.busy:
            if self.stop_requested.is_set() and self.stop_version is None:
                self._stop_at_boundary()
            lost_server = False
            for worker, outcome in self.workers.finished(timeout=self.config.log_every_seconds):
                if isinstance(outcome, Lost):
                    if self._still_coming_back(worker, outcome):
                        time.sleep(0.2)  # Ray is still bringing its new process up; ask again
                        self._rejoin(worker)
                    else:
                        self._worker_lost(worker, outcome)
                    continue
                self._record(worker, outcome)
                lost_server |= outcome.status is not Status.DONE
            # A worker with no call pending (its run ended) cannot fail a call: ask Ray whether it died.
            self._seen_by_ray("worker", [i for i in range(len(self.workers)) if i not in self.workers.calls],
                              self.workers.ray_states())
            if not self._poll() or lost_server:
                self._roll_back()
                continue
            self._write_manifests()
            self._report()
        if self._poll():
            self._write_manifests()

    @property
    def target_version(self) -> int:
        return self.stop_version if self.stop_version is not None else self.settings.target_version

    @property
    def interrupted(self) -> bool:
        return self.stop_version is not None and self.stop_version < self.settings.target_version

    def step(self) -> int:
        return self.stats[0].version // self.ups if self.stats else self.start_step

    def _start_runs(self, which) -> None:
        for i in which:
            self.workers.start_run(i, self.target_version)

    def _record(self, worker: int, result: WorkerResult) -> None:
        if self.rejoining.pop(worker, None) is not None:
            self._relinked(worker)
            self.log.rejoined(worker, self.step())
        self.steps_done[worker] += result.steps
        self.first_steps.setdefault(worker, result.startup)
        if result.status is Status.DONE:
            self.results[worker] = result

    def _poll(self) -> bool:
        """Read every server's statistics; False when a server is gone or was restarted."""
        stats = self.servers.statistics()
        if stats is BUSY:
            return True  # a large checkpoint; ask again next time
        if stats is None:
            return False
        self.stats = stats
        return True

    # -- worker loss ---------------------------------------------------------------------------
    def _worker_lost(self, worker: int, lost: Lost) -> None:
        step = self.step()
        # Its call was pending, so its work was not done: it rejoins (even if the others have trained every
        # step meanwhile: Ray takes a second or two to fail the call, and the others do not wait).
        self.log.lost("worker", worker, step, RESTARTING)
        self.on_event(f"Worker {worker} was lost near step {step} ({lost.error}); the others go on while Ray "
                      f"restarts it (restart {self.log.counts['worker'][worker]} of at most "
                      f"{self.config.distribution.max_restarts}).")
        self.servers.forget_worker(worker)
        self.rejoining[worker] = time.monotonic() + RESTART_TIMEOUT
        self._rejoin(worker)

    def _still_coming_back(self, worker: int, lost: Lost) -> bool:
        """Whether a failed rejoin call means only that the worker's restart is under way (Ray says it
        is restarting, or the call went to the process that died on a preempted node, a death raytf
        counted already)."""
        return worker in self.rejoining and time.monotonic() < self.rejoining[worker] and lost.restarting

    def _rejoin(self, worker: int) -> None:
        self.workers.start_rejoin(worker, self.config, self.plan, self.servers, self.target_version)

    def _relinked(self, worker: int) -> None:
        """Record how a worker that rejoined reaches the servers now (the summary shows it)."""
        kinds = self.workers.link_kinds(worker)
        if kinds is not None:  # else lost again: its next rejoin records it
            self.actors.link_kinds[worker] = kinds

    # -- server loss ---------------------------------------------------------------------------
    def _roll_back(self) -> None:
        at_step = self.step()
        self.servers.abort()  # releases every waiting exchange call with "rollback"
        needs_setup = []
        for worker, outcome in self.workers.drain():
            if isinstance(outcome, Lost):
                needs_setup.append(worker)
                self.rejoining.pop(worker, None)  # it is set up below with the others, not rejoined
                self.log.lost("worker", worker, at_step, RESTORED)
            else:
                self._record(worker, outcome)
        needs_setup += self.log.take_bare(needs_setup)
        lost = self.servers.restarted(self.config.distribution.max_restarts)
        for j in lost:
            self.log.lost("ps", j, at_step, RESTORED_FROM_CHECKPOINT)
        checkpoint = latest(self.root) if self.root is not None else None
        if checkpoint is not None:
            states = load(checkpoint, self.plan, self.config.optimizer.name, self.ups)
            to_step = checkpoint.step
            discard_after(self.root, to_step)
            self.manifests = {s for s in self.manifests if s <= to_step}
        else:
            states, to_step = self.start_states, self.start_step
        self.rollbacks.append({"servers_lost": lost, "at_step": at_step, "to_step": to_step})
        if lost or not needs_setup:
            self.on_event(f"Parameter server{'s' if len(lost) != 1 else ''} {', '.join(map(str, lost)) or '?'} lost near "
                          f"step {at_step}; every server rolls back to the checkpoint of step {to_step} and training goes on.")
        else:  # a worker that carried its node's sum (raytf.exchange.local_reduce): the sum went with it
            self.on_event(f"Worker {', '.join(map(str, needs_setup))} was lost near step {at_step} while it summed the "
                          f"gradients of the workers on its node (distribution.local_reduce); every server rolls back "
                          f"to the checkpoint of step {to_step} and training goes on.")
        self.stats = None
        if self.stop_version is not None:
            # A stop was under way: end at the restored step, whose checkpoint exists.
            self.stop_version = to_step * self.ups
        restored = replace(self.settings, target_version=self.target_version)
        self.workers.wait_back(needs_setup)
        (self.servers.set_up(states, self.config.optimizer, restored)
         + self.workers.set_up(self.config, self.plan, needs_setup)).join("Restoring after a lost parameter server")
        wire(self.actors, self.config, self.plan)
        self._start_runs(range(len(self.workers)))

    # -- deaths seen only by Ray ---------------------------------------------------------------
    def _seen_by_ray(self, role: str, which: list[int], states: list[tuple[int, str] | None]) -> dict[tuple[str, int], str]:
        """Record the deaths Ray knows of these actors and raytf has not seen; returns each one's state."""
        found = {}
        for index in which:
            if states[index] is None:
                continue
            restarts, state = states[index]
            found[(role, index)] = state
            self.log.seen_by_ray(role, index, restarts, state, self.step())
        return found

    def finish(self) -> None:
        """Once the run's results are collected (before the actors are released): record the deaths
        of any actor that raytf has not seen, and give every record its outcome."""
        states = self._seen_by_ray("worker", list(range(len(self.workers))), self.workers.ray_states())
        states.update(self._seen_by_ray("ps", list(range(len(self.servers))), self.servers.ray_states()))
        self.log.settle_all(states)

    # -- stopping ------------------------------------------------------------------------------
    def _stop_at_boundary(self) -> None:
        """Ask every server to stop at the same, next reachable version (a step boundary)."""
        versions = [s.version for s in self.stats] if self.stats else [0]
        candidate = math.ceil((max(versions) + 1) / self.ups) * self.ups
        while candidate < self.settings.target_version:
            if self.servers.stop_at(candidate):
                break
            candidate += self.ups  # one of them moved past it meanwhile
        self.stop_version = min(candidate, self.settings.target_version)
        if self.interrupted:
            self.on_event(f"Stopping at step {self.stop_version // self.ups} to write a checkpoint "
                          "(press Ctrl-C again to quit at once, without it).")

    # -- checkpoints and progress --------------------------------------------------------------
    def _write_manifests(self) -> None:
        if self.root is None or not self.stats:
            return
        common = set.intersection(*(set(s.saved) for s in self.stats))
        for version in sorted(common):
            step = version // self.ups
            if step in self.manifests:
                continue
            saved = [s.saved[version] for s in self.stats]
            state = self.workers.non_trainable()  # the workers' statistics of this moment, averaged
            if state:
                write_non_trainable(step_dir(self.root, step), state)
            manifest = build_manifest(step, self.plan, saved, mode=self.config.distribution.mode, updates_per_step=self.ups,
                                      optimizer=self.config.optimizer.name, run_id=self.run_id)
            write_manifest(step_dir(self.root, step), manifest)
            self.manifests.add(step)
            self.checkpoint_step = step
            if self.validator is not None:
                self.validator.checkpointed(step, Checkpoint(step_dir(self.root, step), manifest))
            prune(self.root, self.config.checkpoint.keep, also=self.validator.kept_steps() if self.validator else ())

    def report_validation(self) -> None:
        """A last progress update once the validations under way at the end of training are in."""
        self.reported_step = None
        self._report()

    def _report(self) -> None:
        if self.validator is not None:
            self.validator.publish()
        if not self.stats:
            return
        skipped = sum(s.exchange.nonfinite_skipped for s in self.stats)
        if skipped > self.nonfinite_reported:
            self.on_event(f"Warning: {skipped} non-finite gradient push{'es' if skipped != 1 else ''} skipped so far "
                          f"(latest near step {self.step()}); set on_nonfinite: abort to stop instead.")
            self.nonfinite_reported = skipped
        progress = self.stats[0].exchange.progress
        if not progress:
            return
        from raytf.observe.progress import Snapshot

        step = self.step()
        if step == self.reported_step:
            return  # nothing new to show (a slow step, or the workers finishing one after another)
        self.reported_step = step
        elapsed = time.perf_counter() - self.started
        samples = (step - self.start_step) * self.config.batch_size * self.config.distribution.workers
        snapshot = Snapshot(
            step=step,
            total=self.config.steps,
            loss=float(np.mean([entry[1] for entry in progress.values()])),
            samples_per_second=samples / elapsed if elapsed > 0 else 0.0,
            elapsed=elapsed,
            staleness_mean=self.stats[0].exchange.staleness.mean if self.policy.reports_staleness else None,
            rows_live=_rows_live(self.stats),
            epoch=_epoch(step, self.config),
            evaluation=self.validator.latest.brief(self.config.checkpoint.keep_best)
            if self.validator is not None and self.validator.latest is not None else None,
        )
        for reporter in self.reporters:
            reporter.update(snapshot)


def _epoch(step: int, config) -> tuple[int, int] | None:
    """(the epoch under way, epochs) after `step` steps; None for a run of steps."""
    if config.epochs is None:
        return None
    return min(step // config.steps_per_epoch + 1, config.epochs), config.epochs


def _rows_live(stats) -> int | None:
    """Rows of the DynamicEmbedding tables over all servers; None for a run without one."""
    counts = [d for s in stats for d in s.dynamic if d]
    return sum(d["live"] for d in counts) if counts else None
