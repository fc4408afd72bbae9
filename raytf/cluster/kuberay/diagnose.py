"""Explaining why a RayCluster is not ready: the pods that are stuck and what their events say."""

from __future__ import annotations

from raytf.cluster.kuberay.client import EventInfo, KubeClient, PodInfo
from raytf.cluster.kuberay.status import GROUP_LABEL, NODE_TYPE_LABEL, ClusterStatus, pod_selector

# (substring found in a pod's events/waiting reasons, what to do about it)
_HINTS = (
    ("Insufficient nvidia.com/gpu", "No node has a free GPU: add GPU nodes with the NVIDIA device plugin, or lower `gpus`/`replicas` in the spec."),
    ("Insufficient cpu", "The nodes lack the CPU/memory the pods request: add nodes, or lower `cpu`/`memory`/`replicas` in the spec."),
    ("Insufficient memory", "The nodes lack the CPU/memory the pods request: add nodes, or lower `cpu`/`memory`/`replicas` in the spec."),
    ("untolerated taint", "The only fitting nodes are tainted: add matching `tolerations` to the group in the spec."),
    ("node affinity/selector", "No node matches the group's `node_selector`: fix the selector or label the nodes."),
    ("ImagePullBackOff", "The image cannot be pulled: check `image`/`ray_version` in the spec name a published tag and that nodes can reach the registry."),
    ("ErrImagePull", "The image cannot be pulled: check `image`/`ray_version` in the spec name a published tag and that nodes can reach the registry."),
    ("CrashLoopBackOff", "A Ray container keeps crashing: read its logs with `kubectl logs <pod> -n <namespace> --previous`."),
)


def explain_not_ready(kube: KubeClient, status: ClusterStatus, waited: float, *, max_pods: int = 8) -> tuple[str, str]:
    """(problem, fix) for a RayCluster that did not become ready in `waited` seconds."""
    ns = status.namespace
    pods = kube.list_pods(ns, pod_selector(status.name))
    stuck = [p for p in pods if not (p.ready and p.phase == "Running")]
    lines = [
        f"RayCluster '{status.name}' in namespace '{ns}' was not ready after {waited:.0f}s "
        f"(state: {status.state or 'none'}; conditions: {', '.join(map(str, status.conditions)) or 'none reported'}).",
    ]
    evidence: list[str] = []
    if not pods:
        lines.append("No pods exist for it: the KubeRay operator has not acted on it.")
        evidence.append("no pods")
    for pod in stuck[:max_pods]:
        events = [e for e in kube.list_events(ns, pod.name) if e.type == "Warning"]
        line = f"  - pod {pod.name} ({_group_of(pod)}) is {pod.phase}"
        details = list(pod.waiting_reasons) + [_event_text(e) for e in _latest_unique(events)]
        if details:
            line += ": " + "; ".join(details)
        lines.append(line)
        evidence += details
    if len(stuck) > max_pods:
        lines.append(f"  - ... and {len(stuck) - max_pods} more pods not ready")
    return "\n".join(lines), _fix(evidence, status)


def _group_of(pod: PodInfo) -> str:
    if pod.labels.get(NODE_TYPE_LABEL) == "head":
        return "head"
    return f"group {pod.labels.get(GROUP_LABEL, '?')}"


def _event_text(event: EventInfo) -> str:
    repeat = f" (x{event.count})" if event.count > 1 else ""
    return f"{event.reason}: {event.message}{repeat}"


def _latest_unique(events: list[EventInfo], limit: int = 3) -> list[EventInfo]:
    seen: dict[tuple[str, str], EventInfo] = {}
    for event in events:
        seen[(event.reason, event.message)] = event
    return list(seen.values())[-limit:]


def _fix(evidence: list[str], status: ClusterStatus) -> str:
    text = " ".join(evidence)
    hints = []
    for needle, hint in _HINTS:
        if needle in text and hint not in hints:
            hints.append(hint)
    if "no pods" in evidence:
        hints.append(
            "Check the operator: `kubectl get pods -A -l app.kubernetes.io/name=kuberay-operator` and its logs."
        )
    hints.append(
        f"Inspect with `kubectl describe raycluster {status.name} -n {status.namespace}` and "
        f"`kubectl get events -n {status.namespace}`; if it is only slow, retry `raytf up` with a larger --timeout."
    )
    return " ".join(hints)
