"""What a RayCluster looks like right now, as plain frozen data.

`snapshot` is pure (RayCluster dict + its pods -> `ClusterStatus`) so readiness rules are
tested without any server. Readiness follows KubeRay >= 1.2: conditions `RayClusterProvisioned`
and `HeadPodReady` both True; operators that publish no conditions fall back to
`status.state == "ready"`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from raytf.cluster.kuberay.client import KubeClient, PodInfo
from raytf.cluster.kuberay.errors import NotFound
from raytf.cluster.kuberay.manifest import ROLE_LABEL

READY_CONDITIONS = ("RayClusterProvisioned", "HeadPodReady")
CLUSTER_LABEL = "ray.io/cluster"
GROUP_LABEL = "ray.io/group"
NODE_TYPE_LABEL = "ray.io/node-type"


@dataclass(frozen=True)
class Condition:
    type: str
    status: str
    reason: str = ""
    message: str = ""

    def __str__(self) -> str:
        why = ": ".join(p for p in (self.reason, self.message) if p)
        return f"{self.type}={self.status}" + (f" ({why})" if why else "")


@dataclass(frozen=True)
class GroupStatus:
    name: str
    role: str
    ready: int
    desired: int
    min_replicas: int
    max_replicas: int


@dataclass(frozen=True)
class ClusterStatus:
    name: str
    namespace: str
    ready: bool
    state: str | None
    conditions: tuple[Condition, ...]
    groups: tuple[GroupStatus, ...]
    head_pod: str | None
    head_pod_ip: str | None
    head_ready: bool
    head_service: str
    head_service_ip: str | None
    endpoints: dict[str, str] = field(default_factory=dict)
    deleting: bool = False
    autoscaling: bool = False

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)


def is_ready(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    if any(t in conditions for t in READY_CONDITIONS):
        return all(conditions.get(t) == "True" for t in READY_CONDITIONS)
    return status.get("state") == "ready"  # operators older than KubeRay 1.2 publish no such conditions


def pod_selector(name: str) -> str:
    return f"{CLUSTER_LABEL}={name}"


def head_service_name(obj: dict[str, Any]) -> str:
    head = (obj.get("status") or {}).get("head") or {}
    return head.get("serviceName") or f"{obj['metadata']['name']}-head-svc"


def snapshot(obj: dict[str, Any], pods: list[PodInfo]) -> ClusterStatus:
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    groups = []
    for group in spec.get("workerGroupSpecs") or []:
        name = group.get("groupName", "")
        labels = ((group.get("template") or {}).get("metadata") or {}).get("labels") or {}
        ready = sum(1 for p in pods if p.labels.get(GROUP_LABEL) == name and p.ready and p.phase == "Running")
        groups.append(GroupStatus(
            name=name,
            role=labels.get(ROLE_LABEL, "?"),
            ready=ready,
            desired=int(group.get("replicas") or 0),
            min_replicas=int(group.get("minReplicas") or 0),
            max_replicas=int(group.get("maxReplicas") or 0),
        ))
    head = status.get("head") or {}
    head_pod = next((p for p in pods if p.labels.get(NODE_TYPE_LABEL) == "head"), None)
    return ClusterStatus(
        name=meta["name"],
        namespace=meta.get("namespace", "default"),
        ready=is_ready(obj),
        state=status.get("state"),
        conditions=tuple(
            Condition(c.get("type", ""), c.get("status", ""), c.get("reason", ""), c.get("message", ""))
            for c in status.get("conditions") or []
        ),
        groups=tuple(groups),
        head_pod=head.get("podName") or (head_pod.name if head_pod else None),
        head_pod_ip=head.get("podIP"),
        head_ready=bool(head_pod and head_pod.ready),
        head_service=head_service_name(obj),
        head_service_ip=head.get("serviceIP"),
        endpoints={str(k): str(v) for k, v in sorted((status.get("endpoints") or {}).items())},
        deleting=bool(meta.get("deletionTimestamp")),
        autoscaling=bool(spec.get("enableInTreeAutoscaling")),
    )


def get_cluster_or_raise(kube: KubeClient, name: str, namespace: str) -> dict[str, Any]:
    obj = kube.get_cluster(name, namespace)
    if obj is None:
        others = [c["metadata"]["name"] for c in kube.list_clusters(namespace)]
        raise NotFound.make("RayCluster", name, namespace, others)
    return obj


def read_status(kube: KubeClient, name: str, namespace: str) -> ClusterStatus:
    obj = get_cluster_or_raise(kube, name, namespace)
    return snapshot(obj, kube.list_pods(namespace, pod_selector(name)))
