"""The 127.0.0.1 side of the dashboard port-forward and the dashboard HTTP check.

The remote side is a plain local socket here; test_kuberay_commands.py drives the real
`kubernetes.stream.portforward` websocket against the fake API server.
"""

from __future__ import annotations

import json
import socket
import threading
import urllib.request

import pytest

from raytf.cluster.kuberay.client import KubeClient
from raytf.cluster.kuberay.dashboard import dashboard_responds, require_loopback, wait_for_dashboard
from raytf.cluster.kuberay.errors import Forbidden
from raytf.cluster.kuberay.manifest import render_raycluster
from raytf.cluster.kuberay.portforward import LocalForward, _close_gracefully, head_dashboard_target
from raytf.cluster.kuberay.specfile import load_cluster_spec
from raytf.errors import ClusterError

from .fake_apiserver import FakeApiServer
from .helpers import CONFIGS, FakeClock

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


def to_port(port: int):
    return lambda: socket.create_connection(("127.0.0.1", port))


def test_forward_pipes_http_both_ways(dashboard_server: int) -> None:
    with LocalForward(to_port(dashboard_server)) as forward:
        assert forward.url == f"http://127.0.0.1:{forward.port}" and forward.port != dashboard_server
        for _ in range(3):  # each connection gets its own remote stream
            with urllib.request.urlopen(forward.url + "/api/version", timeout=5) as response:
                assert json.loads(response.read())["path"] == "/api/version"
    assert forward.errors == []


def test_remote_is_closed_without_a_reset() -> None:
    # Control: closing a socket with unread bytes resets the far end. That reset is what kills the
    # Kubernetes client's port-forward thread (it does not handle ConnectionResetError).
    ours, theirs = socket.socketpair()
    theirs.sendall(b"unread")
    ours.close()
    with pytest.raises(ConnectionResetError):
        theirs.recv(1)
    theirs.close()
    # The forward's way: half-close, drain, close; the far end sees a clean EOF.
    ours, theirs = socket.socketpair()
    theirs.sendall(b"unread")
    closer = threading.Thread(target=_close_gracefully, args=(ours,))
    closer.start()
    theirs.settimeout(5)
    assert theirs.recv(1) == b""
    theirs.close()
    closer.join(5)
    assert not closer.is_alive() and ours.fileno() == -1


def test_listener_is_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback only"):
        LocalForward(to_port(1), host="0.0.0.0")
    forward = LocalForward(to_port(1))
    try:
        assert forward.host == "127.0.0.1" and forward._listener.getsockname()[0] == "127.0.0.1"
    finally:
        forward.close()
    assert forward._listener.fileno() == -1


def test_busy_port_is_a_cluster_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        with pytest.raises(ClusterError, match=r"Cannot listen on 127\.0\.0\.1:\d+.*--port"):
            LocalForward(to_port(1), port=taken.getsockname()[1])


def test_failed_remote_is_recorded_and_connection_closed() -> None:
    def refuse() -> socket.socket:
        raise Forbidden.make("create", "pods/portforward", "default", "no")

    with LocalForward(refuse) as forward:
        with socket.create_connection(("127.0.0.1", forward.port), timeout=5) as conn:
            assert conn.recv(10) == b""  # closed without data
    assert len(forward.errors) == 1 and "pods/portforward" in forward.errors[0]


def test_head_target_needs_ready_head(fake: FakeApiServer, kube: KubeClient) -> None:
    fake.add_cluster(render_raycluster(load_cluster_spec(CONFIGS / "kuberay-cpu.yaml")))
    with pytest.raises(ClusterError, match="head pod of RayCluster 'raytf-cpu'.*not running and ready"):
        head_dashboard_target(kube, "raytf-cpu", "default")
    fake.ready_after = 0
    assert head_dashboard_target(kube, "raytf-cpu", "default") == ("raytf-cpu-head-x7k2p", 8265)


def test_dashboard_check_against_local_server(dashboard_server: int) -> None:
    assert dashboard_responds(f"http://127.0.0.1:{dashboard_server}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert not dashboard_responds(f"http://127.0.0.1:{closed}", timeout=1)
    with pytest.raises(ValueError, match="only talks to the dashboard through 127.0.0.1"):
        require_loopback("http://10.0.0.5:8265")


def test_wait_for_dashboard_polls_until_it_answers(clock: FakeClock) -> None:
    answers = iter([False, False, True])
    seen: list[str] = []

    def check(url: str) -> bool:
        seen.append(url)
        return next(answers)

    assert wait_for_dashboard("http://127.0.0.1:9", timeout=10, poll_interval=1, check=check, clock=clock, sleep=clock.sleep)
    assert seen == ["http://127.0.0.1:9"] * 3 and clock.sleeps == [1, 1]
    assert not wait_for_dashboard("http://127.0.0.1:9", timeout=3, poll_interval=2, check=lambda u: False,
                                  clock=clock, sleep=clock.sleep)
    assert clock.sleeps[2:] == [2, 1]
