"""The exchange of one parameter server: its version, target, membership and waiting workers.

`Exchange` is the state machine every push and pull of a server goes through. It is plain Python
with one lock and one condition: each call of a worker runs in a thread of its own (the server is
a threaded Ray actor) and may wait, for a barrier or a staleness bound, until the policy
releases it, the target version is reached, or the driver aborts. What an arriving gradient means
is the `AggregationPolicy`'s business (`raytf.exchange.policies`); what an update and a publish
are is the `ShardBackend`'s (the TensorFlow shard and the transport in `raytf.exchange.server`, a plain list in
the tests). So the protocol runs, and is tested, without Ray or TensorFlow.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

from raytf.exchange.messages import ExchangeStats, Outcome, Push, StalenessStats, Status, Ticket
from raytf.exchange.policies import AggregationPolicy


class ShardBackend(Protocol):
    """What the exchange asks of the server that holds the shard; called with the exchange's lock held."""

    def apply(self, grads: list) -> None:
        """Apply the mean of `grads` (one or more) as one optimizer update."""

    # Optional: `apply_early(grad, expected) -> bool`, part of a round's update made as `grad` arrives
    # (raytf.exchange.server.ParameterServer.apply_early); a backend without it applies whole rounds.

    def publish(self, version: int, worker: int) -> None:
        """Make the parameters (now at `version`) readable for `worker`, before it is answered."""

    def checkpoint(self, version: int) -> None:
        """Write the shard at `version` (a checkpoint is due, or the run stops here)."""


class Observer(Protocol):
    """Metrics sink (the server's `ActorMetrics`); optional."""

    def observe(self, name: str, value: float) -> None: ...

    def inc(self, name: str, value: float = 1.0) -> None: ...


