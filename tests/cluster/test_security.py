"""Token authentication of the embedded cluster, and secrets kept out of output and files.

The refusal tests talk to a real head without (or with a wrong) token and expect Ray to refuse:
with authentication off every one of those requests would succeed and the test would fail.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from raytf.cluster import local as local_cluster
from raytf.cluster.local import LocalCluster
from raytf.errors import ClusterError
from raytf.runtime import private_dir

WRONG = {"Authorization": "Bearer " + "0" * 64}


def http_status(url: str, headers: dict[str, str]) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def without_ray_auth(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in local_cluster.AUTH_VARS}


@pytest.fixture(scope="module")
def secured(ray_cluster):
    """A real head started the way `raytf up` starts it: the suite's shared one (raytf.cluster.local.start,
    its own RAYTF_HOME); these tests only send it requests (a head of their own cost ~10 s)."""
    return ray_cluster


# -- the token file and the process settings ---------------------------------------------------


def test_token_file_is_private_even_with_an_open_umask(tmp_path):
    old = os.umask(0)
    try:
        path = tmp_path / "home" / "auth" / "cluster-1.token"
        local_cluster._write_token(path)
        again = path.read_text()
        local_cluster._write_token(path)  # a stale file of the same port is replaced, not reused
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert re.fullmatch(r"[0-9a-f]{64}", path.read_text()) and path.read_text() != again


@pytest.fixture
def reload_ray_auth_after():
    """Ray caches its auth settings per process: after monkeypatch restored the environment (its
    teardown runs first, as it is set up later), reload them so later tests (the shared cluster's
    drivers) see the session's token mode again."""
    yield
    local_cluster.reload_ray_auth()


def test_token_auth_sets_ray_to_token_mode_and_restores_the_process(reload_ray_auth_after, tmp_path, monkeypatch):
    from ray._raylet import AuthenticationMode, AuthenticationTokenLoader, get_authentication_mode

    token = tmp_path / "t.token"
    token.write_text("a" * 64)
    cluster = LocalCluster(pid=1, gcs_address="127.0.0.1:1", dashboard_url="http://127.0.0.1:1", metrics_port=1,
                           temp_dir="/tmp/raytf-test-none", log_path="/dev/null", num_cpus=1, started_at=0.0,
                           token_path=str(token))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "b" * 64)  # outranks a token path: raytf must clear it
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    with local_cluster.token_auth(cluster):
        assert get_authentication_mode() == AuthenticationMode.TOKEN
        assert "RAY_AUTH_TOKEN" not in os.environ and os.environ["RAY_AUTH_TOKEN_PATH"] == str(token)
        assert AuthenticationTokenLoader.instance().get_token_for_http_header() == {"authorization": "Bearer " + "a" * 64}
    assert (os.environ["RAY_AUTH_MODE"], os.environ["RAY_AUTH_TOKEN"]) == ("disabled", "b" * 64)
    assert "RAY_AUTH_TOKEN_PATH" not in os.environ
    assert get_authentication_mode() == AuthenticationMode.DISABLED


def test_clients_find_the_recorded_clusters_token_by_its_dashboard(raytf_home, tmp_path):
    from raytf.cluster.jobs import follow_command
    from raytf.cluster.record import save_cluster_record

    token = tmp_path / "t.token"
    token.write_text("c" * 64)
    cluster = LocalCluster(pid=1, gcs_address="127.0.0.1:1", dashboard_url="http://127.0.0.1:2", metrics_port=1,
                           temp_dir="/tmp/raytf-test-none", log_path="/dev/null", num_cpus=1, started_at=0.0,
                           token_path=str(token))
    save_cluster_record(cluster.record())
    assert local_cluster.headers_for("http://127.0.0.1:2") == {"Authorization": "Bearer " + "c" * 64}
    assert local_cluster.headers_for("http://127.0.0.1:3") == {}  # not raytf's: Ray's own settings apply
    command = follow_command("raytf-x-1", "http://127.0.0.1:2")
    assert command == f"RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={token} ray job logs --follow raytf-x-1 --address http://127.0.0.1:2"
    assert "c" * 64 not in (raytf_home / "cluster.json").read_text()
    token.unlink()
    with pytest.raises(ClusterError) as gone:
        local_cluster.headers_for("http://127.0.0.1:2")
    assert "raytf down" in gone.value.fix


def test_private_dir_is_closed_to_others_and_refuses_a_planted_one(tmp_path):
    opened = tmp_path / "open"
    opened.mkdir(mode=0o755)
    assert stat.S_IMODE(private_dir(opened).stat().st_mode) == 0o700
    planted = tmp_path / "planted"
    planted.symlink_to(opened)  # a symlink someone left where raytf's temp root goes
    with pytest.raises(ClusterError):
        private_dir(planted)
    if os.getuid() == 0:  # only root can hand a directory to another user
        foreign = tmp_path / "foreign"
        foreign.mkdir()
        os.chown(foreign, 12345, -1)
        with pytest.raises(ClusterError):
            private_dir(foreign)


