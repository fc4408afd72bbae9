"""The per-step timeline (`raytf.observe.trace`): the recorder, the Chrome trace it becomes, the config
key and the CLI flag (pure Python, no Ray or TensorFlow); and one traced run on the session's
Ray cluster (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from raytf.config import config_from_dict
from raytf.errors import ConfigError
from raytf.observe.trace import (
    DRIVER_TID,
    SERVER_PHASES,
    WORKER_PHASES,
    PhaseRecorder,
    Track,
    chrome_trace,
    mark,
    phase_means,
)

BASE = {"model": "m:f", "data": {"train": "d:f"}, "loss": "mse"}


def worker_track(steps: int, capacity: int = 1000, name: str = "worker 0", node: str = "n1") -> Track:
    """A worker's timeline recorded the way `Worker.run` records it: phases chained inside each step."""
    recorder = PhaseRecorder(capacity)
    recorder.threads[0] = "step loop"
    for step in range(1, steps + 1):
        started = current = recorder.mark()
        for phase in WORKER_PHASES:
            current = recorder.record(phase, current, step)
        recorder.record("step", started, step, end=current)
    return recorder.track(name, node=node, os_pid=123)


def x_events(trace: dict) -> list[dict]:
    return [e for e in trace["traceEvents"] if e["ph"] == "X"]


def process_names(trace: dict) -> dict[int, str]:
    return {e["pid"]: e["args"]["name"] for e in trace["traceEvents"] if e["ph"] == "M" and e["name"] == "process_name"}


# -- the recorder -------------------------------------------------------------------------------

def test_the_recorder_keeps_the_newest_events_in_its_preallocated_ring():
    recorder = PhaseRecorder(5)
    slots = recorder._events
    start = mark()
    for step in range(12):
        recorder.record("compute", start, step)
    assert recorder._events is slots and len(slots) == 5, "recording must not grow the list"
    track = recorder.track("worker 0")
    assert [e[1] for e in track.events] == [7, 8, 9, 10, 11]  # oldest first
    assert track.dropped == 7


def test_a_recorder_that_is_not_full_returns_what_it_has():
    track = PhaseRecorder(10).track("ps 0")
    assert track.events == () and track.dropped == 0
    recorder = PhaseRecorder(10)
    recorder.record("apply", mark(), 3, tid=1)
    (event,) = recorder.track("ps 0").events
    assert event[:3] == ("apply", 3, 1) and event[4] >= event[3]


def test_a_recorder_needs_room_for_one_event():
    with pytest.raises(ValueError, match="at least 1"):
        PhaseRecorder(0)


def test_record_chains_phases_end_to_start_and_measures_cpu_and_faults():
    recorder = PhaseRecorder(10)
    started = recorder.mark()
    deadline = time.thread_time_ns() + 20_000_000
    while time.thread_time_ns() < deadline:  # 20 ms of this thread's CPU
        pass
    after_cpu = recorder.record("compute", started, 1)
    buffer = bytearray(32 << 20)  # fresh pages, touched: minor faults in this thread
    for offset in range(0, len(buffer), 4096):
        buffer[offset] = 1
    recorder.record("copy_out", after_cpu, 1)
    compute, copy_out = recorder.track("worker 0").events
    assert compute[4] == copy_out[3], "a phase starts where the last one ended"
    assert compute[5] >= 20_000_000 and compute[6] >= 19_000_000  # this thread's CPU; the process's includes it
    assert copy_out[7] > 0, "touching 32 MiB of new memory faults pages in"


