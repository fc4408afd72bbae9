"""TensorFlow's native start-up lines stay out of the terminal unless verbose output is asked for."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from raytf.observe.native_logs import is_native_log_line

REPO = Path(__file__).resolve().parents[2]

# Lines as TensorFlow 2.21 printed them on this kind of machine (no GPU), as the driver saw them.
NATIVE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796108065.020287    2614 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.",
    "E0000 00:00:1796108083.551784    3171 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
    "Failed call to cuInit: UNKNOWN ERROR (303)",
    "I1201 06:51:27.123456   123 cpu_feature_guard.cc:210] This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.",
    "oneDNN custom operations are on. You may see slightly different numerical results due to floating-point round-off.",
    "\x1b[36m(ParameterServer(run=digits-66e8169a, shard 0/1: 17,226 floats, sync, adam lr=0.001) pid=3103)\x1b[0m "
    "I0000 00:00:1796108077.335015    3171 cudart_stub.cc:31] Could not find cuda drivers on your machine.",
]
KEPT = [
    "raytf worker 1: XLA could not compile the step (...); continuing without it",
    "(Worker(run=digits-1, worker 0/2: examples.digits:build_model) pid=7368) my own print from the data function",
    "UserWarning: Do not pass an `input_shape`/`input_dim` argument to a layer.",
    "Traceback (most recent call last):",
]


@pytest.mark.parametrize("line", NATIVE)
def test_native_lines_are_recognised(line):
    assert is_native_log_line(line)


@pytest.mark.parametrize("line", KEPT)
def test_other_lines_are_not(line):
    assert not is_native_log_line(line)


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("RAYTF_VERBOSE", "TF_CPP_MIN_LOG_LEVEL")}
    environment.update(env)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=environment, capture_output=True, text=True,
                          timeout=300)


WRITES_TO_FD_2 = """
import os
from raytf.observe.native_logs import native_stderr_filtered
with native_stderr_filtered():
    os.write(2, b"I0000 00:00:1796108065.020287    2614 cudart_stub.cc:31] Could not find cuda drivers.\\n")
    os.write(2, b"a line of the user's own\\n")
os.write(2, b"after the block\\n")
"""


def test_the_filter_holds_back_native_lines_written_to_fd_2_and_passes_the_rest():
    quiet = run_python(WRITES_TO_FD_2)
    assert quiet.stderr.splitlines() == ["a line of the user's own", "after the block"]
    verbose = run_python(WRITES_TO_FD_2, RAYTF_VERBOSE="1")
    assert len(verbose.stderr.splitlines()) == 3 and "cudart_stub" in verbose.stderr


def test_starting_tensorflow_the_raytf_way_prints_nothing_unless_verbose():
    """A real TensorFlow import and device probe; on a machine without a GPU, verbose shows its CUDA probe."""
    code = "from raytf.runtime import configure_tensorflow; configure_tensorflow(1); import keras; print('ok')"
    quiet = run_python(code)
    assert quiet.returncode == 0 and quiet.stdout.strip() == "ok", quiet.stderr
    assert [line for line in quiet.stderr.splitlines() if line.strip()] == []
    verbose = run_python(code, RAYTF_VERBOSE="1")
    assert any(is_native_log_line(line) for line in verbose.stderr.splitlines()), verbose.stderr


def test_the_actor_modules_leave_tensorflow_to_configure_tensorflow():
    """An actor's class is unpickled before its set-up runs; if that imported TensorFlow, its native
    start-up lines would escape the filter (and its thread settings would come too late)."""
    code = "import sys, raytf.driver.actors, raytf.exchange.server, raytf.replica.worker, raytf.driver.fit; print('tensorflow' in sys.modules)"
    result = run_python(code)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr
