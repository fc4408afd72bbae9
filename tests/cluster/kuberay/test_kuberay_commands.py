"""The CLI-facing commands end to end: spec file -> fake API server -> console output and the
cluster record, with the real `kubernetes` client (port-forward websocket included)."""

from __future__ import annotations

import json
import socket
import struct
import urllib.request
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s
from rich.console import Console

from raytf.cluster.kuberay import commands
from raytf.cluster.kuberay.errors import CrdNotInstalled, WaitTimeout
from raytf.cluster.kuberay.manifest import render_raycluster
from raytf.cluster.kuberay.specfile import load_cluster_spec
from raytf.cluster.record import load_cluster_record, save_cluster_record
from raytf.errors import ClusterError, ConfigError

from .fake_apiserver import FakeApiServer, Stuck
from .helpers import CONFIGS, output

CPU = CONFIGS / "kuberay-cpu.yaml"
# A crash in the Kubernetes client's port-forward thread must fail the test, not just warn.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


def test_dry_run_prints_the_manifest_and_touches_nothing(
    fake: FakeApiServer, api_client: k8s.ApiClient, console: Console, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "does-not-exist"))  # would fail if it were read
    assert commands.up(CPU, dry_run=True, timeout=1, kubeconfig=None, console=console, api_client=api_client) is None
    printed = capsys.readouterr().out
    assert yaml.safe_load(printed) == render_raycluster(load_cluster_spec(CPU))
    assert printed.startswith("apiVersion: ray.io/v1\nkind: RayCluster\n")
    assert fake.requests == [] and load_cluster_record() is None and output(console) == ""


