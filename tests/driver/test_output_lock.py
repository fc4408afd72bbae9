"""One run at a time in an output_dir (raytf.driver.output_lock), without Ray: the lock is the kernel's."""

from __future__ import annotations

import subprocess
import sys

import pytest

from raytf.driver.output_lock import LOCK_NAME, holding
from raytf.errors import ConfigError

HOLD = """
import sys, time
from pathlib import Path
from raytf.driver.output_lock import holding
with holding(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_a_second_run_is_refused_while_the_first_holds_the_directory_and_let_in_after(tmp_path):
    first = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert first.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError) as refused:
            with holding(tmp_path):
                pass
        assert f"pid {first.pid}" in refused.value.problem and "another output_dir" in refused.value.fix
    finally:
        first.communicate("\n", timeout=60)
    assert not (tmp_path / LOCK_NAME).exists()  # a run leaves nothing behind
    with holding(tmp_path):  # free again
        assert (tmp_path / LOCK_NAME).exists()


def test_a_killed_holder_does_not_keep_the_directory(tmp_path):
    first = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    assert first.stdout.readline().strip() == "held"
    first.kill()
    first.wait(timeout=60)
    assert (tmp_path / LOCK_NAME).exists()  # its file stays, its lock does not
    with holding(tmp_path):
        pass


def test_the_lock_is_released_when_the_run_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with holding(tmp_path):
            raise RuntimeError("the run failed")
    with holding(tmp_path):
        pass
