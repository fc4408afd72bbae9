"""Shared storage: one volume at one path in every pod, spec errors, and the output_dir check that
refuses a KubeRay run before anything is submitted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from rich.console import Console

from raytf.cluster.kuberay import commands
from raytf.cluster.kuberay.errors import ClusterSpecError, OutputNotShared
from raytf.cluster.kuberay.manifest import render_raycluster
from raytf.cluster.kuberay.specfile import load_cluster_spec, parse_cluster_spec
from raytf.cluster.kuberay.storage import VOLUME_NAME, check_output_dir
from raytf.cluster.record import save_cluster_record

from .fake_apiserver import FakeApiServer
from .helpers import CONFIGS, REPO

SHARED = CONFIGS / "kuberay-shared-storage.yaml"
CPU = CONFIGS / "kuberay-cpu.yaml"
NFS = "shared_storage:\n  path: /data/raytf/\n  volume:\n    nfs: {server: nfs.example.com, path: /exports/raytf}\n"


def pods(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    spec = manifest["spec"]
    return [g["template"]["spec"] for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]]


def test_every_pod_mounts_the_same_volume_at_the_same_path() -> None:
    manifest = render_raycluster(load_cluster_spec(SHARED))
    assert len(pods(manifest)) == 3
    for pod in pods(manifest):
        assert pod["volumes"] == [{"name": VOLUME_NAME, "persistentVolumeClaim": {"claimName": "raytf-shared"}}]
        for container in pod["containers"]:
            assert container["volumeMounts"] == [{"name": VOLUME_NAME, "mountPath": "/mnt/raytf"}]
        assert pod["securityContext"] == {"fsGroup": 100, "fsGroupChangePolicy": "OnRootMismatch"}
    for pod in pods(render_raycluster(load_cluster_spec(CPU))):  # nothing without the key
        assert "volumes" not in pod and "securityContext" not in pod
        assert all("volumeMounts" not in c for c in pod["containers"])


def test_any_shareable_volume_source() -> None:
    spec = parse_cluster_spec(CPU.read_text() + NFS, "nfs.yaml")
    assert spec.shared_storage is not None and spec.shared_storage.path == "/data/raytf"  # normalized
    for pod in pods(render_raycluster(spec)):
        assert pod["volumes"] == [{"name": VOLUME_NAME, "nfs": {"server": "nfs.example.com", "path": "/exports/raytf"}}]


@pytest.mark.parametrize(("block", "expected"), [
    ("  path: mnt/raytf\n  claim: c\n", r"shared_storage\.path: must be an absolute path"),
    ("  path: /home/ray\n  claim: c\n", r"shared_storage\.path: must not be /, /home/ray"),
    ("  path: /\n  claim: c\n", r"shared_storage\.path: must not be /,"),
    ("  path: /etc/raytf\n  claim: c\n", r"shared_storage\.path: must not be a system directory"),
    ("  path: /mnt/raytf\n", r"shared_storage: needs exactly one of `claim`"),
    ("  path: /mnt/raytf\n  claim: c\n  volume: {nfs: {server: a, path: /}}\n", r"shared_storage: needs exactly one"),
    ("  path: /mnt/raytf\n  volume: {emptyDir: {}}\n", r"volume source 'emptyDir' cannot be shared by all pods"),
    ("  path: /mnt/raytf\n  volume: {hostPath: {path: /srv}}\n", r"volume source 'hostPath' cannot be shared"),
    ("  path: /mnt/raytf\n  volume: {nfs: {server: a, path: /}, csi: {driver: x}}\n", r"must be one Kubernetes volume source"),
    ("  path: /mnt/raytf\n  claim: Bad_Name\n", r"shared_storage\.claim: must be a PersistentVolumeClaim name"),
    ("  path: /mnt/raytf\n  clam: c\n", r"shared_storage\.clam: unknown key\. Did you mean 'claim'\?"),
])
def test_bad_shared_storage_is_refused_with_file_and_line(block: str, expected: str) -> None:
    text = CPU.read_text() + "shared_storage:\n" + block
    first = len(CPU.read_text().splitlines()) + 1  # the `shared_storage:` line; the error points into its block
    lines = "|".join(str(first + i) for i in range(4))
    with pytest.raises(ClusterSpecError, match=rf"bad\.yaml:(?:{lines}): .*{expected}"):
        parse_cluster_spec(text, "bad.yaml")


def test_check_output_dir() -> None:
    shared = load_cluster_spec(SHARED)
    for ok in ("/mnt/raytf", "/mnt/raytf/runs/digits", "/mnt/raytf/a/../b"):
        check_output_dir(shared, ok)
    with pytest.raises(OutputNotShared) as info:
        check_output_dir(shared, "runs/digits", spec_source="s.yaml")
    assert "output_dir 'runs/digits' is relative" in info.value.problem and "/mnt/raytf" in info.value.problem
    assert "--set output_dir=/mnt/raytf/runs/digits" in info.value.fix
    for outside in ("/tmp/runs/digits", "/mnt/raytf-other/x", "/mnt/raytf/../etc"):
        with pytest.raises(OutputNotShared) as info:
            check_output_dir(shared, outside, spec_source="s.yaml")
        assert f"output_dir '{outside}' is not under /mnt/raytf" in info.value.problem
        assert "shared_storage.path in s.yaml" in info.value.problem and "--set output_dir=/mnt/raytf/runs/" in info.value.fix
    with pytest.raises(OutputNotShared) as info:
        check_output_dir(load_cluster_spec(CPU), "/mnt/raytf/runs/digits", spec_source="cpu.yaml")
    assert "RayCluster 'raytf-cpu' (cpu.yaml) mounts no shared storage" in info.value.problem
    assert "shared_storage: {path: /mnt/raytf, claim:" in info.value.fix and "raytf down" in info.value.fix


def test_train_is_refused_before_any_request(
    fake: FakeApiServer, api_client: k8s.ApiClient, console: Console, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(REPO)
    fake.add_cluster(render_raycluster(load_cluster_spec(SHARED)), ready=True)
    save_cluster_record({"provider": "kuberay", "name": "raytf-shared", "namespace": "default", "kubeconfig": None,
                         "context": None, "spec_path": str(SHARED)})
    with pytest.raises(OutputNotShared, match="output_dir 'runs/digits' is relative"):
        commands.train("examples/digits.yaml", [], console=console, api_client=api_client)
    with pytest.raises(OutputNotShared, match="output_dir '/tmp/out' is not under /mnt/raytf"):
        commands.train("examples/digits.yaml", ["output_dir=/tmp/out"], console=console, api_client=api_client)
    assert fake.requests == []


def test_train_without_the_recorded_spec_says_how_to_fix_it(
    fake: FakeApiServer, api_client: k8s.ApiClient, console: Console, tmp_path: Path,
) -> None:
    from raytf.errors import ClusterError

    save_cluster_record({"provider": "kuberay", "name": "raytf-shared", "namespace": "default", "kubeconfig": None,
                         "context": None})
    with pytest.raises(ClusterError, match="does not say which spec file made it") as info:
        commands.train("examples/digits.yaml", [], console=console, api_client=api_client)
    assert "raytf up --cluster" in info.value.fix
    save_cluster_record({"provider": "kuberay", "name": "raytf-shared", "namespace": "default", "kubeconfig": None,
                         "context": None, "spec_path": str(CPU)})
    with pytest.raises(ClusterError, match="now describes RayCluster 'default/raytf-cpu', not the remembered 'default/raytf-shared'"):
        commands.train("examples/digits.yaml", [], console=console, api_client=api_client)
    assert fake.requests == []
