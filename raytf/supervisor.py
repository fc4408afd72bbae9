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

import contextlib
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from raytf.actors import RunActors, actor_state, get, setup_servers, setup_workers, wire
from raytf.checkpoint import ShardState, build_manifest, discard_after, latest, load, prune, step_dir, write_manifest
from raytf.config import TrainConfig
from raytf.errors import TrainingError
from raytf.exchange import ServerStats, Status, WorkerResult
from raytf.ps import ServerSettings
from raytf.sharding import ShardPlan

CALL_TIMEOUT = 30.0  # seconds for a control call to a live actor
RESTART_TIMEOUT = 300.0  # seconds for Ray to bring a lost actor back (a new process imports TensorFlow)

# What became of a lost actor: the "recovery" of its record in the summary's `restarts`.
REJOINED = "restarted and rejoined"
AFTER_WORK = "restarted after its work was done"
RESTORED = "restarted, restored"
RESTORED_FROM_CHECKPOINT = "restarted, restored from checkpoint"
LOST_AGAIN = "restarted, lost again before it rejoined"
ENDED = "restarting when the run ended"
GAVE_UP = "gave up"  # Ray will not restart it (its max_restarts are used up)
# Not known yet, while Ray brings the process back; `settle` replaces them before the summary.
RESTARTING = "restarting"
RESTARTING_AFTER_WORK = "restarting after its work was done"
PENDING = (RESTARTING, RESTARTING_AFTER_WORK)


def deaths_known_to_ray(restarts: int, state: str) -> int:
    """Deaths of an actor that Ray knows of: one before each restart, and one more for an actor it
    gave up on (DEAD)."""
    return restarts + (state == "DEAD")


def unrecorded(records: list[dict], role: str, index: int, restarts: int, state: str) -> int:
    """How many deaths of this actor Ray knows of and `records` lack. Ray's count can also lag behind
    raytf's (a failed call is seen before the GCS counts the restart, and a death on a preempted node
    may not count): then there is nothing to add."""
    recorded = sum(1 for r in records if r["role"] == role and r["index"] == index)
    return max(deaths_known_to_ray(restarts, state) - recorded, 0)


def came_back(recovery: str) -> str:
    """The outcome of a pending record once the actor is known to have come back (it died again
    after, or it was set up anew)."""
    return AFTER_WORK if recovery == RESTARTING_AFTER_WORK else LOST_AGAIN if recovery == RESTARTING else recovery


def settle(records: list[dict], role: str, index: int, state: str) -> None:
    """At the end of the run: each pending record of this actor gets its outcome. All but its last
    were followed by another death, so the actor had come back; the last one depends on what Ray
    says now (`state`)."""
    pending = [r for r in records if r["role"] == role and r["index"] == index and r["recovery"] in PENDING]
    for record in pending[:-1]:
        record["recovery"] = came_back(record["recovery"])
    if pending:
        last = pending[-1]
        if state == "DEAD":
            last["recovery"] = GAVE_UP
        elif state == "ALIVE" and last["recovery"] == RESTARTING_AFTER_WORK:
            last["recovery"] = AFTER_WORK
        else:
            last["recovery"] = ENDED


