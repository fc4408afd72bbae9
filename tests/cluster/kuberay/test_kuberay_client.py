"""The Kubernetes boundary: the real `kubernetes` client against the fake API server, and the
translation of its failures into raytf errors that name the problem and the fix."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s

from raytf.cluster.kuberay.client import KubeClient
from raytf.cluster.kuberay.errors import (
    HELM_INSTALL,
    AlreadyExists,
    CrdNotInstalled,
    Forbidden,
    KubeconfigError,
    KubeUnreachable,
    NotFound,
)
from raytf.cluster.kuberay.kubeconfig import build_api_client, current_context
from raytf.cluster.kuberay.manifest import render_raycluster
from raytf.cluster.kuberay.specfile import load_cluster_spec
from raytf.errors import ClusterError

from .fake_apiserver import FakeApiServer, Stuck
from .helpers import CONFIGS


def cpu_manifest(namespace: str = "default") -> dict:
    manifest = render_raycluster(load_cluster_spec(CONFIGS / "kuberay-cpu.yaml"))
    manifest["metadata"]["namespace"] = namespace
    return manifest


def test_create_get_list(fake: FakeApiServer, kube: KubeClient) -> None:
    assert kube.get_cluster("raytf-cpu", "default") is None
    created = kube.create_cluster(cpu_manifest())
    assert created["metadata"]["name"] == "raytf-cpu"
    (post,) = fake.calls("POST")
    assert post.path == "/apis/ray.io/v1/namespaces/default/rayclusters"
    assert post.body["spec"]["workerGroupSpecs"][0]["groupName"] == "ps"
    assert kube.get_cluster("raytf-cpu", "default")["spec"]["rayVersion"] == "2.60.0"
    assert [c["metadata"]["name"] for c in kube.list_clusters("default")] == ["raytf-cpu"]


def test_crd_missing_names_the_helm_command(fake: FakeApiServer, kube: KubeClient) -> None:
    fake.crd_installed = False
    for call in (lambda: kube.get_cluster("raytf-cpu", "default"), lambda: kube.create_cluster(cpu_manifest()),
                 lambda: kube.list_clusters("default")):
        with pytest.raises(CrdNotInstalled) as info:
            call()
        assert HELM_INSTALL in str(info.value)
        assert "helm install kuberay-operator kuberay/kuberay-operator --version 1.7.0" in str(info.value)
        assert fake.url in str(info.value)


def test_forbidden_names_verb_resource_namespace(fake: FakeApiServer, kube: KubeClient) -> None:
    fake.forbidden = {("create", "rayclusters"), ("list", "pods")}
    with pytest.raises(Forbidden) as info:
        kube.create_cluster(cpu_manifest("team-a"))
    message = str(info.value)
    assert "create rayclusters.ray.io in namespace 'team-a'" in message
    assert 'User "alice" cannot create resource "rayclusters"' in message
    assert "kubectl auth can-i create rayclusters.ray.io -n team-a" in message
    with pytest.raises(Forbidden, match="list pods in namespace 'default'"):
        kube.list_pods("default", "ray.io/cluster=x")


def test_conflict_names_the_taken_name(fake: FakeApiServer, kube: KubeClient) -> None:
    kube.create_cluster(cpu_manifest())
    with pytest.raises(AlreadyExists) as info:
        kube.create_cluster(cpu_manifest())
    assert "A RayCluster named 'raytf-cpu' already exists in namespace 'default'" in str(info.value)
    assert "raytf down" in str(info.value)


def test_missing_namespace(fake: FakeApiServer, kube: KubeClient) -> None:
    fake.missing_namespaces = {"nowhere"}
    with pytest.raises(NotFound, match="kubectl create namespace nowhere"):
        kube.create_cluster(cpu_manifest("nowhere"))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_names_the_host() -> None:
    host = f"http://127.0.0.1:{closed_port()}"
    with k8s.ApiClient(k8s.Configuration(host=host)) as api:
        with pytest.raises(KubeUnreachable) as info:
            KubeClient(api).get_cluster("raytf-cpu", "default")
    message = str(info.value)
    assert f"Cannot reach the Kubernetes API server at {host}" in message
    assert "Connection refused" in message and "kubectl cluster-info" in message
    assert isinstance(info.value, ClusterError)


def test_pods_events_and_service(fake: FakeApiServer, kube: KubeClient) -> None:
    fake.stuck = Stuck("workers", "FailedScheduling", "0/1 nodes are available: 1 Insufficient cpu.")
    kube.create_cluster(cpu_manifest())
    pods = kube.list_pods("default", "ray.io/cluster=raytf-cpu,ray.io/group=workers")
    assert [p.name for p in pods] == [f"raytf-cpu-workers-worker-{i}" for i in range(4)]
    assert all(p.phase == "Pending" and not p.ready for p in pods)
    assert pods[0].waiting_reasons == ("ContainerCreating",)
    events = kube.list_events("default", pods[0].name)
    assert {(e.type, e.reason) for e in events} == {("Normal", "Scheduled"), ("Warning", "FailedScheduling")}
    assert fake.calls("GET", "/events")[-1].query["fieldSelector"] == [f"involvedObject.name={pods[0].name}"]
    assert kube.get_service_ports("raytf-cpu-head-svc", "default") == {"gcs": 6379, "dashboard": 8265, "client": 10001}
    assert kube.get_service_ports("other-head-svc", "default") is None


# -- kubeconfig ------------------------------------------------------------------------------------


def write_kubeconfig(path: Path, server: str, contexts: tuple[str, ...] = ("fake",)) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": contexts[0],
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "alice", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": c, "context": {"cluster": "fake", "user": "alice"}} for c in contexts],
    }))
    return path


def test_kubeconfig_file_drives_the_real_client(fake: FakeApiServer, tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "config", fake.url, ("fake", "other"))
    api = build_api_client(str(path))
    assert api.configuration.host == fake.url
    assert KubeClient(api).get_cluster("nope", "default") is None
    assert fake.calls("GET")[-1].path.endswith("/rayclusters/nope")
    assert current_context(str(path), None) == "fake"
    assert current_context(str(path), "other") == "other"
    assert path.read_text() == write_kubeconfig(tmp_path / "copy", fake.url, ("fake", "other")).read_text()


def test_kubeconfig_from_env_and_default_location(fake: FakeApiServer, tmp_path: Path, isolated_home: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    env_path = write_kubeconfig(tmp_path / "env-config", fake.url)
    monkeypatch.setenv("KUBECONFIG", str(env_path))
    assert build_api_client().configuration.host == fake.url
    monkeypatch.delenv("KUBECONFIG")
    (isolated_home / ".kube").mkdir()
    write_kubeconfig(isolated_home / ".kube" / "config", "http://127.0.0.1:1")
    assert build_api_client().configuration.host == "http://127.0.0.1:1"


def test_missing_kubeconfig_says_how_to_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(KubeconfigError) as info:
        build_api_client()
    assert "No kubeconfig found" in str(info.value) and "--kubeconfig" in str(info.value)
    assert isinstance(info.value, KubeUnreachable)
    with pytest.raises(KubeconfigError, match="does not exist"):
        build_api_client(str(tmp_path / "missing"))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "also-missing"))
    with pytest.raises(KubeconfigError, match=r"\$KUBECONFIG names no existing file"):
        build_api_client()


def test_unknown_context_is_a_kubeconfig_error(fake: FakeApiServer, tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "config", fake.url)
    with pytest.raises(KubeconfigError, match="unusable"):
        build_api_client(str(path), context="prod")
