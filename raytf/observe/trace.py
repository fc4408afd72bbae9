"""A per-step timeline of every actor (`trace.enabled`), written as output_dir/trace.json.

Each actor keeps a `PhaseRecorder`: per phase of a step (compute, copy out, next batch, push,
wait, apply, publish, load, ...) its start and end on CLOCK_MONOTONIC, the CPU time of the
recording thread and of the whole process, and the thread's minor/major page faults. The
recorder is a preallocated ring: it keeps the newest events, so memory and the file stay bounded
however long the run. At the end the driver fetches every actor's `Track` and `chrome_trace`
turns them into Chrome's Trace Event Format (one process per actor, one thread per timeline in
it), which ui.perfetto.dev and chrome://tracing open.

Clocks: CLOCK_MONOTONIC is one system-wide clock on Linux, so the timestamps of all actors of
one node line up. Across nodes the clocks are not aligned (each counts from its own boot); the
tracks say which node they come from, and only durations compare across nodes.
"""

from __future__ import annotations

import itertools
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# (monotonic ns, thread CPU ns, process CPU ns, thread minor faults, thread major faults)
Mark = tuple[int, int, int, int, int]
# (phase, step, tid, start ns, end ns, thread CPU ns, process CPU ns, minor faults, major faults)
Event = tuple[str, int, int, int, int, int, int, int, int]

# Inside each "step", in the order of a dense sync step. A model with sparse tables reads the next
# batch before its push (the push asks for that batch's rows); async/ssp wait for the last push's
# reply before pushing.
WORKER_PHASES = ("compute", "copy_out", "push", "next_batch", "wait_reply", "load")
SERVER_PHASES = ("receive", "apply", "wait", "publish", "reply")  # inside each "push" (and "pull")
# A sync round's sparse rows applied as their push arrives (SGD; raytf.exchange.server.ParameterServer.apply_early).
EARLY_PHASE = "apply_early"
DRIVER_TID = 10_000  # a server's timeline of the driver's calls (an update a worker's removal completes)


def mark() -> Mark:
    """Now, for the calling thread (about 10 µs: four clock and rusage reads)."""
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return (time.clock_gettime_ns(time.CLOCK_MONOTONIC), time.thread_time_ns(), time.process_time_ns(),
            usage.ru_minflt, usage.ru_majflt)


@dataclass(frozen=True)
class Track:
    """One actor's recorded events, as sent to the driver."""

    name: str  # "worker 0", "ps 1"
    events: tuple  # Event tuples, oldest first
    threads: dict[int, str] = field(default_factory=dict)  # tid -> what that timeline is
    node: str = ""
    os_pid: int = 0
    dropped: int = 0  # older events the ring overwrote


class PhaseRecorder:
    """A bounded ring of phase events; `record` may be called from several threads at once
    (a server handles each worker's call in a thread of its own)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self.capacity = capacity
        self._events: list[Event | None] = [None] * capacity  # preallocated: recording never grows a list
        self._counter = itertools.count()  # next() is atomic under the GIL: no lock on the hot path
        self.threads: dict[int, str] = {}

    mark = staticmethod(mark)

    def record(self, phase: str, start: Mark, step: int, tid: int = 0, end: Mark | None = None) -> Mark:
        """Record `phase` from `start` to `end` (default: now); returns `end`, the next phase's start."""
        end = end or mark()
        index = next(self._counter)
        self._events[index % self.capacity] = (phase, step, tid, start[0], end[0], end[1] - start[1],
                                               end[2] - start[2], end[3] - start[3], end[4] - start[4])
        return end

    def track(self, name: str, node: str = "", os_pid: int = 0) -> Track:
        """The events so far, oldest first (taken at the end of a run, when nothing records any more)."""
        count = next(self._counter)  # takes one index; a later record just leaves a hole
        if count <= self.capacity:
            events = self._events[:count]
        else:
            cut = count % self.capacity
            events = self._events[cut:] + self._events[:cut]
        kept = tuple(e for e in events if e is not None)
        return Track(name, kept, dict(self.threads), node, os_pid, max(0, count - self.capacity))


def _us(ns: int) -> float:
    return round(ns / 1000, 3)


