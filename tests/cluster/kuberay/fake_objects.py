"""Kubernetes-shaped objects and patch semantics for the fake API server (see fake_apiserver.py)."""

from __future__ import annotations

import base64
import copy
from typing import Any

TIME = "2025-01-01T00:00:00Z"


def stored(manifest: dict[str, Any]) -> dict[str, Any]:
    obj = copy.deepcopy(manifest)
    obj.pop("status", None)
    meta = obj["metadata"]
    meta.setdefault("uid", f"uid-{meta['name']}")
    meta.update(resourceVersion="1", generation=1, creationTimestamp=TIME)
    return obj


def job_cluster_name(rayjob: str) -> str:
    """KubeRay names a RayJob's cluster `<rayjob>-<5 random chars>`; the fake's are fixed."""
    return f"{rayjob}-x2k9q"


def status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "details": details or {}, "code": code}


def forbidden(verb: str, resource: str, group: str, ns: str) -> dict[str, Any]:
    full = f"{resource}.{group}" if group else resource
    message = f'{full} is forbidden: User "alice" cannot {verb} resource "{resource}" in API group "{group}" in the namespace "{ns}"'
    return status(403, "Forbidden", message, {"group": group, "kind": resource})


def condition(type_: str, ok: bool, reason: str) -> dict[str, Any]:
    return {"type": type_, "status": "True" if ok else "False", "reason": reason, "message": "",
            "lastTransitionTime": TIME}


def pod(name: str, cluster: str, group: str, node_type: str, ready: bool, waiting: str | None) -> dict[str, Any]:
    state = {"running": {"startedAt": TIME}} if ready else {"waiting": {"reason": waiting or "ContainerCreating"}}
    if waiting and not ready:
        state["waiting"]["message"] = 'Back-off pulling image "rayproject/ray:9.9.9"'
    return {
        "metadata": {"name": name, "labels": {"ray.io/cluster": cluster, "ray.io/group": group, "ray.io/node-type": node_type}},
        "spec": {"containers": [{"name": f"ray-{node_type}", "image": "rayproject/ray"}]},
        "status": {
            "phase": "Running" if ready else "Pending",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [{"name": f"ray-{node_type}", "image": "rayproject/ray", "imageID": "", "ready": ready,
                                   "restartCount": 0, "state": state}],
        },
    }


def event(pod: str, type_: str, reason: str, message: str, count: int) -> dict[str, Any]:
    return {"metadata": {"name": f"{pod}.{reason.lower()}"}, "involvedObject": {"kind": "Pod", "name": pod},
            "type": type_, "reason": reason, "message": message, "count": count, "lastTimestamp": TIME}


def service(ns: str, name: str) -> dict[str, Any]:
    ports = [{"name": n, "port": p, "targetPort": p, "protocol": "TCP"}
             for n, p in (("gcs", 6379), ("dashboard", 8265), ("client", 10001))]
    return {"metadata": {"name": name, "namespace": ns}, "spec": {"type": "ClusterIP", "ports": ports}}


def secret(ns: str, name: str, data: dict[str, str], owner: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if owner:
        meta["labels"] = {"ray.io/cluster": owner}
        meta["ownerReferences"] = [{"apiVersion": "ray.io/v1", "kind": "RayCluster", "name": owner,
                                    "uid": f"uid-{owner}", "controller": True}]
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque",
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def selector_pairs(selector: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in selector.split(",") if "=" in part)


def selected(labels: dict[str, str], selector: str) -> bool:
    return all(labels.get(k) == v for k, v in selector_pairs(selector).items())


def json_patch(obj: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    for op in operations:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
        target: Any = out
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        index: Any = int(last) if isinstance(target, list) else last
        if op["op"] == "test":
            if target[index] != op["value"]:
                raise ValueError(f"test failed at {op['path']}")
        elif op["op"] in ("replace", "add"):
            if op["op"] == "replace":
                target[index]  # noqa: B018 - replace requires the member to exist (KeyError otherwise)
            target[index] = op["value"]
        else:
            raise ValueError(f"unsupported op {op['op']}")
    return out


def merge(obj: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(obj) if isinstance(obj, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge(out.get(k), v)
    return out
