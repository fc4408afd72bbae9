"""The summary's `restarts`: one record per death of a run's actor, with what became of it.

A death is seen by raytf as a failed call (a worker's `run`, a server's statistics), or read from
Ray's restart count of the actor where the driver had no call pending (a worker whose work was
done), during the run and once more at its end. Each death is recorded once and announced once.
"""

from __future__ import annotations

from typing import Callable

from raytf.errors import TrainingError

# What became of a lost actor: the "recovery" of its record.
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

ROLE_NAMES = {"worker": "Worker", "ps": "Parameter server"}


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


class RestartLog:
    """The records of one run, the deaths counted per actor against `max_restarts`, and the workers
    restarted after their work was done (`bare`: no replica, nothing set up)."""

    def __init__(self, workers: int, servers: int, max_restarts: int, on_event: Callable[[str], None]) -> None:
        self.records: list[dict] = []
        self.counts = {"worker": [0] * workers, "ps": [0] * servers}
        self.max_restarts = max_restarts
        self.on_event = on_event
        self.bare: set[int] = set()

    def lost(self, role: str, index: int, step: int, recovery: str) -> None:
        """A death raytf saw (a failed call) and recovers from; more than max_restarts end the run."""
        died = self.counts[role][index] + 1
        if died > self.max_restarts:
            raise TrainingError(
                f"{ROLE_NAMES[role]} {index} died {died} times (last near step {step}); distribution.max_restarts is "
                f"{self.max_restarts}.",
                "See its log in the Ray dashboard for why its process died (running out of memory is the usual cause), "
                "or raise distribution.max_restarts.")
        self._add(role, index, step, recovery)

    def rejoined(self, worker: int, step: int) -> None:
        """A restarted worker's rejoin call returned: its process is back and set up."""
        pending = self.pending("worker", worker)
        for record in pending:
            record["recovery"] = REJOINED
        if pending:  # a worker set up again by a rollback rejoins nothing
            self.on_event(f"Worker {worker} rejoined the training near step {step}.")

    def seen_by_ray(self, role: str, index: int, restarts: int, state: str, step: int) -> None:
        """Record the deaths Ray knows of this actor and raytf has not seen: they come after the actor's
        work was done (the failed call of a pending one is seen first). Announces each once."""
        missing = unrecorded(self.records, role, index, restarts, state)
        for k in range(missing):
            self._add(role, index, step, RESTARTING_AFTER_WORK)  # no limit check: Ray applies its own
            if role == "worker":
                self.bare.add(index)
            now = state if k == missing - 1 else "ALIVE"  # an earlier death was followed by a restart
            fate = {"DEAD": f"Ray will not restart it (distribution.max_restarts is {self.max_restarts})",
                    "ALIVE": "Ray restarted it"}.get(now, "Ray restarts it")
            self.on_event(f"{ROLE_NAMES[role]} {index} was lost near step {step}, after its work was done; {fate}.")

    def take_bare(self, set_up_already: list[int]) -> list[int]:
        """The workers restarted after their run had ended, which hold no replica: a rollback sets
        them up with the others, and they train again (restored)."""
        bare = sorted(self.bare - set(set_up_already))
        for worker in bare:
            for record in self.pending("worker", worker):
                record["recovery"] = RESTORED
        self.bare.clear()
        return bare

    def settle_all(self, states: dict[tuple[str, int], str]) -> None:
        """At the end: every pending record gets its outcome from what Ray says of its actor now."""
        for role, index in sorted({(r["role"], r["index"]) for r in self.records if r["recovery"] in PENDING}):
            settle(self.records, role, index, states.get((role, index), "unknown"))

    def pending(self, role: str, index: int) -> list[dict]:
        return [r for r in self.records if r["role"] == role and r["index"] == index and r["recovery"] in PENDING]

    def _add(self, role: str, index: int, step: int, recovery: str) -> None:
        for record in self.pending(role, index):
            record["recovery"] = came_back(record["recovery"])  # it died again, so it had come back
        self.counts[role][index] += 1
        self.records.append({"role": role, "index": index, "step": step, "recovery": recovery})
