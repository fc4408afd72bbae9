"""`raytf train` from the command line with no cluster up: an embedded one for the run, gone after."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from raytf.observe.native_logs import is_native_log_line
from tests.conftest import ROOT
from tests.exchange.test_policies import assert_one_async_worker_trains_on_parameters_one_version_old

pytestmark = pytest.mark.slow


def test_train_without_a_cluster_starts_and_stops_an_embedded_one(raytf_home, tmp_path):
    """The run is one async worker's: tests/exchange/test_policies.py::test_one_async_worker_trains_on_parameters_one_
    version_old is checked on its summary (one run for both: a run costs ~20 s here)."""
    env = dict(os.environ, RAYTF_HOME=str(raytf_home))
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "raytf.cli", "train", "examples/digits.yaml", "--plain",
         "--set", "steps=60", "--set", f"output_dir={out}", "--set", "distribution.mode=async",
         "--set", "distribution.workers=1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    output = (result.stdout + result.stderr).splitlines()
    assert [line for line in output if is_native_log_line(line)] == [], "TensorFlow's native logs reached the terminal"
    assert "Traceback" not in result.stdout + result.stderr
    assert "starting an embedded local Ray cluster" in result.stdout
    assert "Stopped the embedded cluster." in result.stdout
    assert "[raytf] step 60/60" in result.stdout and "staleness" in result.stdout
    assert "raytf summary" in result.stdout and "eval accuracy" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "async" and summary["steps"] == 60 and summary["ephemeral_cluster"] is True
    assert_one_async_worker_trains_on_parameters_one_version_old(summary, steps=60)
    breakdown = summary["startup_breakdown"]
    assert breakdown["command"] > 0 and breakdown["cluster_start"] > 0  # counted from the process's start
    assert breakdown["total"] == pytest.approx(summary["startup_seconds"], abs=0.01)
    assert not (raytf_home / "cluster.json").exists(), "an embedded run must not be remembered as `raytf up`'s"
    # The embedded head's processes are gone: nothing names its temp dir any more.
    assert head_leftovers(raytf_home) == []


def head_leftovers(raytf_home) -> list[int]:
    """Processes of the embedded head the run started (whatever names its temp dir), not zombies."""
    (log,) = (raytf_home / "logs").glob("head-*.log")
    temp_dir = f"/tmp/raytf-{os.getuid()}/{log.stem.split('-')[1]}/"
    return [p.pid for p in psutil.process_iter(["cmdline", "status"])
            if p.info["status"] != psutil.STATUS_ZOMBIE and any(temp_dir in a for a in p.info["cmdline"] or [])]


def test_sigterm_while_a_run_starts_takes_its_embedded_cluster_down(raytf_home, tmp_path):
    """SIGTERM before training starts (here while the driver imports TensorFlow and checks the model,
    the head starting beside it) ends the command as Ctrl-C does, and the head it started is stopped,
    not left running."""
    env = dict(os.environ, RAYTF_HOME=str(raytf_home))
    run = subprocess.Popen([sys.executable, "-m", "raytf.cli", "train", "examples/digits.yaml", "--plain",
                            "--set", f"output_dir={tmp_path / 'run'}"],
                           cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list((raytf_home / "logs").glob("head-*.log")):  # the head is being started
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()
            time.sleep(0.05)
        run.send_signal(signal.SIGTERM)
        out, err = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode == 130, out[-2000:] + err[-2000:]
    assert "Interrupted" in err and "Traceback" not in out + err
    assert head_leftovers(raytf_home) == []


# `raytf train --verbose` (TensorFlow's native lines of the driver and of the actors let through) is checked on
# the interrupted CLI run of tests/driver/test_faults.py::test_ctrl_c_writes_a_checkpoint_and_resume_finishes_the_run.