class Supervisor:
    def __init__(self, config: TrainConfig, run_id: str, plan: ShardPlan, actors: RunActors, settings: ServerSettings,
                 start: list[ShardState], reporters: list, on_event: Callable[[str], None]) -> None:
        self.config = config
        self.run_id = run_id
        self.plan = plan
        self.actors = actors
        self.settings = settings
        self.start_states = start  # restored when a server dies before the first checkpoint
        self.reporters = reporters
        self.on_event = on_event
        self.ups = settings.updates_per_step
        self.root = Path(settings.checkpoint_dir) if settings.checkpoint_dir else None
        self.start_step = start[0].version // self.ups
        self.runs: dict[int, Any] = {}  # worker -> ref of its running `run`
        self.results: dict[int, WorkerResult] = {}  # worker -> its last finished run
        self.first_steps: dict[int, dict] = {}  # worker -> its first run's first pull and step (start-up)
        self.steps_done = [0] * len(actors.workers)  # gradients each worker computed, over all its runs
        self.worker_restarts = [0] * len(actors.workers)
        self.server_restarts = [0] * len(actors.servers)
        self.restarts: list[dict] = []  # for the summary: one record per lost actor
        self.rollbacks: list[dict] = []
        self.manifests: set[int] = set()  # steps whose manifest this run wrote
        self.checkpoint_step: int | None = self.start_step if start[0].version else None
        self.rejoining: dict[int, float] = {}  # restarted worker -> deadline for its process to come back
        self.bare: set[int] = set()  # workers restarted after their work was done: no replica, nothing set up
        self.stop_requested = threading.Event()
        self.stop_version: int | None = None
        self.stats: list[ServerStats] | None = None
        self.policy = config.policy
        self.nonfinite_reported = 0
        self.reported_step: int | None = None
        self.started = time.perf_counter()

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        """Train until every worker is done (or a requested stop is reached)."""
        import ray

        self._start_runs(range(len(self.actors.workers)))
        while self.runs:
            if self.stop_requested.is_set() and self.stop_version is None:
                self._stop_at_boundary()
            refs = list(self.runs.values())
            ready, _ = ray.wait(refs, num_returns=1, timeout=self.config.log_every_seconds)
            lost_server = False
            for ref in ready:
                worker = next(i for i, r in self.runs.items() if r == ref)
                del self.runs[worker]
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayActorError as err:
                    if self._still_coming_back(worker, err):
                        time.sleep(0.2)  # Ray is still bringing its new process up; ask again
                        self._rejoin(worker)
                    else:
                        self._worker_lost(worker, err)
                    continue
                except ray.exceptions.RayTaskError:
                    get(ref, f"Worker {worker}")  # raises the user-facing error
                    raise
                self._record(worker, result)
                lost_server |= result.status is not Status.DONE
            # A worker with no call pending (its run ended) cannot fail a call: ask Ray whether it died.
            self._reconcile([("worker", i, w) for i, w in enumerate(self.actors.workers) if i not in self.runs])
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
            self.runs[i] = self.actors.workers[i].run.remote(self.target_version)

    def _record(self, worker: int, result: WorkerResult) -> None:
        if self.rejoining.pop(worker, None) is not None:
            self._relinked(worker)
            self._rejoined(worker)
        self.steps_done[worker] += result.steps
        self.first_steps.setdefault(worker, result.startup)
        if result.status is Status.DONE:
            self.results[worker] = result

    def _poll(self) -> bool:
        """Read every server's statistics; False when a server is gone or was restarted."""
        import ray

        refs = [s.stats.remote() for s in self.actors.servers]
        try:
            stats = ray.get(refs, timeout=CALL_TIMEOUT)
        except ray.exceptions.RayActorError:
            return False
        except ray.exceptions.GetTimeoutError:
            return True  # busy (a large checkpoint); ask again next time
        except ray.exceptions.RayTaskError:
            get(refs, "A parameter server")  # its error as raytf's (a checkpoint file it failed to write, say)
            raise
        if not all(s.ready for s in stats):
            return False
        self.stats = stats
        return True

    # -- worker loss ---------------------------------------------------------------------------
    def _worker_lost(self, worker: int, err) -> None:
        import ray

        step = self.step()
        # Its call was pending, so its work was not done: it rejoins (even if the others have trained every
        # step meanwhile: Ray takes a second or two to fail the call, and the others do not wait).
        self._count_restart("worker", worker, step, RESTARTING)
        self.on_event(f"Worker {worker} was lost near step {step} ({type(err).__name__}); the others go on while Ray "
                      f"restarts it (restart {self.worker_restarts[worker]} of at most "
                      f"{self.config.distribution.max_restarts}).")
        try:
            # The barrier stops waiting for it now; it is admitted again once it is back.
            ray.get([s.remove_worker.remote(worker) for s in self.actors.servers], timeout=CALL_TIMEOUT)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass  # a server is gone as well: the next poll rolls everything back
        self.rejoining[worker] = time.monotonic() + RESTART_TIMEOUT
        self._rejoin(worker)

    def _still_coming_back(self, worker: int, err) -> bool:
        """Whether a failed rejoin call means only that the worker's restart is under way: Ray says
        the actor is restarting, or the call still went to the process that died on a preempted
        (draining) node, a death Ray restarts without counting it and raytf counted already."""
        import ray

        if worker not in self.rejoining or time.monotonic() >= self.rejoining[worker]:
            return False
        return isinstance(err, ray.exceptions.ActorUnavailableError) or bool(getattr(err, "preempted", False))

    def _rejoin(self, worker: int) -> None:
        # No links are passed: the restarted process may be on another node, so the servers decide them anew.
        self.runs[worker] = self.actors.workers[worker].rejoin.remote(
            self.config.to_dict(), self.plan, len(self.actors.workers), self.actors.worker_threads, self.actors.servers,
            self.target_version)

    def _rejoined(self, worker: int) -> None:
        """A restarted worker's rejoin call returned: its process is back and set up."""
        pending = self._pending("worker", worker)
        for record in pending:
            record["recovery"] = REJOINED
        if pending:
            self.on_event(f"Worker {worker} rejoined the training near step {self.step()}.")

    def _relinked(self, worker: int) -> None:
        """Record how a worker that rejoined reaches the servers now (the summary shows it)."""
        import ray

        try:
            self.actors.link_kinds[worker] = ray.get(self.actors.workers[worker].link_kinds.remote(), timeout=CALL_TIMEOUT)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass  # lost again: its next rejoin records it

    # -- server loss ---------------------------------------------------------------------------
    def _roll_back(self) -> None:
        import ray

        d = self.config.distribution
        at_step = self.step()
        for server in self.actors.servers:
            server.abort.remote()  # releases every waiting exchange call with "rollback"
        needs_setup = []
        for worker, ref in list(self.runs.items()):
            try:
                self._record(worker, ray.get(ref, timeout=RESTART_TIMEOUT))
            except ray.exceptions.RayActorError:
                needs_setup.append(worker)
                self.rejoining.pop(worker, None)  # it is set up below with the others, not rejoined
                self._count_restart("worker", worker, at_step, RESTORED)
            except ray.exceptions.GetTimeoutError:
                raise TrainingError(f"Worker {worker} did not stop within {RESTART_TIMEOUT:.0f} s after a parameter "
                                    "server was lost.", "See the worker's log in the Ray dashboard.") from None
            except ray.exceptions.RayTaskError:
                get(ref, f"Worker {worker}")
                raise
        self.runs = {}
        needs_setup += self._take_bare(needs_setup)
        lost = []
        for j, server in enumerate(self.actors.servers):
            try:
                ready = _when_back(lambda: server.is_ready.remote())
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                raise TrainingError(f"Parameter server {j} was lost and did not come back within {RESTART_TIMEOUT:.0f} s "
                                    f"(distribution.max_restarts is {d.max_restarts}).",
                                    "See its log in the Ray dashboard; resume with --resume once the cluster is healthy.") from None
            if not ready:
                lost.append(j)
                self._count_restart("ps", j, at_step, RESTORED_FROM_CHECKPOINT)
        checkpoint = latest(self.root) if self.root is not None else None
        if checkpoint is not None:
            states = load(checkpoint, self.plan, self.config.optimizer.name, self.ups)
            to_step = checkpoint.step
            discard_after(self.root, to_step)
            self.manifests = {s for s in self.manifests if s <= to_step}
        else:
            states, to_step = self.start_states, self.start_step
        self.rollbacks.append({"servers_lost": lost, "at_step": at_step, "to_step": to_step})
        self.on_event(f"Parameter server{'s' if len(lost) != 1 else ''} {', '.join(map(str, lost)) or '?'} lost near step "
                      f"{at_step}; every server rolls back to the checkpoint of step {to_step} and training goes on.")
        self.stats = None
        settings = self.settings
        if self.stop_version is not None:
            # A stop was under way: end at the restored step, whose checkpoint exists.
            self.stop_version = to_step * self.ups
        get(setup_servers(self.actors, self.config, states, _with_target(settings, self.target_version))
            + setup_workers(self.actors, self.config, self.plan, needs_setup), "Restoring after a lost parameter server")
        wire(self.actors, self.config)
        self._start_runs(range(len(self.actors.workers)))

    def _take_bare(self, set_up_already: list[int]) -> list[int]:
        """The workers restarted after their run had ended, which hold no replica: a rollback sets
        them up with the others, and they train again (restored)."""
        bare = sorted(self.bare - set(set_up_already))
        for worker in bare:
            for record in self._pending("worker", worker):
                record["recovery"] = RESTORED
        self.bare.clear()
        return bare

    def _count_restart(self, role: str, index: int, step: int, recovery: str) -> None:
        """Record a death raytf saw (a failed call) that it recovers from; more than max_restarts end the run."""
        limit = self.config.distribution.max_restarts
        died = self._counts(role)[index] + 1
        if died > limit:
            name = "Worker" if role == "worker" else "Parameter server"
            raise TrainingError(
                f"{name} {index} died {died} times (last near step {step}); distribution.max_restarts is {limit}.",
                "See its log in the Ray dashboard for why its process died (running out of memory is the usual cause), "
                "or raise distribution.max_restarts.")
        self._add_record(role, index, step, recovery)

    def _add_record(self, role: str, index: int, step: int, recovery: str) -> None:
        for record in self._pending(role, index):
            record["recovery"] = came_back(record["recovery"])  # it died again, so it had come back
        self._counts(role)[index] += 1
        self.restarts.append({"role": role, "index": index, "step": step, "recovery": recovery})

    def _counts(self, role: str) -> list[int]:
        return self.worker_restarts if role == "worker" else self.server_restarts

    def _pending(self, role: str, index: int) -> list[dict]:
        return [r for r in self.restarts if r["role"] == role and r["index"] == index and r["recovery"] in PENDING]

    # -- deaths seen only by Ray ---------------------------------------------------------------
    def _reconcile(self, actors: list[tuple[str, int, Any]]) -> dict[tuple[str, int], str]:
        """Record the deaths Ray knows of these actors (role, index, handle) and raytf has not seen:
        they come after the actor's work was done (the failed call of a pending one is seen first).
        Announces each once; returns each actor's state."""
        states = {}
        for role, index, handle in actors:
            known = actor_state(handle)
            if known is None:
                continue
            restarts, state = known
            states[(role, index)] = state
            missing = unrecorded(self.restarts, role, index, restarts, state)
            for k in range(missing):
                step = self.step()
                self._add_record(role, index, step, RESTARTING_AFTER_WORK)  # no limit check: Ray applies it
                if role == "worker":
                    self.bare.add(index)
                name = f"Worker {index}" if role == "worker" else f"Parameter server {index}"
                now = state if k == missing - 1 else "ALIVE"  # an earlier death was followed by a restart
                fate = {"DEAD": "Ray will not restart it (distribution.max_restarts is "
                                f"{self.config.distribution.max_restarts})",
                        "ALIVE": "Ray restarted it"}.get(now, "Ray restarts it")
                self.on_event(f"{name} was lost near step {step}, after its work was done; {fate}.")
        return states

    def finish(self) -> None:
        """Once the run's results are collected (before the actors are released): record the deaths
        of any actor that raytf has not seen, and give every record its outcome."""
        actors = ([("worker", i, w) for i, w in enumerate(self.actors.workers)]
                  + [("ps", j, s) for j, s in enumerate(self.actors.servers)])
        states = self._reconcile(actors)
        for role, index in sorted({(r["role"], r["index"]) for r in self.restarts if r["recovery"] in PENDING}):
            settle(self.restarts, role, index, states.get((role, index), "unknown"))

    # -- stopping ------------------------------------------------------------------------------
    def _stop_at_boundary(self) -> None:
        """Ask every server to stop at the same, next reachable version (a step boundary)."""
        versions = [s.version for s in self.stats] if self.stats else [0]
        candidate = math.ceil((max(versions) + 1) / self.ups) * self.ups
        while candidate < self.settings.target_version:
            accepted = get([s.set_target.remote(candidate) for s in self.actors.servers], "Stopping the servers")
            if all(accepted):
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
            manifest = build_manifest(step, self.plan, saved, mode=self.config.distribution.mode, updates_per_step=self.ups,
                                      optimizer=self.config.optimizer.name, run_id=self.run_id)
            write_manifest(step_dir(self.root, step), manifest)
            self.manifests.add(step)
            self.checkpoint_step = step
            prune(self.root, self.config.checkpoint.keep)

    def _report(self) -> None:
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
        from raytf.progress import Snapshot

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
        )
        for reporter in self.reporters:
            reporter.update(snapshot)


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event):
    """While training: the first Ctrl-C or SIGTERM sets `stop` (finish the step, checkpoint,
    exit); a second one raises KeyboardInterrupt (quit at once). Only the main thread can
    install handlers; elsewhere (a notebook's worker thread) signals keep their meaning."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _when_back(call: Callable[[], Any], timeout: float = RESTART_TIMEOUT) -> Any:
    """The result of `call()`, asked again while Ray says the actor is restarting (unavailable)."""
    import ray

    deadline = time.monotonic() + timeout
    while True:
        try:
            return ray.get(call(), timeout=max(deadline - time.monotonic(), 0.1))
        except ray.exceptions.ActorUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)  # its new process is starting


def _with_target(settings: ServerSettings, target: int) -> ServerSettings:
    from dataclasses import replace

    return replace(settings, target_version=target)
