"""Rendering a `ClusterSpec` into a KubeRay `RayCluster` (ray.io/v1) manifest.

Pure and deterministic: the same spec always gives the same dict (built in a fixed key order)
and the same YAML, so golden files and the spec-hash annotation are stable.

Role placement: every worker group advertises custom Ray resources through `rayStartParams`
(`raytf_ps` for role ps, `raytf_worker` for role worker, both for role any). raytf's actors ask
for one unit (`resources={"raytf_ps": 1}`), so parameter servers can only land on ps-capable
pods and workers only on worker-capable pods; the head advertises neither.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import yaml

from raytf.cluster.kuberay import storage
from raytf.cluster.kuberay.auth import render_auth_options
from raytf.cluster.kuberay.spec import ClusterSpec, HeadSpec, Toleration, WorkerGroup

API_VERSION = "ray.io/v1"
KIND = "RayCluster"
GROUP, VERSION, PLURAL = "ray.io", "v1", "rayclusters"

PS_RESOURCE = "raytf_ps"
WORKER_RESOURCE = "raytf_worker"
# `--set` overrides a training run adds on a raytf-rendered RayCluster so parameter servers land on
# ps-capable groups and workers on worker-capable ones (dotted keys merge with the user's resources).
PLACEMENT_OVERRIDES = (
    f"distribution.ps_resources.resources.{PS_RESOURCE}=1",
    f"distribution.worker_resources.resources.{WORKER_RESOURCE}=1",
)
# Units per pod: far more than actors that fit, so the resource only steers placement.
ROLE_CAPACITY = 1000

ROLE_LABEL = "raytf.io/role"
SPEC_HASH_ANNOTATION = "raytf.io/spec-hash"
MANAGED_BY = {"app.kubernetes.io/managed-by": "raytf"}

DASHBOARD_PORT = 8265
HEAD_PORTS = (("gcs", 6379), ("dashboard", DASHBOARD_PORT), ("client", 10001))

# Restricted-profile container hardening; Ray needs no privileges or Linux capabilities. The
# rayproject/ray images run as uid 1000 (`USER 1000`), so runAsNonRoot holds for them and for images
# built FROM them that do not switch to root; no privilege escalation also disables their sudo.
_SECURITY_CONTEXT: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}
_AUTOSCALER_RESOURCES = {"cpu": "500m", "memory": "512Mi"}


def render_raycluster(spec: ClusterSpec) -> dict[str, Any]:
    body: dict[str, Any] = {"rayVersion": spec.ray_version}
    auth = render_auth_options(spec)
    if auth is not None:
        body["authOptions"] = auth
    if spec.autoscaling_enabled:
        assert spec.autoscaling is not None
        body["enableInTreeAutoscaling"] = True
        body["autoscalerOptions"] = {
            "upscalingMode": spec.autoscaling.upscaling_mode,
            "idleTimeoutSeconds": spec.autoscaling.idle_timeout_seconds,
            "imagePullPolicy": "IfNotPresent",
            "resources": {"limits": dict(_AUTOSCALER_RESOURCES), "requests": dict(_AUTOSCALER_RESOURCES)},
            "securityContext": _security_context(),
        }
    if spec.fault_tolerance is not None:
        ft = spec.fault_tolerance
        options: dict[str, Any] = {"redisAddress": ft.redis_address}
        if ft.redis_password_secret is not None:
            ref = ft.redis_password_secret
            options["redisPassword"] = {"valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
        if ft.external_storage_namespace:
            options["externalStorageNamespace"] = ft.external_storage_namespace
        body["gcsFaultToleranceOptions"] = options
    body["headGroupSpec"] = _head_group(spec, spec.head)
    body["workerGroupSpecs"] = [_worker_group(spec, g) for g in spec.worker_groups]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": spec.name,
            "namespace": spec.namespace,
            "labels": dict(MANAGED_BY),
            "annotations": {SPEC_HASH_ANNOTATION: spec_hash(body)},
        },
        "spec": body,
    }


def spec_hash(body: dict[str, Any]) -> str:
    """Short digest of a RayCluster `spec`, stored as an annotation to tell "same spec" on re-up."""
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def manifest_yaml(manifest: dict[str, Any]) -> str:
    # sort_keys=False keeps the renderer's fixed order (apiVersion, kind, metadata, spec).
    return yaml.safe_dump(manifest, sort_keys=False, default_flow_style=False, width=4096)


def role_resources_param(role: str) -> str:
    """The `resources` rayStartParam, quoted the way KubeRay's samples show: '"{\\"R\\": 1}"'."""
    wanted = {"ps": [PS_RESOURCE], "worker": [WORKER_RESOURCE], "any": [PS_RESOURCE, WORKER_RESOURCE]}[role]
    as_json = json.dumps({name: ROLE_CAPACITY for name in wanted})
    return '"' + as_json.replace('"', '\\"') + '"'


def _head_group(spec: ClusterSpec, head: HeadSpec) -> dict[str, Any]:
    params: dict[str, str] = {}
    if not head.run_workloads:
        params["num-cpus"] = "0"
    container = _container("ray-head", spec.base_image, head.cpu, head.memory, 0)
    container["ports"] = [{"containerPort": port, "name": name} for name, port in HEAD_PORTS]
    return {
        # Never exposed outside the cluster: users reach the dashboard through a port-forward.
        "serviceType": "ClusterIP",
        "rayStartParams": params,
        "template": _template(spec, "head", container, head.node_selector, head.tolerations),
    }


def _worker_group(spec: ClusterSpec, group: WorkerGroup) -> dict[str, Any]:
    params = {"resources": role_resources_param(group.role)}
    if group.gpus:
        params["num-gpus"] = str(group.gpus)
    container = _container("ray-worker", spec.group_image(group), group.cpu, group.memory, group.gpus)
    return {
        "groupName": group.name,
        "replicas": group.replicas,
        "minReplicas": group.lowest,
        "maxReplicas": group.highest,
        "rayStartParams": params,
        "template": _template(spec, group.role, container, group.node_selector, group.tolerations),
    }


def _container(name: str, image: str, cpu: str, memory: str, gpus: int) -> dict[str, Any]:
    amounts: dict[str, str] = {"cpu": cpu, "memory": memory}
    if gpus:
        amounts["nvidia.com/gpu"] = str(gpus)
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        # requests == limits: Ray sizes itself from the limits, so the scheduler must reserve them.
        "resources": {"limits": dict(amounts), "requests": dict(amounts)},
        "securityContext": _security_context(),
    }


def _template(spec: ClusterSpec, role: str, container: dict[str, Any], node_selector: dict[str, str],
              tolerations: tuple[Toleration, ...]) -> dict[str, Any]:
    mounts = storage.container_mounts(spec)
    if mounts:  # the same shared volume at the same path in every pod
        container["volumeMounts"] = mounts
    pod: dict[str, Any] = {"containers": [container]}
    volumes = storage.pod_volumes(spec)
    if volumes:
        pod["securityContext"] = dict(storage.POD_SECURITY_CONTEXT)
        pod["volumes"] = volumes
    if node_selector:
        pod["nodeSelector"] = dict(sorted(node_selector.items()))
    if tolerations:
        pod["tolerations"] = [t.model_dump(exclude_none=True) for t in tolerations]
    return {"metadata": {"labels": {ROLE_LABEL: role, **MANAGED_BY}}, "spec": pod}


def _security_context() -> dict[str, Any]:
    return copy.deepcopy(_SECURITY_CONTEXT)  # a fresh copy per container: shared dicts become YAML anchors