def test_bad_spec_fails_before_any_request(fake: FakeApiServer, api_client: k8s.ApiClient, console: Console,
                                          tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(CPU.read_text().replace("min_replicas", "x").replace("    replicas: 4", "    replicas: 4\n    mx_replicas: 2"))
    for dry_run in (True, False):
        with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: worker_groups\[1\]\.mx_replicas: unknown key. Did you mean 'max_replicas'"):
            commands.up(bad, dry_run=dry_run, timeout=1, kubeconfig=None, console=console, api_client=api_client)
    assert fake.requests == []


def test_up_status_scale_down(fake: FakeApiServer, api_client: k8s.ApiClient, console: Console) -> None:
    fake.ready_after = 2
    status = commands.up(CPU, timeout=60, kubeconfig=None, console=console, api_client=api_client,
                         poll_interval=0, check_dashboard=False)
    assert status is not None and status.ready
    text = output(console)
    assert "Created RayCluster 'raytf-cpu' in namespace 'default'." in text
    assert "waiting for 'raytf-cpu': head starting; ps (ps) 0/2, workers (worker) 0/4; HeadPodReady=False" in text
    assert "is ready: ps (ps) 2/2, workers (worker) 4/4" in text
    assert "\x1b[" not in text  # plain lines when the console is not a terminal
    assert load_cluster_record() == {"provider": "kuberay", "name": "raytf-cpu", "namespace": "default",
                                     "kubeconfig": None, "context": None, "spec_path": str(CPU.resolve())}

    # The commands without a spec use the record written by `up`.
    st = commands.status(console=console, api_client=api_client)
    assert st.ready and "RayCluster default/raytf-cpu: ready" in output(console)
    assert "head service: raytf-cpu-head-svc (10.96.0.20)" in output(console)
    assert "endpoints: client=10001, dashboard=8265, gcs-server=6379, metrics=8080" in output(console)

    result = commands.scale("ps", 2, console=console, api_client=api_client)
    assert result.previous == 2 and "Worker group 'ps' of RayCluster 'raytf-cpu': 2 -> 2 replicas." in output(console)

    assert commands.down(console=console, api_client=api_client, poll_interval=0)
    assert "Deleted RayCluster 'raytf-cpu' in namespace 'default'." in output(console)
    assert load_cluster_record() is None
    assert not commands.down(CPU, console=console, api_client=api_client, poll_interval=0)
    assert "did not exist; nothing to delete" in output(console)


def test_up_reports_existing_cluster_that_differs(fake: FakeApiServer, api_client: k8s.ApiClient, console: Console,
                                                  tmp_path: Path) -> None:
    fake.add_cluster(render_raycluster(load_cluster_spec(CPU)), ready=True)
    changed = tmp_path / "changed.yaml"
    changed.write_text(CPU.read_text().replace("replicas: 4", "replicas: 3"))
    commands.up(changed, timeout=60, kubeconfig=None, console=console, api_client=api_client, check_dashboard=False)
    text = output(console)
    assert f"RayCluster 'raytf-cpu' in namespace 'default' already exists and differs from {changed}:" in text
    assert "  - spec.workerGroupSpecs[workers].replicas: cluster has 4, spec says 3" in text
    assert "raytf down" in text and fake.calls("POST") == []


def test_up_timeout_keeps_the_record_for_down(fake: FakeApiServer, api_client: k8s.ApiClient, console: Console) -> None:
    fake.stuck = Stuck("workers", "FailedScheduling", "0/1 nodes are available: 1 Insufficient cpu.")
    with pytest.raises(WaitTimeout, match="raytf-cpu-workers-worker-0 .*Insufficient cpu"):
        commands.up(CPU, timeout=0, kubeconfig=None, console=console, api_client=api_client)
    assert load_cluster_record()["name"] == "raytf-cpu"


def test_crd_missing_through_the_command(fake: FakeApiServer, api_client: k8s.ApiClient, console: Console) -> None:
    fake.crd_installed = False
    with pytest.raises(CrdNotInstalled, match="helm repo add kuberay https://ray-project.github.io/kuberay-helm/"):
        commands.up(CPU, timeout=60, kubeconfig=None, console=console, api_client=api_client)
    assert load_cluster_record() is None


def test_commands_without_spec_need_a_kuberay_record(api_client: k8s.ApiClient, console: Console) -> None:
    with pytest.raises(ClusterError, match="No KubeRay cluster is remembered"):
        commands.status(console=console, api_client=api_client)
    save_cluster_record({"provider": "local", "address": "127.0.0.1:6379"})
    with pytest.raises(ClusterError, match="Pass the cluster spec file"):
        commands.down(console=console, api_client=api_client)


def test_down_leaves_other_records_alone(fake: FakeApiServer, api_client: k8s.ApiClient, console: Console) -> None:
    save_cluster_record({"provider": "local", "address": "127.0.0.1:6379"})
    fake.add_cluster(render_raycluster(load_cluster_spec(CPU)), ready=True)
    assert commands.down(CPU, console=console, api_client=api_client, poll_interval=0)
    assert load_cluster_record() == {"provider": "local", "address": "127.0.0.1:6379"}


def test_dashboard_forwards_through_the_kubernetes_websocket(
    fake: FakeApiServer, api_client: k8s.ApiClient, console: Console, dashboard_server: int,
) -> None:
    fake.forward_to = dashboard_server
    fake.add_cluster(render_raycluster(load_cluster_spec(CPU)), ready=True)
    answers: list[dict] = []

    def browse(url: str) -> None:
        assert url.startswith("http://127.0.0.1:")
        # A client that sends a request and resets the connection without reading the answer.
        rude = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        rude.sendall(b"GET /api/version HTTP/1.0\r\n\r\n")
        rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        rude.close()
        for _ in range(2):
            with urllib.request.urlopen(url + "/api/version", timeout=10) as response:
                answers.append(json.loads(response.read()))

    commands.dashboard(CPU, port=0, console=console, api_client=api_client, until=browse)
    assert [a["path"] for a in answers] == ["/api/version"] * 2
    forwards = fake.calls("GET", "/portforward")
    assert len(forwards) >= 2  # one websocket per connection (the rude one may not get that far)
    assert forwards[0].path == "/api/v1/namespaces/default/pods/raytf-cpu-head-x7k2p/portforward"
    assert forwards[0].query["ports"] == ["8265"]


def test_up_checks_the_dashboard_through_a_port_forward(
    fake: FakeApiServer, api_client: k8s.ApiClient, console: Console, dashboard_server: int,
) -> None:
    fake.forward_to = dashboard_server
    commands.up(CPU, timeout=60, kubeconfig=None, console=console, api_client=api_client, poll_interval=0)
    assert "Dashboard answers through a port-forward" in output(console)
    assert fake.calls("GET", "/portforward")


def test_up_reports_a_failing_port_forward_without_failing(
    fake: FakeApiServer, api_client: k8s.ApiClient, console: Console,
) -> None:
    fake.forward_to = None  # the fake answers the websocket upgrade with 404, as for a vanished pod
    status = commands.up(CPU, timeout=60, kubeconfig=None, console=console, api_client=api_client, poll_interval=0)
    assert status is not None and status.ready
    text = output(console)
    assert "Cluster is ready but its dashboard did not answer through a port-forward" in text
    assert "Pod 'raytf-cpu-head-x7k2p' in namespace 'default' was not found for port-forwarding" in text
    assert len(fake.calls("GET", "/portforward")) == 1  # gave up after the first failed forward
    assert load_cluster_record() is not None
