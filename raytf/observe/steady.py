"""A run's steady state: the steps after the warm-up, and the CPU a process spends over them.

The rate a worker reports leaves out its first steps (graph tracing, first allocations); the CPU
time is measured over the same steps, for the process (every thread: the step's, the exchange's
socket copies, in the kernel too). A worker divides it by its steps, a server by its updates: with
the samples per step they say how many core-milliseconds a step costs on each side, and so the
rate the machine's cores could reach at best.
"""

from __future__ import annotations

import resource


def warmup_steps(steps: int) -> int:
    """Steps excluded from the steady-state rate (graph tracing, first allocations)."""
    return max(1, min(20, steps // 10))


class CpuWindow:
    """The process's CPU time between `start()` and a later event, per event.

    `tick()` marks an event (a step, an update); `per_event(skip_last)` is the CPU milliseconds per
    event over the window (total, and the kernel's part), up to the last event or the one before it
    (a worker's last step waits for the run's final checkpoint, which is not training)."""

    def __init__(self) -> None:
        self._start: tuple[float, float] | None = None
        self._marks: tuple[tuple[float, float], ...] = ()  # the CPU at the last two events
        self.events = 0

    def start(self) -> None:
        self._start, self._marks, self.events = _cpu(), (), 0

    def tick(self) -> None:
        if self._start is not None:
            self._marks = (*self._marks[-1:], _cpu())
            self.events += 1

    def per_event(self, skip_last: bool = False) -> tuple[float, float]:
        """(CPU ms, of which system ms) per event of the window; zeros without one."""
        events = self.events - (1 if skip_last else 0)
        if self._start is None or events < 1:
            return 0.0, 0.0
        user, system = self._marks[-2] if skip_last else self._marks[-1]
        used, kernel = user - self._start[0] + system - self._start[1], system - self._start[1]
        return 1000 * used / events, 1000 * kernel / events


def _cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # microseconds (os.times has the clock tick's 10 ms)
    return usage.ru_utime, usage.ru_stime
