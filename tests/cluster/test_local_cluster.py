"""`raytf up/status/dashboard/down` on a real embedded Ray head, through the real CLI."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from raytf.cluster import local as local_cluster
from raytf.cluster.local import LocalCluster


def raytf(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raytf.cli", *args], capture_output=True, text=True, env=env, timeout=180)


def listening_addresses(cluster: LocalCluster) -> set[str]:
    pids = set(local_cluster._cluster_processes(cluster))
    addresses = set()
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            addresses.add(conn.laddr.ip)
    return addresses


@pytest.mark.slow
def test_up_status_dashboard_down_lifecycle(raytf_home, tmp_path):
    """Also test_security.py's test_cluster_lifecycle_never_prints_or_stores_the_token: no command prints
    the token and no file but its own holds it (one lifecycle for both: a head start costs ~10 s here)."""
    from tests.cluster.test_security import files_holding, without_ray_auth

    env = dict(without_ray_auth(os.environ), RAYTF_HOME=str(raytf_home))  # a user's shell: no Ray settings of this session
    env.pop(local_cluster.METRICS_INTERVAL_ENV, None)  # (the test cluster's own setting)
    outputs = []

    def raytf_cli(*args: str, env: dict) -> subprocess.CompletedProcess:
        result = raytf(*args, env=env)
        outputs.append(result.stdout + result.stderr)
        return result

    bystander = local_cluster.start(num_cpus=1)  # someone else's Ray on this machine: down must not touch it
    try:
        first = raytf_cli("up", "--warm", "1", env=env)
        assert first.returncode == 0, first.stderr
        assert "Started local Ray cluster" in first.stdout
        assert "Warm pool:   1 processes on 1 node(s)" in " ".join(first.stdout.split("\n"))
        record = json.loads((raytf_home / "cluster.json").read_text())
        cluster = LocalCluster.from_record(record)
        assert cluster.dashboard_url in first.stdout and cluster.gcs_address in first.stdout
        # Token authentication is on: the API answers with the cluster's token and refuses without it.
        token_file = Path(cluster.token_path)
        token = token_file.read_text().strip()
        assert token_file.parent == raytf_home / "auth" and stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
        request = urllib.request.Request(cluster.dashboard_url + "/api/version", headers=local_cluster.auth_headers(cluster))
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(cluster.dashboard_url + "/api/version", timeout=5)
        assert refused.value.code == 401
        assert bystander.token_path != cluster.token_path and token_file.read_text() != Path(bystander.token_path).read_text()
        # Its processes export metrics every 2 s (Ray's default 10 s hides a short run from `raytf status`).
        environment = Path(f"/proc/{cluster.pid}/environ").read_bytes().split(b"\0")
        assert f"{local_cluster.METRICS_INTERVAL_ENV}=2000".encode() in environment
        # Ray's sockets and logs live under a temp root only this user may enter.
        assert stat.S_IMODE(Path(cluster.temp_dir).parent.stat().st_mode) == 0o700

        # Everything the cluster listens on is loopback only.
        addresses = listening_addresses(cluster)
        assert addresses, "the cluster listens somewhere"
        assert all(a in ("127.0.0.1", "::ffff:127.0.0.1") for a in addresses), addresses

        second = raytf_cli("up", env=env)
        assert second.returncode == 0 and "Already running" in second.stdout
        assert json.loads((raytf_home / "cluster.json").read_text())["pid"] == cluster.pid

        status = raytf_cli("status", env=env)
        assert status.returncode == 0, status.stderr
        assert "ALIVE" in status.stdout and "127.0.0.1 (head)" in status.stdout and cluster.gcs_address in status.stdout
        assert "warm pool" in status.stdout and "idle" in status.stdout  # its one process, taken by no run

        dashboard = raytf_cli("dashboard", env=env)
        assert dashboard.returncode == 0 and dashboard.stdout.strip() == cluster.dashboard_url
        stored = files_holding(raytf_home, token, skip=token_file) + files_holding(Path(cluster.temp_dir), token)

        down = raytf_cli("down", env=env)
        assert down.returncode == 0 and "Stopped the local Ray cluster" in down.stdout
        assert not local_cluster.is_alive(cluster)
        assert local_cluster._cluster_processes(cluster) == []
        assert not (raytf_home / "cluster.json").exists()
        assert not token_file.exists(), "a stopped cluster's token must not outlive it"
        assert local_cluster.is_alive(bystander), "raytf down stopped a cluster it did not start"

        after = raytf_cli("status", env=env)
        assert after.returncode == 1 and "No raytf cluster is up" in after.stdout
        again = raytf_cli("down", env=env)
        assert again.returncode == 0 and "nothing to stop" in again.stdout
        leaked = [i for i, text in enumerate(outputs) if token in text]
        assert leaked == [], f"the token appears in the output of commands {leaked}"
        assert stored == [], f"the token is stored outside its file: {stored}"
    finally:
        raytf("down", env=env)  # a failed assertion must not leave the cluster `raytf up` started running
        local_cluster.stop(bystander)


def test_stale_record_is_dropped(raytf_home):
    from raytf.cluster.connection import recorded_local_cluster
    from raytf.cluster.record import save_cluster_record

    dead = LocalCluster(pid=2**22 + 12345, gcs_address="127.0.0.1:1", dashboard_url="http://127.0.0.1:1", metrics_port=1,
                        temp_dir="/tmp/raytf-test-none", log_path="/dev/null", num_cpus=1, started_at=0.0)
    save_cluster_record(dead.record())
    assert recorded_local_cluster() is None
    assert not (raytf_home / "cluster.json").exists()


def test_record_without_a_token_path_still_loads(raytf_home):
    # Clusters recorded before raytf turned token authentication on stay manageable (`raytf down`).
    record = {"provider": "local", "pid": 1, "gcs_address": "127.0.0.1:1", "dashboard_url": "http://127.0.0.1:1",
              "metrics_port": 1, "temp_dir": "/tmp/raytf-test-none", "log_path": "/dev/null", "num_cpus": 1, "started_at": 0.0}
    cluster = LocalCluster.from_record(record)
    assert cluster.token_path == "" and local_cluster.auth_headers(cluster) == {} and local_cluster.auth_env(cluster) == {}
