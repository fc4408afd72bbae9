"""Consistency policies: what an arriving gradient means, and when its worker may go on.

A policy is called by the `Exchange` with its lock held. It decides whether a gradient is applied
now, collected for a round, or dropped; when a waiting worker is released; how a worker that died
or came back changes that; and what the mode means for the rest of raytf (how many server
versions make a training step, whether workers compute their next gradient while a push is in
flight, whether every worker reads one shared parameter buffer). Nothing outside this module
asks which mode a run uses; it asks the policy.

* `sync`: a barrier. A round's gradients (computed on the same version) are collected; once all
  live members pushed, or with `backup_workers: b` the first `workers - b` of them, their mean is
  applied once. Gradients that come later for that round are dropped and answered at once.
* `async`: every gradient is applied when it arrives.
* `ssp` (stale synchronous parallel): applied on arrival like `async`, but a worker more than
  `staleness_bound` steps ahead of the slowest live worker waits until that one catches up.

New rules are a new subclass, registered with `@register`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Protocol

from raytf.exchange.messages import ExchangeStats, Push, Ticket


class Exchange(Protocol):
    """What a policy reads and changes of its server's exchange (`raytf.exchange.state.Exchange`),
    always with the exchange's lock held."""

    version: int  # the server's parameter version
    members: set[int]  # live workers the policy counts
    joining: dict[int, int]  # worker -> first round it takes part in (a rejoin in sync)
    clock_skew_max: int

    def drop(self, worker: int) -> Ticket:
        """A ticket for a push that is not applied (counted as dropped)."""

    def apply(self, grads: list, workers: list[int], bases: list[int]) -> None:
        """Apply `grads` (pushed by `workers` at `bases`) as one update, or take a version for none."""

    def apply_early(self, grad: Any, expected: int) -> None:
        """Apply what can be of `grad` now, in a round of `expected` gradients not complete yet."""

POLICIES: dict[str, type["AggregationPolicy"]] = {}


def register(cls: type["AggregationPolicy"]) -> type["AggregationPolicy"]:
    POLICIES[cls.name] = cls
    return cls


def make_policy(mode: str, workers: int, backup_workers: int = 0, staleness_bound: int | None = None) -> "AggregationPolicy":
    """The policy for `mode` (a name in POLICIES), set up for `workers` workers."""
    return POLICIES[mode].create(workers=workers, backup_workers=backup_workers, staleness_bound=staleness_bound)


def policy_for(distribution: Any) -> "AggregationPolicy":
    """The policy a `DistributionConfig` asks for."""
    return make_policy(distribution.mode, distribution.workers, distribution.backup_workers, distribution.staleness_bound)


class AggregationPolicy(ABC):
    name: ClassVar[str]
    # The worker computes its next gradient while its push is in flight (one push staler), or waits.
    overlaps_compute: ClassVar[bool]
    # Workers wait while the server updates, so the server may use their cores for the update.
    workers_idle_during_update: ClassVar[bool]
    # Applied gradients can be stale (worth reporting while training).
    reports_staleness: ClassVar[bool]
    # A restarted worker must be admitted from a round no server has started (all servers agree).
    admits_by_round: ClassVar[bool]

    def __init__(self, workers: int) -> None:
        self.workers = workers

    @classmethod
    def create(cls, workers: int, **options: Any) -> "AggregationPolicy":
        return cls(workers)

    @property
    def updates_per_step(self) -> int:
        """Server versions per training step: one per round, or one per worker's gradient."""
        return self.workers

    @property
    def shared_parameter_slot(self) -> bool:
        """Every worker may read one published buffer: nobody reads while the server writes it."""
        return False

    def describe(self) -> str:
        return self.name

    def start(self, ex: "Exchange") -> None:
        """A fresh exchange (a new run, or one restored from a checkpoint)."""

    @abstractmethod
    def push(self, ex: "Exchange", push: Push, grad: Any) -> Ticket:
        """Take a gradient (None: not finite); apply it, keep it for a round, or drop it."""

    def released(self, ex: "Exchange", ticket: Ticket) -> bool:
        return True

    def remove(self, ex: "Exchange", worker: int) -> None:
        """`worker` died (it is no longer in `ex.members`)."""

    def admit(self, ex: "Exchange", worker: int, first_round: int) -> bool:
        ex.members.add(worker)
        return True

    def summary(self, stats: ExchangeStats) -> dict[str, Any]:
        """What this mode adds to the run's summary."""
        return {}


