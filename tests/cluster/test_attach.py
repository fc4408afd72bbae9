"""Your own tools on the cluster `raytf up` started, exactly as the README says: a shell after
`eval "$(raytf env)"` (ray.init, `ray status`, `ray job list`) and `raytf.connect()` in a fresh
Python process. Both run in separate processes with a clean environment, as a user's would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def user_env(home: Path) -> dict[str, str]:
    """A user's shell: raytf's home, the venv's commands on PATH, no Ray settings of this test session."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAYTF_HOME"] = str(home)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def sh(script: str, home: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], cwd="/", env=user_env(home), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def cluster_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("attach-home")
    up = sh("raytf up --num-cpus 1", home)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield home
    finally:
        sh("raytf down", home)


def test_a_shell_after_raytf_env_uses_the_cluster(cluster_home):
    script = """set -e
eval "$(raytf env)"
python -c "import ray; ray.init(logging_level='ERROR'); print('cpus', ray.cluster_resources()['CPU']); print('node', ray.nodes()[0]['NodeManagerAddress'])"
# The autoscaler monitor publishes the first cluster status a few seconds after the head starts
# (later on a loaded machine): poll for it, up to a minute.
for _ in $(seq 120); do
  status=$(ray status)
  case "$status" in *Resources*) break;; esac
  sleep 0.5
done
echo "$status"
ray job list
"""
    result = sh(script, cluster_home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cpus 1.0" in result.stdout and "node 127.0.0.1" in result.stdout
    assert "Resources" in result.stdout and "CPU" in result.stdout  # ray status
    token = next((cluster_home / "auth").glob("cluster-*.token")).read_text().strip()
    assert token not in result.stdout + result.stderr
    env_text = sh("raytf env", cluster_home).stdout
    assert "RAY_AUTH_TOKEN_PATH=" in env_text and token not in env_text


def test_raytf_connect_in_a_fresh_python_process(cluster_home):
    code = """
import ray, raytf
raytf.connect()
@ray.remote
def square(x):
    return x * x
print("resources", ray.cluster_resources()["CPU"], "result", ray.get(square.remote(7)))
"""
    result = subprocess.run([sys.executable, "-c", code], cwd="/", env=user_env(cluster_home), capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resources 1.0 result 49" in result.stdout


# The token is what lets the tools in: the same plain `ray.init()` without `raytf env`'s auth exports is turned
# away (RAY_ADDRESS alone): tests/cluster/test_security.py::test_a_driver_without_the_token_cannot_connect.
