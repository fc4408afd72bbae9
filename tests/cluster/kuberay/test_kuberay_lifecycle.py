"""up / wait / down / scale / status against the fake API server, with a fake clock (no sleeps)."""

from __future__ import annotations

import pytest

from raytf.cluster.kuberay import lifecycle
from raytf.cluster.kuberay.client import KubeClient
from raytf.cluster.kuberay.errors import NotFound, UnknownWorkerGroup, WaitTimeout
from raytf.cluster.kuberay.manifest import render_raycluster
from raytf.cluster.kuberay.spec import ClusterSpec
from raytf.cluster.kuberay.specfile import load_cluster_spec, parse_cluster_spec
from raytf.cluster.kuberay.status import is_ready, read_status
from raytf.cluster.kuberay.versions import cluster_python_version, version_mismatch_warning
from raytf.errors import ClusterError, ConfigError

from .fake_apiserver import FakeApiServer, Stuck
from .helpers import CONFIGS, FakeClock


def spec_of(name: str = "kuberay-cpu", **replace: str) -> ClusterSpec:
    text = (CONFIGS / f"{name}.yaml").read_text()
    for old, new in replace.items():
        text = text.replace(old.replace("_", " "), new)
    return parse_cluster_spec(text)


def test_up_creates_and_waits_until_ready(fake: FakeApiServer, kube: KubeClient, clock: FakeClock) -> None:
    fake.ready_after = 3
    seen: list[lifecycle.WaitProgress] = []
    result = lifecycle.up(spec_of(), kube, timeout=60, poll_interval=2, on_progress=seen.append,
                          clock=clock, sleep=clock.sleep)
    assert result.ensured == lifecycle.Ensured(created=True)
    assert result.status.ready and result.status.head_pod == "raytf-cpu-head-x7k2p"
    assert len(fake.calls("POST")) == 1
    # One GET before creating, then one per poll until the third poll reports ready.
    assert len(fake.calls("GET", "/rayclusters/raytf-cpu")) == 4
    assert clock.sleeps == [2, 2]
    assert [(g.name, g.role, g.ready, g.desired) for g in seen[0].status.groups] == [("ps", "ps", 0, 2), ("workers", "worker", 0, 4)]
    assert [(g.name, g.ready, g.desired) for g in seen[-1].status.groups] == [("ps", 2, 2), ("workers", 4, 4)]
    assert [p.elapsed for p in seen] == [0, 2, 4]
    assert not seen[0].status.ready and str(seen[0].status.condition("HeadPodReady")) == "HeadPodReady=False (HeadPodNotFound)"


def test_old_operator_without_conditions_uses_state(fake: FakeApiServer, kube: KubeClient, clock: FakeClock) -> None:
    fake.legacy_status = True
    status = lifecycle.up(spec_of(), kube, timeout=60, clock=clock, sleep=clock.sleep).status
    assert status.ready and status.state == "ready" and status.conditions == ()


def test_existing_cluster_with_same_spec_is_adopted(fake: FakeApiServer, kube: KubeClient, clock: FakeClock) -> None:
    fake.add_cluster(render_raycluster(spec_of()), ready=True)
    result = lifecycle.up(spec_of(), kube, timeout=60, clock=clock, sleep=clock.sleep)
    assert result.ensured == lifecycle.Ensured(created=False, differences=())
    assert fake.calls("POST") == [] and result.status.ready


def test_scaled_cluster_still_counts_as_same_spec(fake: FakeApiServer, kube: KubeClient) -> None:
    fake.add_cluster(render_raycluster(spec_of()), ready=True)
    lifecycle.scale(kube, "raytf-cpu", "default", "workers", 4)  # no-op scale keeps the annotation
    fake.clusters[("default", "raytf-cpu")]["spec"]["workerGroupSpecs"][1]["replicas"] = 1
    assert lifecycle.ensure_cluster(spec_of(), kube).differences == ()


def test_existing_cluster_with_other_spec_is_reported(fake: FakeApiServer, kube: KubeClient) -> None:
    fake.add_cluster(render_raycluster(spec_of()), ready=True)
    changed = spec_of(**{"replicas: 4": "replicas: 6", "memory: 4Gi\nworker": "memory: 8Gi\nworker"})
    ensured = lifecycle.ensure_cluster(changed, kube)
    assert not ensured.created and fake.calls("POST") == []
    assert "spec.workerGroupSpecs[workers].replicas: cluster has 4, spec says 6" in ensured.differences
    assert "spec.workerGroupSpecs[workers].maxReplicas: cluster has 4, spec says 6" in ensured.differences


