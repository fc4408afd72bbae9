"""raytf.observe.steady.CpuWindow: the process's CPU per event after the warm-up, with or without the
last event (a worker's last step waits for the final checkpoint)."""

import time

import pytest

from raytf.observe.steady import CpuWindow, warmup_steps


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_cpu_per_event_counts_the_work_between_events_and_can_leave_out_the_last():
    window = CpuWindow()
    assert window.per_event() == (0.0, 0.0)  # not started
    window.tick()  # before the start: not counted
    window.start()
    for _ in range(3):
        _burn(0.03)
        window.tick()
    time.sleep(0.05)  # an idle last event
    window.tick()
    every, kernel = window.per_event()
    assert 0 <= kernel <= every and every == pytest.approx(90 / 4, rel=0.5)
    busy, _ = window.per_event(skip_last=True)
    assert busy == pytest.approx(30, rel=0.5) and busy > every


def test_the_warm_up_is_a_tenth_of_the_steps_between_1_and_20():
    assert [warmup_steps(n) for n in (1, 50, 150, 10_000)] == [1, 5, 15, 20]