class Exchange:
    def __init__(self, policy: AggregationPolicy, backend: ShardBackend, *, workers: int, target: int,
                 version: int = 0, every_versions: int = 0, eval_versions: int = 0, observer: Observer | None = None,
                 tracer: Any = None) -> None:
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.policy = policy
        self.backend = backend
        self.observer = observer
        self.tracer = tracer  # a raytf.observe.trace.PhaseRecorder: the barrier's waits on the timeline
        self.version = version
        self.target = target
        self.every_versions = every_versions
        self.eval_versions = eval_versions  # validation's checkpoints, besides the every_versions ones
        self.aborted = False
        self.members: set[int] = set(range(workers))  # live workers the policy counts on
        self.joining: dict[int, int] = {}  # restarted worker -> the first round it belongs to
        self.clock_skew_max = 0  # kept by policies that bound staleness
        # A round part of whose update is applied already (raytf.exchange.pipeline, rows applied early):
        # no stop at its version.
        self.partial_round = False
        self._checkpointed: set[int] = set()
        self._pushes = 0
        self._nonfinite = 0
        self._updates = 0
        self._applied: dict[int, int] = {}
        self._dropped: dict[int, int] = {}
        self._waited: dict[int, float] = {}
        self._progress: dict[int, tuple[int, float, float]] = {}
        self._staleness: dict[int, int] = {}  # histogram
        policy.start(self)

    # -- state the policies read ---------------------------------------------------------------
    @property
    def stopped(self) -> bool:
        return self.aborted or self.version >= self.target

    # -- actions of the policies (lock held) ---------------------------------------------------
    def apply(self, grads: list, contributors: list[int], bases: list[int]) -> None:
        """Apply the mean of `grads` (of `contributors`, computed on versions `bases`) as the next
        version; with no gradient (all of them non-finite) the version still moves on."""
        if grads:
            self.backend.apply(grads)
        for worker, base in zip(contributors, bases):
            staleness = self.version - base  # versions the parameters it was computed on were behind
            self._staleness[staleness] = self._staleness.get(staleness, 0) + 1
            self._applied[worker] = self._applied.get(worker, 0) + 1
            if self.observer is not None:
                self.observer.observe("raytf_staleness", staleness)
        self.version += 1
        self.partial_round = False
        self._updates += 1
        if self.version == self.target or any(every and self.version % every == 0
                                              for every in (self.every_versions, self.eval_versions)):
            self._checkpoint()
        self.cond.notify_all()

    def apply_early(self, grad: Any, expected: int) -> None:
        """Let the backend apply its part of `grad` now, in a round of `expected` gradients still
        being collected (the policy's call); the exchange then does not stop at this version."""
        early = getattr(self.backend, "apply_early", None)
        if early is not None and early(grad, expected):
            self.partial_round = True

    def drop(self, worker: int) -> Ticket:
        """`worker`'s gradient came too late for its round: counted, not applied, answered at once."""
        self._dropped[worker] = self._dropped.get(worker, 0) + 1
        if self.observer is not None:
            self.observer.inc("raytf_gradients_dropped")
        return Ticket(worker, dropped=True)

    def _checkpoint(self) -> None:
        if self.version not in self._checkpointed:
            self._checkpointed.add(self.version)
            self.backend.checkpoint(self.version)

    # -- the workers' calls --------------------------------------------------------------------
    def push(self, push: Push, grad: Any, wait: bool = True) -> Outcome | None:
        """Hand over a gradient (None when it is not finite); returns once the policy releases the
        worker (or the run stops or is aborted), with the parameters published for it. Without
        `wait`, returns None at once: the push of a worker whose answer goes to it another way (its
        node's leader relays it, raytf.exchange.local_reduce)."""
        with self.lock:
            if push.loss is not None:
                self._progress[push.worker] = (push.steps_done, push.loss, time.time())
            if self.stopped:
                return self._outcome(push.worker) if wait else None
            self._pushes += 1
            if not push.finite:
                self._nonfinite += 1
            ticket = self.policy.push(self, push, grad if push.finite else None)
            if not wait:
                return None
            started = time.monotonic()
            waiting = self.tracer.mark() if self.tracer is not None else None
            while not self.stopped and not self.policy.released(self, ticket):
                self.cond.wait()
            waited = time.monotonic() - started
            if waiting is not None:
                self.tracer.record("wait", waiting, push.steps_done, push.worker)
            self._waited[push.worker] = self._waited.get(push.worker, 0.0) + waited
            return self._outcome(push.worker, dropped=ticket.dropped, waited=waited)

    def pull(self, worker: int, at_version: int | None = None) -> Outcome:
        """The parameters, once the version is at least `at_version` (a rejoining worker's start)."""
        with self.lock:
            if at_version is not None:
                while self.version < min(at_version, self.target) and not self.aborted:
                    self.cond.wait()
            return self._outcome(worker)

    def _outcome(self, worker: int, dropped: bool = False, waited: float = 0.0) -> Outcome:
        if self.aborted:
            return Outcome(Status.ROLLBACK, self.version, dropped, waited)
        self.backend.publish(self.version, worker)
        return Outcome(Status.DONE if self.version >= self.target else Status.OK, self.version, dropped, waited)

    # -- the driver's calls --------------------------------------------------------------------
    def remove(self, worker: int) -> None:
        """`worker` died: nobody waits for it any more (its gradient of an open round is dropped)."""
        with self.lock:
            self.members.discard(worker)
            self.joining.pop(worker, None)
            self.policy.remove(self, worker)
            self.cond.notify_all()

    def admit(self, worker: int, first_round: int) -> bool:
        """Make a restarted `worker` a member again; False when the policy cannot from `first_round`
        (a round-based policy that has started that round already)."""
        with self.lock:
            admitted = self.policy.admit(self, worker, first_round)
            self.cond.notify_all()
            return admitted

    def abort(self) -> None:
        """Release every waiting call with ROLLBACK (a checkpoint is about to be restored)."""
        with self.lock:
            self.aborted = True
            self.cond.notify_all()

    def set_target(self, version: int) -> bool:
        """Stop at `version` (a step boundary the driver chose); False if already past it."""
        with self.lock:
            if self.version > version or (self.version == version and self.partial_round):
                return False
            self.target = min(self.target, version)
            if self.version == self.target:
                self._checkpoint()
            self.cond.notify_all()
            return True

    def current_version(self) -> int:
        with self.lock:
            return self.version

    def stats(self) -> ExchangeStats:
        with self.lock:
            applied = sum(self._applied.values())
            staleness_total = sum(s * n for s, n in self._staleness.items())
            staleness = StalenessStats(applied=applied, mean=staleness_total / applied if applied else 0.0,
                                       max=max(self._staleness, default=0), histogram=dict(self._staleness))
            return ExchangeStats(
                version=self.version, target=self.target, pushes=self._pushes, applied=dict(self._applied),
                dropped=dict(self._dropped), nonfinite_skipped=self._nonfinite, updates=self._updates,
                mean_update_size=applied / self._updates if self._updates else 0.0, staleness=staleness,
                clock_skew_max=self.clock_skew_max, waited=dict(self._waited), progress=dict(self._progress),
                members=tuple(sorted(self.members)),
            )
