"""Where a run's start-up time goes: one clock for the driver and every actor.

Start-up is everything from the command's start (the `raytf` process, or the `raytf.fit` call) to
the moment the slowest worker has finished its first step: the cluster, the actor processes,
TensorFlow's import in each of them, building the model, the first (XLA) compile and the first
pull of the parameters. Phases of different processes overlap, so `startup_breakdown` in the
summary gives each phase's own length (for actors: the slowest actor's) and the `total`; the
`timeline` holds every span, in seconds from the start, for a closer look.

Times are wall-clock (`time.time()`), the only clock the driver and the actors share on a machine.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Iterator

# The phases, in the order they happen.
PHASES = ("command", "cluster_start", "driver_imports", "driver_model_build", "connect", "pool_take", "pool_model_check", "actor_processes",
          "actor_imports", "actor_model_build", "first_pull", "first_compile")


def process_start_time() -> float:
    """When this process started (wall clock), to about 10 ms.

    (psutil's create_time counts from the boot time, which Linux gives in whole seconds.)"""
    try:
        with open("/proc/self/stat") as stat:
            ticks = int(stat.read().rpartition(")")[2].split()[19])  # field 22: start time in clock ticks since boot
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - age
    except (OSError, ValueError, IndexError, AttributeError):
        import psutil

        return psutil.Process(os.getpid()).create_time()


@dataclass(frozen=True)
class Span:
    phase: str
    who: str  # "driver", "ps-0", "worker-1", ...
    start: float
    end: float


@dataclass
class StartupClock:
    origin: float = field(default_factory=time.time)
    spans: list[Span] = field(default_factory=list)

    @contextlib.contextmanager
    def span(self, phase: str, who: str = "driver") -> Iterator[None]:
        start = time.time()
        try:
            yield
        finally:
            self.add(phase, who, start, time.time())

    def add(self, phase: str, who: str, start: float, end: float) -> None:
        self.spans.append(Span(phase, who, start, end))

    def add_actor(self, who: str, created: float, timings: dict[str, tuple[float, float]]) -> None:
        """An actor's own spans (`ActorTimer.spans`), plus the wait from `created` until its process
        ran raytf's code (a new process starts Python and Ray; Ray may have one started already)."""
        process = timings.get("process")
        if process is not None:
            self.add("actor_processes", who, created, max(created, process[1]))
        for phase, (start, end) in timings.items():
            if phase != "process":
                self.add(phase, who, start, end)

    def breakdown(self, ready: float) -> dict:
        """Seconds per phase (the longest span of each; actors run theirs side by side), the total
        until `ready`, and every span relative to the origin."""
        longest: dict[str, float] = {}
        for span in self.spans:
            longest[span.phase] = max(longest.get(span.phase, 0.0), span.end - span.start)
        result = {phase: round(longest.get(phase, 0.0), 3) for phase in PHASES}
        result["total"] = round(ready - self.origin, 3)
        result["timeline"] = [
            {"phase": s.phase, "who": s.who, "start": round(s.start - self.origin, 3), "end": round(s.end - self.origin, 3)}
            for s in sorted(self.spans, key=lambda s: (s.start, s.who))
        ]
        return result


class ActorTimer:
    """An actor's side of the clock: spans it measured itself, sent back with its set-up result."""

    def __init__(self) -> None:
        # "process": from the process's start to now, when raytf's code first runs in it (its set-up).
        self.spans: dict[str, tuple[float, float]] = {"process": (process_start_time(), time.time())}

    @contextlib.contextmanager
    def span(self, phase: str) -> Iterator[None]:
        start = time.time()
        try:
            yield
        finally:
            self.spans[phase] = (start, time.time())


def peak_rss() -> int:
    """This process's peak resident memory in bytes (Linux reports kilobytes)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