def chrome_trace(tracks: list[Track], run_id: str | None = None) -> dict[str, Any]:
    """Chrome Trace Event Format: a complete ("X") event per phase, with ts and dur in µs from the
    earliest event of any track; metadata ("M") events name each actor's process and its threads;
    `otherData.run_id` names the run (as summary.json does)."""
    starts = [e[3] for t in tracks for e in t.events]
    origin = min(starts, default=0)
    nodes = {t.node for t in tracks}
    out: list[dict[str, Any]] = []
    for pid, t in enumerate(tracks, start=1):
        label = f"{t.name} (node {t.node[:8]})" if len(nodes) > 1 and t.node else t.name
        out.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": label}})
        out.append({"name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0, "args": {"sort_index": pid}})
        out.append({"name": "process_labels", "ph": "M", "pid": pid, "tid": 0,
                    "args": {"labels": f"os pid {t.os_pid}, node {t.node or '?'}, events dropped {t.dropped}"}})
        for tid, thread in sorted(t.threads.items()):
            out.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": thread}})
            out.append({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid, "args": {"sort_index": tid}})
        # Sorted by start, and a parent (recorded after its children, when it ends) before them.
        for phase, step, tid, start, end, cpu, pcpu, minflt, majflt in sorted(t.events, key=lambda e: (e[3], -e[4])):
            out.append({"name": phase, "cat": t.name.split()[0], "ph": "X", "pid": pid, "tid": tid,
                        "ts": _us(start - origin), "dur": _us(max(end - start, 0)),
                        "args": {"step": step, "cpu_ms": round(cpu / 1e6, 3), "process_cpu_ms": round(pcpu / 1e6, 3),
                                 "minor_faults": minflt, "major_faults": majflt}})
    return {
        "traceEvents": out,
        "displayTimeUnit": "ms",
        "otherData": {
            "clock": "CLOCK_MONOTONIC (one clock per node; ts counts from the earliest event)",
            "nodes": sorted(n for n in nodes if n),
            "aligned": len(nodes) <= 1,  # actors on several nodes: compare durations, not positions
            "run_id": run_id,
        },
    }


def _process_names(trace: dict[str, Any]) -> dict[int, str]:
    """pid -> the track's name, from the trace's metadata events."""
    return {e["pid"]: e["args"]["name"] for e in trace["traceEvents"] if e["ph"] == "M" and e["name"] == "process_name"}


def phase_means(trace: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per track name, the mean duration (ms) of each phase: a quick reading of a trace.json."""
    names = _process_names(trace)
    sums: dict[str, dict[str, list[float]]] = {}
    for e in trace["traceEvents"]:
        if e["ph"] == "X":
            sums.setdefault(names[e["pid"]], {}).setdefault(e["name"], []).append(e["dur"] / 1000)
    return {track: {phase: sum(v) / len(v) for phase, v in phases.items()} for track, phases in sums.items()}


@dataclass(frozen=True)
class PhaseStats:
    """One phase of one track over the steps read: how long it took and what it cost."""

    track: str
    phase: str
    count: int
    mean_ms: float
    median_ms: float
    cpu_ms: float  # the recording thread's CPU time, mean
    process_cpu_ms: float  # the whole process's CPU time over the same span (other threads too), mean
    minor_faults: float  # mean


def phase_stats(trace: dict[str, Any], from_step: int | None = None) -> tuple[int, list[PhaseStats]]:
    """Per track and phase, over the steps from `from_step` on (default: all but the first tenth,
    where XLA compiles and caches are cold). Returns the first step read and the rows, in track
    order and, within a track, in the order the phases first occur."""
    import statistics

    events = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    last = max((e["args"]["step"] for e in events), default=0)
    first = max(1, last // 10) if from_step is None else from_step
    names = _process_names(trace)
    grouped: dict[tuple[int, str], list[dict[str, Any]]] = {}  # in the order the phases first occur
    for e in events:
        if e["args"]["step"] >= first:
            grouped.setdefault((e["pid"], e["name"]), []).append(e)
    rows = []
    for (pid, phase), group in sorted(grouped.items(), key=lambda item: item[0][0]):  # stable: per pid, first occurrence
        durations = [e["dur"] / 1000 for e in group]
        rows.append(PhaseStats(names.get(pid, str(pid)), phase, len(group), statistics.fmean(durations),
                               statistics.median(durations), statistics.fmean(e["args"]["cpu_ms"] for e in group),
                               statistics.fmean(e["args"]["process_cpu_ms"] for e in group),
                               statistics.fmean(e["args"]["minor_faults"] for e in group)))
    return first, rows


def read_trace(path: Path) -> dict[str, Any]:
    """A trace.json written by `raytf train --trace` (or the output_dir holding one)."""
    import json

    from raytf.errors import ConfigError

    if path.is_dir():
        path = path / "trace.json"
    try:
        trace = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist.",
                          "Record a timeline with `raytf train CONFIG --trace`; it is written to output_dir/trace.json.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not JSON ({err}).", "Pass the trace.json that `raytf train --trace` wrote.") from None
    if not isinstance(trace, dict) or not isinstance(trace.get("traceEvents"), list):
        raise ConfigError(f"{path} is not a Chrome trace (no traceEvents list).",
                          "Pass the trace.json that `raytf train --trace` wrote.")
    return trace


def stale_trace_note(path: Path, trace: dict[str, Any]) -> str | None:
    """A warning when the trace is not of the latest run in its output_dir: a later run without
    --trace leaves the earlier trace.json in place, and its summary.json names another run."""
    import json

    directory = path if path.is_dir() else path.parent
    try:
        latest = json.loads((directory / "summary.json").read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None  # no summary beside it (a copied trace): nothing to compare with
    traced = trace.get("otherData", {}).get("run_id")
    if latest and traced != latest:
        return (f"Note: this trace is of run {traced or 'an earlier run'}, not of the latest run in {directory} "
                f"({latest}, which was not traced). Run again with --trace for a fresh one.")
    return None