# -- Ray refuses clients without the token -----------------------------------------------------


@pytest.mark.slow
def test_dashboard_job_and_state_apis_refuse_requests_without_the_token(secured):
    good = local_cluster.auth_headers(secured)
    for path in ("/api/version", "/api/jobs/", "/api/v0/actors", "/api/v0/nodes"):
        url = secured.dashboard_url + path
        assert http_status(url, {}) == 401, path
        assert http_status(url, WRONG) == 403, path
        assert http_status(url, good) == 200, path
    with pytest.raises(ClusterError) as refused:  # what `raytf status` says when the token file was replaced
        local_cluster.nodes(secured.dashboard_url, headers=WRONG)
    assert "403" in refused.value.problem and "raytf down" in refused.value.fix


@pytest.mark.slow
def test_gcs_and_raylet_refuse_grpc_calls_without_the_token(secured):
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc, node_manager_pb2, node_manager_pb2_grpc

    good = [("authorization", local_cluster.auth_headers(secured)["Authorization"])]
    with grpc.insecure_channel(secured.gcs_address) as channel:
        gcs = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        for metadata in ([], [("authorization", WRONG["Authorization"])]):
            with pytest.raises(grpc.RpcError) as refused:
                gcs.GetAllNodeInfo(gcs_service_pb2.GetAllNodeInfoRequest(), metadata=metadata, timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        (node,) = gcs.GetAllNodeInfo(gcs_service_pb2.GetAllNodeInfoRequest(), metadata=good, timeout=10).node_info_list
    with grpc.insecure_channel(f"{local_cluster.HOST}:{node.node_manager_port}") as channel:
        raylet = node_manager_pb2_grpc.NodeManagerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            raylet.GetNodeStats(node_manager_pb2.GetNodeStatsRequest(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        raylet.GetNodeStats(node_manager_pb2.GetNodeStatsRequest(), metadata=good, timeout=10)


@pytest.mark.slow
def test_ray_client_server_refuses_calls_without_the_token(secured):
    import grpc
    import psutil
    from ray.core.generated import ray_client_pb2, ray_client_pb2_grpc

    (port,) = re.findall(r"--ray-client-server-port=(\d+)", " ".join(psutil.Process(secured.pid).cmdline()))
    good = [("authorization", local_cluster.auth_headers(secured)["Authorization"])]
    ping = ray_client_pb2.ClusterInfoRequest(type=ray_client_pb2.ClusterInfoType.PING)
    with grpc.insecure_channel(f"{local_cluster.HOST}:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=60)  # the head starts it a few seconds after the dashboard
        client = ray_client_pb2_grpc.RayletDriverStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            client.ClusterInfo(ping, timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        client.ClusterInfo(ping, metadata=good, timeout=10)


@pytest.mark.slow
def test_a_driver_without_the_token_cannot_connect(secured):
    """A plain `ray.init()` finding the cluster by RAY_ADDRESS, as `raytf env` exports it: without the auth
    exports it is turned away, with them it connects. (tests/cluster/test_attach.py checked the same on a `raytf up`
    cluster; a refused driver costs ~20 s here, so it is checked once.)"""
    connect = "import ray; ray.init(_node_ip_address='127.0.0.1', logging_level='ERROR'); print('CONNECTED')"
    env = dict(without_ray_auth(os.environ), **local_cluster.LOOPBACK_ENV, RAY_ADDRESS=secured.gcs_address)
    refused = subprocess.run([sys.executable, "-c", connect], env=env, capture_output=True, text=True, timeout=180)
    assert refused.returncode != 0 and "CONNECTED" not in refused.stdout
    assert "AuthenticationError" in refused.stderr or "InvalidAuthToken" in refused.stderr, refused.stderr[-2000:]
    allowed = subprocess.run([sys.executable, "-c", connect], env=dict(env, **local_cluster.auth_env(secured)),
                             capture_output=True, text=True, timeout=180)
    assert allowed.returncode == 0 and "CONNECTED" in allowed.stdout, allowed.stderr[-2000:]


# -- nothing prints or stores the token --------------------------------------------------------


def files_holding(root: Path, secret: str, skip: Path | None = None) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and path != skip and secret in path.read_text(errors="replace"):
            found.append(str(path))
    return found


# `raytf up/status/dashboard/down` never print the token nor store it outside its file: checked on the
# lifecycle of tests/cluster/test_local_cluster.py::test_up_status_dashboard_down_lifecycle (one head start for both).
# `raytf train --submit` (a Ray Job whose driver connects with the inherited token) is checked the same way on
# the suite's shared cluster: tests/cluster/test_jobs.py::test_cli_submit_runs_on_the_recorded_local_cluster.