def test_threads_record_at_once_without_losing_events():
    recorder = PhaseRecorder(4 * 500)

    def calls(worker: int) -> None:
        start = mark()
        for step in range(500):
            recorder.record("push", start, step, tid=worker)

    threads = [threading.Thread(target=calls, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    events = recorder.track("ps 0").events
    assert len(events) == 2000
    assert {tid: sorted(e[1] for e in events if e[2] == tid) for tid in range(4)} == {t: list(range(500)) for t in range(4)}


def test_the_clock_is_one_clock_for_every_process_of_the_machine():
    before = mark()[0]
    child = subprocess.run([sys.executable, "-c", "import time; print(time.clock_gettime_ns(time.CLOCK_MONOTONIC))"],
                           capture_output=True, text=True, check=True)
    after = mark()[0]
    assert before < int(child.stdout) < after


def test_the_exchange_traces_each_push_s_barrier_wait_on_its_worker_s_timeline():
    from raytf.exchange import Exchange, Push, make_policy

    class Shard:  # the exchange's backend, without TensorFlow
        def apply(self, grads): pass
        def publish(self, version, worker): pass
        def checkpoint(self, version): pass

    recorder = PhaseRecorder(10)
    ex = Exchange(make_policy("sync", 2), Shard(), workers=2, target=10, tracer=recorder)
    first = threading.Thread(target=ex.push, args=(Push(0, 0, steps_done=1), 1.0))
    first.start()
    deadline = time.monotonic() + 10
    while ex.stats().pushes < 1:  # worker 0 is in (and waits at the barrier)
        assert time.monotonic() < deadline, "worker 0's push never arrived"
    second_arrives = mark()[0]
    ex.push(Push(1, 0, steps_done=1), 1.0)
    first.join(10)
    assert not first.is_alive()
    waits = {e[2]: e for e in recorder.track("ps 0").events}
    assert set(waits) == {0, 1} and all(e[0] == "wait" and e[1] == 1 for e in waits.values())
    assert waits[0][3] < second_arrives <= waits[0][4], "worker 0 waited at the barrier until worker 1 came"


# -- the Chrome trace ---------------------------------------------------------------------------

def test_chrome_trace_has_one_named_process_per_track_and_complete_events():
    server = PhaseRecorder(100)
    server.threads.update({0: "calls of worker 0", DRIVER_TID: "driver's calls"})
    for step in (1, 2):
        started = current = server.mark()
        for phase in SERVER_PHASES:
            current = server.record(phase, current, step, tid=0)
        server.record("push", started, step, tid=0, end=current)
    tracks = [worker_track(3), worker_track(3, name="worker 1"), server.track("ps 0", node="n1")]
    trace = json.loads(json.dumps(chrome_trace(tracks)))  # plain JSON all the way
    assert trace["displayTimeUnit"] == "ms" and trace["otherData"]["aligned"] is True
    assert process_names(trace) == {1: "worker 0", 2: "worker 1", 3: "ps 0"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"}
    assert threads == {(1, 0): "step loop", (2, 0): "step loop", (3, 0): "calls of worker 0",
                       (3, DRIVER_TID): "driver's calls"}
    events = x_events(trace)
    assert len(events) == 2 * 3 * (len(WORKER_PHASES) + 1) + 2 * (len(SERVER_PHASES) + 1)
    for event in events:
        assert {"name", "cat", "ph", "ts", "dur", "pid", "tid", "args"} <= set(event)
        assert event["ts"] >= 0 and event["dur"] >= 0
        assert {"step", "cpu_ms", "process_cpu_ms", "minor_faults", "major_faults"} <= set(event["args"])
    assert min(e["ts"] for e in events) == 0
    assert {e["cat"] for e in events} == {"worker", "ps"}
    for pid in (1, 2, 3):
        stamps = [e["ts"] for e in events if e["pid"] == pid]
        assert stamps == sorted(stamps), "each track's events in time order"


def test_every_phase_of_a_step_lies_within_the_step():
    trace = chrome_trace([worker_track(4)])
    events = x_events(trace)
    steps = {e["args"]["step"]: e for e in events if e["name"] == "step"}
    assert sorted(steps) == [1, 2, 3, 4]
    for event in events:
        if event["name"] == "step":
            continue
        parent = steps[event["args"]["step"]]
        assert parent["ts"] <= event["ts"] and event["ts"] + event["dur"] <= parent["ts"] + parent["dur"] + 0.001
    first = [e["name"] for e in events if e["args"]["step"] == 1]
    assert first == ["step", *WORKER_PHASES], "the step first, then its phases in order"
    means = phase_means(trace)["worker 0"]
    assert set(means) == {"step", *WORKER_PHASES} and all(v >= 0 for v in means.values())


def test_tracks_of_several_nodes_say_so():
    trace = chrome_trace([worker_track(1, node="aaaaaaaaaaaa"), worker_track(1, name="worker 1", node="bbbbbbbbbbbb")])
    assert trace["otherData"]["aligned"] is False
    assert set(process_names(trace).values()) == {"worker 0 (node aaaaaaaa)", "worker 1 (node bbbbbbbb)"}


def test_an_empty_trace_is_still_valid():
    trace = chrome_trace([Track("worker 0", ())])
    assert x_events(trace) == [] and process_names(trace) == {1: "worker 0"}


# -- config and CLI ------------------------------------------------------------------------------

def test_trace_is_off_by_default_and_set_like_any_key():
    assert config_from_dict(BASE).trace.enabled is False
    cfg = config_from_dict(BASE, ["trace.enabled=true", "trace.max_steps=50"])
    assert cfg.trace.enabled is True and cfg.trace.max_steps == 50


@pytest.mark.parametrize("override, problem", [
    pytest.param("trace.max_steps=0", "--set trace.max_steps=0: trace.max_steps: input should be greater than or equal to 1",
                 id="max-steps-zero"),
    pytest.param("trace.enable=true", "unknown key 'trace.enable'", id="typo"),
])
def test_bad_trace_keys_name_the_key(override, problem):
    with pytest.raises(ConfigError) as caught:
        config_from_dict(BASE, [override])
    assert problem in caught.value.problem
    if "unknown" in problem:
        assert "Did you mean 'trace.enabled'?" in caught.value.fix


def test_train_trace_flag_sets_the_config_key(tmp_path, monkeypatch):
    """--trace goes through the --set mechanism: a config whose `trace` is not a mapping says so
    (before anything starts)."""
    from typer.testing import CliRunner

    from raytf import cli

    monkeypatch.setenv("RAYTF_HOME", str(tmp_path / "home"))
    config = tmp_path / "run.yaml"
    config.write_text("model: m:f\ndata: {train: d:f}\nloss: mse\ntrace: true\n")
    result = CliRunner().invoke(cli.app, ["train", str(config), "--trace"])
    assert result.exit_code == 2
    assert "--set 'trace.enabled=true'" in result.output and "'trace' is a bool, not a mapping" in result.output


# -- what a traced run writes (checked on a real run in tests/driver/test_training.py) ------------------------------------------------------------------------

def assert_a_trace_of_every_actor(path, servers: int, kept_steps: list[int]) -> None:
    """What a traced run's trace.json must hold: one named track per actor, every worker and server
    phase, durations >= 0, the newest `kept_steps` of each worker, phases within their step and
    barrier waits within their push. Used by a real traced run in tests/driver/test_training.py
    (test_sync_sgd_equals_averaged_gradients_applied_by_hand[object_store]: tracing on must not change
    the numbers, and a run costs ~20 s here, so one run checks both)."""
    trace = json.loads(path.read_text())
    summary = json.loads((path.parent / "summary.json").read_text())
    assert trace["otherData"]["run_id"] == summary["run_id"], "the trace names its run"
    names = process_names(trace)
    assert sorted(names.values()) == [*(f"ps {i}" for i in range(servers)), "worker 0", "worker 1"]
    events = x_events(trace)
    assert all(e["dur"] >= 0 and e["ts"] >= 0 for e in events)
    phases = {name: {e["name"] for e in events if e["pid"] == pid} for pid, name in names.items()}
    for worker in ("worker 0", "worker 1"):
        assert phases[worker] == {"step", *WORKER_PHASES}, phases[worker]
        steps = {e["args"]["step"]: e for e in events if names[e["pid"]] == worker and e["name"] == "step"}
        assert sorted(steps) == kept_steps, "the ring keeps the newest max_steps steps"
        for e in events:
            parent = steps.get(e["args"]["step"]) if names[e["pid"]] == worker else None
            if parent is not None and e is not parent:
                assert parent["ts"] <= e["ts"] and e["ts"] + e["dur"] <= parent["ts"] + parent["dur"] + 0.001
    for server in (f"ps {i}" for i in range(servers)):
        assert {"push", *SERVER_PHASES} <= phases[server], phases[server]
        pushes = [e for e in events if names[e["pid"]] == server and e["name"] == "push"]
        assert {e["tid"] for e in pushes} == {0, 1}, "one timeline per worker's calls"
        for wait in (e for e in events if names[e["pid"]] == server and e["name"] == "wait"):
            assert any(p["tid"] == wait["tid"] and p["args"]["step"] == wait["args"]["step"]
                       and p["ts"] <= wait["ts"] and wait["ts"] + wait["dur"] <= p["ts"] + p["dur"] + 0.001
                       for p in pushes), "a barrier wait lies within its push"


# -- reading a trace back (`raytf trace`) -------------------------------------------------------

def test_phase_stats_skip_the_first_tenth_and_keep_the_order_of_a_step(tmp_path):
    from raytf.observe.trace import phase_stats

    trace = chrome_trace([worker_track(40), worker_track(40, name="worker 1")])
    first, rows = phase_stats(trace)
    assert first == 4  # steps 1-3 (compile, cold caches) are left out
    assert [(r.track, r.phase) for r in rows[:len(WORKER_PHASES) + 1]] == [("worker 0", "step"), *[("worker 0", p) for p in WORKER_PHASES]]
    assert {r.track for r in rows} == {"worker 0", "worker 1"}
    assert all(r.count == 37 for r in rows)
    step = next(r for r in rows if r.phase == "step")
    parts = sum(r.mean_ms for r in rows if r.track == "worker 0" and r.phase != "step")
    assert parts <= step.mean_ms + 0.01  # the phases lie within the step
    _, rows = phase_stats(trace, from_step=31)
    assert all(r.count == 10 for r in rows)


def test_raytf_trace_prints_the_phases_of_a_written_trace(tmp_path):
    from typer.testing import CliRunner

    from raytf import cli

    (tmp_path / "trace.json").write_text(json.dumps(chrome_trace([worker_track(20)])))
    result = CliRunner().invoke(cli.app, ["trace", str(tmp_path), "--from-step", "5"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "phases from step 5 on" in result.output
    assert all(phase in result.output for phase in WORKER_PHASES)


@pytest.mark.parametrize("name, text, expected", [
    pytest.param("nothing.json", None, ["does not exist", "--trace"], id="missing"),
    pytest.param("bad.json", "[1, 2]", ["not a Chrome trace", "raytf train --trace"], id="not-a-trace"),
    pytest.param("broken.json", "{", ["is not JSON"], id="not-json"),
])
def test_raytf_trace_bad_input(tmp_path, name, text, expected):
    from typer.testing import CliRunner

    from raytf import cli

    if text is not None:
        (tmp_path / name).write_text(text)
    result = CliRunner().invoke(cli.app, ["trace", str(tmp_path / name)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert all(fragment in result.output for fragment in expected), result.output


def test_raytf_trace_says_when_the_trace_is_not_of_the_latest_run(tmp_path):
    from typer.testing import CliRunner

    from raytf import cli

    (tmp_path / "trace.json").write_text(json.dumps(chrome_trace([worker_track(20)], run_id="m-aaaa")))
    (tmp_path / "summary.json").write_text(json.dumps({"run_id": "m-aaaa", "trace": "trace.json"}))
    fresh = CliRunner().invoke(cli.app, ["trace", str(tmp_path)])
    assert fresh.exit_code == 0 and "not of the latest run" not in fresh.output
    (tmp_path / "summary.json").write_text(json.dumps({"run_id": "m-bbbb"}))  # a later run without --trace
    stale = CliRunner().invoke(cli.app, ["trace", str(tmp_path / "trace.json")])
    assert stale.exit_code == 0 and "run m-aaaa, not of the latest run" in stale.stderr and "m-bbbb" in stale.stderr
