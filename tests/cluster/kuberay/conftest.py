"""Fixtures for the KubeRay provider tests: a fake API server on 127.0.0.1, the real
`kubernetes` client pointed at it, a fake clock, and an isolated $HOME / $RAYTF_HOME."""

from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
from kubernetes import client as k8s
from rich.console import Console

from raytf.cluster.kuberay.client import KubeClient

from .fake_apiserver import FakeApiServer
from .helpers import FakeClock


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test may read the developer's kubeconfig or write their ~/.raytf."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("RAYTF_HOME", str(tmp_path / "raytf-home"))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return home


@pytest.fixture
def fake() -> Iterator[FakeApiServer]:
    with FakeApiServer() as server:
        yield server


@pytest.fixture
def api_client(fake: FakeApiServer) -> Iterator[k8s.ApiClient]:
    with k8s.ApiClient(k8s.Configuration(host=fake.url)) as api:
        yield api


@pytest.fixture
def kube(api_client: k8s.ApiClient) -> KubeClient:
    return KubeClient(api_client)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def console() -> Console:
    # Not a terminal: progress comes out as plain lines, which the tests read back.
    return Console(file=io.StringIO(), width=200, force_terminal=False, color_system=None)


@pytest.fixture
def dashboard_server() -> Iterator[int]:
    """A stand-in Ray dashboard on 127.0.0.1 answering GET /api/version; yields its port."""

    class Handler(BaseHTTPRequestHandler):
        disable_nagle_algorithm = True

        def do_GET(self) -> None:  # noqa: N802 - http.server naming
            body = json.dumps({"version": "fake", "ray_version": "2.60.0", "path": self.path}).encode()
            self.send_response(200 if self.path == "/api/version" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