@register
class SyncPolicy(AggregationPolicy):
    name = "sync"
    overlaps_compute = False
    workers_idle_during_update = True
    reports_staleness = False
    admits_by_round = True

    def __init__(self, workers: int, backup_workers: int = 0) -> None:
        super().__init__(workers)
        self.backup_workers = backup_workers
        self.pending: dict[int, tuple[Any, int]] = {}  # worker -> (gradient, base version), in arrival order

    @classmethod
    def create(cls, workers: int, **options: Any) -> "SyncPolicy":
        return cls(workers, options.get("backup_workers") or 0)

    @property
    def updates_per_step(self) -> int:
        return 1

    @property
    def shared_parameter_slot(self) -> bool:
        # With backups a dropped worker reads fresh parameters while the next round may complete.
        return self.backup_workers == 0

    def describe(self) -> str:
        b = self.backup_workers
        return f"sync, {b} backup worker{'s' if b != 1 else ''}" if b else "sync"

    def start(self, ex: "Exchange") -> None:
        self.pending = {}

    def required(self, ex: "Exchange") -> set[int]:
        """Who belongs to the round being built: the members, and restarted workers admitted to it."""
        next_round = ex.version + 1
        return ex.members | {w for w, first in ex.joining.items() if first <= next_round}

    def quorum(self, required: set[int]) -> int:
        if not self.backup_workers:
            return len(required)
        return min(self.workers - self.backup_workers, len(required))

    def push(self, ex: "Exchange", push: Push, grad: Any) -> Ticket:
        if push.base_version != ex.version or push.worker not in self.required(ex):
            return ex.drop(push.worker)  # its round was applied without it (a backup round)
        self.pending[push.worker] = (grad, push.base_version)
        self._complete_if_ready(ex)
        if push.worker in self.pending and grad is not None and not self.backup_workers:
            # Not the round's last: what of its update can be made now is (with backups the round's
            # gradients are known only once it completes).
            ex.apply_early(grad, self.quorum(self.required(ex)))
        return Ticket(push.worker, round=push.base_version + 1)

    def released(self, ex: "Exchange", ticket: Ticket) -> bool:
        return ticket.dropped or ex.version >= ticket.round

    def _complete_if_ready(self, ex: "Exchange") -> None:
        required = self.required(ex)
        arrived = [w for w in self.pending if w in required]
        need = self.quorum(required)
        if need < 1 or len(arrived) < need:
            return
        ex.members |= required
        ex.joining = {w: first for w, first in ex.joining.items() if w not in required}
        taken = [(w, *self.pending[w]) for w in arrived[:need]]
        self.pending = {}
        finite = [(w, grad, base) for w, grad, base in taken if grad is not None]
        ex.apply([g for _, g, _ in finite], [w for w, _, _ in finite], [b for _, _, b in finite])

    def remove(self, ex: "Exchange", worker: int) -> None:
        self.pending.pop(worker, None)
        if self.pending:
            self._complete_if_ready(ex)  # it may have been the one the round waited for
        self._pass_nobodys_rounds(ex)

    def admit(self, ex: "Exchange", worker: int, first_round: int) -> bool:
        """A member again from `first_round` on, if that round has not started yet."""
        if ex.version >= first_round:
            return False
        ex.joining[worker] = first_round
        self._pass_nobodys_rounds(ex)
        return True

    def _pass_nobodys_rounds(self, ex: "Exchange") -> None:
        """With no member left (every worker died), the rounds before the first a rejoiner was admitted
        to belong to nobody: they pass with nothing applied, as a round of non-finite gradients does
        (the rejoiner starts from the version before its first round and would wait for it forever)."""
        while ex.joining and not self.required(ex) and not ex.stopped:
            ex.apply([], [], [])  # (nothing is pending: a push is kept only from a worker the round requires)

    def summary(self, stats: ExchangeStats) -> dict[str, Any]:
        return {"backup_workers": self.backup_workers, "mean_round_size": stats.mean_update_size}


@register
class AsyncPolicy(AggregationPolicy):
    name = "async"
    overlaps_compute = True
    workers_idle_during_update = False
    reports_staleness = True
    admits_by_round = False

    def push(self, ex: "Exchange", push: Push, grad: Any) -> Ticket:
        ex.members.add(push.worker)  # a restarted worker is a member again with its first push
        if grad is None:
            ex.apply([], [], [])  # a skipped gradient still takes its version: steps stay countable
        else:
            ex.apply([grad], [push.worker], [push.base_version])
        return Ticket(push.worker)


@register
class SSPPolicy(AsyncPolicy):
    """Stale synchronous parallel (Ho et al., 2013): async updates, bounded lead over the slowest."""

    name = "ssp"

    def __init__(self, workers: int, staleness_bound: int = 3) -> None:
        super().__init__(workers)
        self.bound = staleness_bound
        self.clocks: dict[int, int] = {}  # worker -> gradients pushed (its clock)

    @classmethod
    def create(cls, workers: int, **options: Any) -> "SSPPolicy":
        bound = options.get("staleness_bound")
        return cls(workers, 3 if bound is None else bound)

    def describe(self) -> str:
        return f"ssp, staleness bound {self.bound}"

    def start(self, ex: "Exchange") -> None:
        self.clocks = {w: 0 for w in ex.members}

    def slowest(self, ex: "Exchange") -> int:
        """The smallest clock among the live workers (dead ones hold nobody back)."""
        live = [self.clocks[w] for w in ex.members if w in self.clocks]
        return min(live) if live else 0

    def push(self, ex: "Exchange", push: Push, grad: Any) -> Ticket:
        if push.worker not in self.clocks:  # came back without being admitted: start at the slowest
            self.clocks[push.worker] = self.slowest(ex)
        self.clocks[push.worker] += 1
        ticket = super().push(ex, push, grad)
        live = [self.clocks[w] for w in ex.members if w in self.clocks]
        ex.clock_skew_max = max(ex.clock_skew_max, max(live) - min(live))
        return ticket  # (applying woke the waiters: the slowest may have moved on)

    def released(self, ex: "Exchange", ticket: Ticket) -> bool:
        if ticket.worker not in ex.members:
            return True
        return self.clocks[ticket.worker] - self.slowest(ex) <= self.bound

    def remove(self, ex: "Exchange", worker: int) -> None:
        self.clocks.pop(worker, None)

    def admit(self, ex: "Exchange", worker: int, first_round: int) -> bool:
        """Back at the slowest live worker's clock: it holds nobody back and is not ahead."""
        self.clocks[worker] = self.slowest(ex)
        ex.members.add(worker)
        return True

    def summary(self, stats: ExchangeStats) -> dict[str, Any]:
        waited = [stats.waited.get(w, 0.0) for w in range(self.workers)]
        return {"staleness_bound": self.bound, "clock_skew_max": stats.clock_skew_max,
                "bound_wait_seconds": {"total": sum(waited), "per_worker": waited}}