def test_foreign_cluster_is_reported(fake: FakeApiServer, kube: KubeClient) -> None:
    manifest = render_raycluster(spec_of())
    del manifest["metadata"]["annotations"]
    manifest["spec"]["workerGroupSpecs"].pop()
    fake.add_cluster(manifest)
    differences = lifecycle.ensure_cluster(spec_of(), kube).differences
    assert differences[0] == "it was not created by raytf (no raytf.io/spec-hash annotation)"
    assert "spec.workerGroupSpecs[workers]: group missing in the cluster" in differences


def test_cluster_being_deleted_is_not_adopted(fake: FakeApiServer, kube: KubeClient) -> None:
    fake.add_cluster(render_raycluster(spec_of()))
    fake.clusters[("default", "raytf-cpu")]["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    with pytest.raises(ClusterError, match="is being deleted"):
        lifecycle.ensure_cluster(spec_of(), kube)


def test_timeout_names_stuck_gpu_pods_and_their_events(fake: FakeApiServer, kube: KubeClient, clock: FakeClock) -> None:
    fake.stuck = Stuck("gpu-workers", "FailedScheduling", "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")
    with pytest.raises(WaitTimeout) as info:
        lifecycle.up(spec_of("kuberay-gpu"), kube, timeout=30, poll_interval=4, clock=clock, sleep=clock.sleep)
    message = str(info.value)
    assert "RayCluster 'raytf-gpu' in namespace 'default' was not ready after 30s" in message
    assert "RayClusterProvisioned=False (RayClusterPodsProvisioning)" in message
    assert ("pod raytf-gpu-gpu-workers-worker-0 (group gpu-workers) is Pending: ContainerCreating; "
            "FailedScheduling: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu. (x3)") in message
    assert "raytf-gpu-ps-worker-0" not in message  # ready pods are not blamed
    assert "add GPU nodes with the NVIDIA device plugin" in info.value.fix
    assert clock.sleeps == [4] * 7 + [2]  # the last sleep is cut to land on the deadline


def test_timeout_names_image_pull_failure_of_head(fake: FakeApiServer, kube: KubeClient, clock: FakeClock) -> None:
    fake.stuck = Stuck("headgroup", "Failed", 'Failed to pull image "rayproject/ray:9.9.9": not found', "ImagePullBackOff")
    with pytest.raises(WaitTimeout) as info:
        lifecycle.up(spec_of(), kube, timeout=0, clock=clock, sleep=clock.sleep)
    message = str(info.value)
    assert "pod raytf-cpu-head-x7k2p (head) is Pending: ImagePullBackOff: Back-off pulling image" in message
    assert "HeadPodReady=False" in message
    assert "image cannot be pulled" in info.value.fix and "--timeout" in info.value.fix


def test_cluster_deleted_while_waiting(fake: FakeApiServer, kube: KubeClient, clock: FakeClock) -> None:
    def delete_it(_: lifecycle.WaitProgress) -> None:
        fake.clusters.pop(("default", "raytf-cpu"), None)

    fake.ready_after = 5
    with pytest.raises(NotFound, match="disappeared while raytf waited"):
        lifecycle.up(spec_of(), kube, timeout=60, on_progress=delete_it, clock=clock, sleep=clock.sleep)


def test_down_deletes_in_foreground_and_waits_until_gone(fake: FakeApiServer, kube: KubeClient, clock: FakeClock) -> None:
    fake.add_cluster(render_raycluster(spec_of()), ready=True)
    fake.gone_after = 3
    polls: list[tuple[float, int]] = []
    assert lifecycle.down(kube, "raytf-cpu", "default", timeout=60, poll_interval=1,
                          on_progress=lambda t, n: polls.append((t, n)), clock=clock, sleep=clock.sleep)
    (delete,) = fake.calls("DELETE")
    assert delete.query["propagationPolicy"] == ["Foreground"]
    assert polls == [(0, 7), (1, 7)] and ("default", "raytf-cpu") not in fake.clusters
    assert not lifecycle.down(kube, "raytf-cpu", "default", timeout=60, clock=clock, sleep=clock.sleep)


def test_down_timeout_lists_remaining_pods(fake: FakeApiServer, kube: KubeClient, clock: FakeClock) -> None:
    fake.add_cluster(render_raycluster(spec_of()), ready=True)
    fake.gone_after = 100
    with pytest.raises(WaitTimeout) as info:
        lifecycle.down(kube, "raytf-cpu", "default", timeout=5, clock=clock, sleep=clock.sleep)
    assert "still exists 5s after deletion" in str(info.value) and "raytf-cpu-head-x7k2p (Running)" in str(info.value)


def test_scale_sends_a_guarded_json_patch(fake: FakeApiServer, kube: KubeClient) -> None:
    fake.add_cluster(render_raycluster(spec_of("kuberay-autoscale")), ready=True)
    result = lifecycle.scale(kube, "raytf-autoscale", "default", "workers", 5)
    assert (result.previous, result.replicas) == (1, 5)
    assert result.warning is not None and "autoscaler owns replicas" in result.warning
    (patch,) = fake.calls("PATCH")
    assert patch.content_type == "application/json-patch+json"
    assert patch.body == [
        {"op": "test", "path": "/spec/workerGroupSpecs/1/groupName", "value": "workers"},
        {"op": "replace", "path": "/spec/workerGroupSpecs/1/replicas", "value": 5},
    ]
    groups = fake.clusters[("default", "raytf-autoscale")]["spec"]["workerGroupSpecs"]
    assert [g["replicas"] for g in groups] == [2, 5]


def test_scale_rejects_unknown_group_and_out_of_range(fake: FakeApiServer, kube: KubeClient) -> None:
    fake.add_cluster(render_raycluster(spec_of()), ready=True)
    with pytest.raises(UnknownWorkerGroup) as info:
        lifecycle.scale(kube, "raytf-cpu", "default", "wrokers", 3)
    assert "has no worker group 'wrokers'; its groups are: ps, workers." in str(info.value)
    with pytest.raises(ConfigError, match="allows 4 to 4 replicas; 9 is outside"):
        lifecycle.scale(kube, "raytf-cpu", "default", "workers", 9)
    assert fake.calls("PATCH") == []
    with pytest.raises(NotFound, match="No RayCluster named 'gone' in namespace 'default'. Existing: raytf-cpu."):
        lifecycle.scale(kube, "gone", "default", "workers", 1)


def test_status_reports_groups_head_and_endpoints(fake: FakeApiServer, kube: KubeClient) -> None:
    fake.add_cluster(render_raycluster(spec_of("kuberay-gpu")), ready=True)
    fake.stuck = Stuck("gpu-workers", "FailedScheduling", "Insufficient nvidia.com/gpu")
    st = read_status(kube, "raytf-gpu", "default")
    assert not st.ready and st.head_ready and st.head_service == "raytf-gpu-head-svc"
    assert [(g.name, g.role, g.ready, g.desired, g.min_replicas, g.max_replicas) for g in st.groups] == [
        ("ps", "ps", 2, 2, 2, 2), ("gpu-workers", "worker", 0, 2, 2, 2)]
    assert st.endpoints["dashboard"] == "8265" and st.head_pod_ip == "10.0.0.5"


def test_version_mismatch_warning() -> None:
    spec = load_cluster_spec(CONFIGS / "kuberay-cpu.yaml")
    assert version_mismatch_warning(spec, local_ray="2.60.0", local_python="3.11") is None
    warning = version_mismatch_warning(spec, local_ray="2.9.0", local_python="3.10")
    assert warning is not None
    assert "the cluster runs Ray 2.60.0 but this machine has Ray 2.9.0" in warning
    assert "the cluster runs Python 3.11 but this machine runs Python 3.10" in warning
    assert "pip install ray==2.60.0" in warning
    no_python = parse_cluster_spec((CONFIGS / "kuberay-cpu.yaml").read_text().replace('python_version: "3.11"', "image: my/ray:1"))
    assert cluster_python_version(no_python) is None
    assert version_mismatch_warning(no_python, local_ray="2.60.0", local_python="3.9") is None


@pytest.mark.parametrize(("status", "ready"), [
    ({"conditions": [{"type": "HeadPodReady", "status": "True"}, {"type": "RayClusterProvisioned", "status": "True"}]}, True),
    ({"state": "ready", "conditions": [{"type": "HeadPodReady", "status": "True"}, {"type": "RayClusterProvisioned", "status": "False"}]}, False),
    ({"state": "ready"}, True),
    ({"state": "ready", "conditions": [{"type": "ReplicaFailure", "status": "False"}]}, True),
    ({"conditions": [{"type": "ReplicaFailure", "status": "False"}]}, False),
    ({}, False),
])
def test_readiness_rules(status: dict, ready: bool) -> None:
    assert is_ready({"metadata": {"name": "x"}, "status": status}) is ready
