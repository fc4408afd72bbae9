"""Bringing a RayCluster up, down and to a size: the provider's verbs, free of any UI.

Waiting is polling (GET the RayCluster, list its pods) with an injectable clock and sleep, so
tests drive time without sleeping. Progress goes to an optional callback on every poll.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from raytf.cluster.kuberay.client import KubeClient
from raytf.cluster.kuberay.diagnose import explain_not_ready
from raytf.cluster.kuberay.errors import NotFound, UnknownWorkerGroup, WaitTimeout
from raytf.cluster.kuberay.manifest import SPEC_HASH_ANNOTATION, render_raycluster
from raytf.cluster.kuberay.spec import ClusterSpec
from raytf.cluster.kuberay.status import ClusterStatus, get_cluster_or_raise, pod_selector, snapshot
from raytf.errors import ClusterError, ConfigError

Clock = Callable[[], float]
Sleep = Callable[[float], None]


@dataclass(frozen=True)
class Ensured:
    created: bool
    # Why an existing cluster does not match the spec; empty when it matches or was just created.
    differences: tuple[str, ...] = ()


@dataclass(frozen=True)
class WaitProgress:
    elapsed: float
    status: ClusterStatus


@dataclass(frozen=True)
class UpResult:
    ensured: Ensured
    status: ClusterStatus


@dataclass(frozen=True)
class ScaleResult:
    group: str
    previous: int
    replicas: int
    warning: str | None = None


def up(
    spec: ClusterSpec,
    kube: KubeClient,
    *,
    timeout: float,
    poll_interval: float = 2.0,
    on_progress: Callable[[WaitProgress], None] | None = None,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
) -> UpResult:
    """Create the RayCluster (or adopt the existing one) and wait until it is ready."""
    ensured = ensure_cluster(spec, kube)
    status = wait_ready(kube, spec.name, spec.namespace, timeout=timeout, poll_interval=poll_interval,
                        on_progress=on_progress, clock=clock, sleep=sleep)
    return UpResult(ensured, status)


def ensure_cluster(spec: ClusterSpec, kube: KubeClient) -> Ensured:
    desired = render_raycluster(spec)
    live = kube.get_cluster(spec.name, spec.namespace)
    if live is None:
        kube.create_cluster(desired)
        return Ensured(created=True)
    if live["metadata"].get("deletionTimestamp"):
        raise ClusterError(
            f"RayCluster '{spec.name}' in namespace '{spec.namespace}' is being deleted.",
            "Wait until it is gone (`raytf down` waits for that) and run `raytf up` again.",
        )
    return Ensured(created=False, differences=tuple(spec_differences(desired, live)))


def wait_ready(
    kube: KubeClient,
    name: str,
    namespace: str,
    *,
    timeout: float,
    poll_interval: float = 2.0,
    on_progress: Callable[[WaitProgress], None] | None = None,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
) -> ClusterStatus:
    start = clock()
    while True:
        obj = kube.get_cluster(name, namespace)
        if obj is None:
            raise NotFound(
                f"RayCluster '{name}' in namespace '{namespace}' disappeared while raytf waited for it.",
                "Someone or something deleted it; run `raytf up` again.",
            )
        status = snapshot(obj, kube.list_pods(namespace, pod_selector(name)))
        elapsed = clock() - start
        if on_progress is not None:
            on_progress(WaitProgress(elapsed, status))
        if status.ready:
            return status
        if elapsed >= timeout:
            problem, fix = explain_not_ready(kube, status, elapsed)
            raise WaitTimeout(problem, fix)
        sleep(min(poll_interval, timeout - elapsed))


def down(
    kube: KubeClient,
    name: str,
    namespace: str,
    *,
    timeout: float,
    poll_interval: float = 2.0,
    on_progress: Callable[[float, int], None] | None = None,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
) -> bool:
    """Delete the RayCluster and wait until it is gone; False when it did not exist.

    Deletion is foreground, so "gone" means its pods are gone too. `on_progress(elapsed,
    pods_left)` is called on every poll.
    """
    if not kube.delete_cluster(name, namespace):
        return False
    start = clock()
    while kube.get_cluster(name, namespace) is not None:
        elapsed = clock() - start
        pods = kube.list_pods(namespace, pod_selector(name))
        if on_progress is not None:
            on_progress(elapsed, len(pods))
        if elapsed >= timeout:
            left = ", ".join(f"{p.name} ({p.phase})" for p in pods[:8]) or "none"
            raise WaitTimeout(
                f"RayCluster '{name}' in namespace '{namespace}' still exists {elapsed:.0f}s after deletion "
                f"was requested (pods left: {left}).",
                f"Check its finalizers and pods: `kubectl get raycluster {name} -n {namespace} -o yaml`; "
                "run `raytf down` again to keep waiting.",
            )
        sleep(min(poll_interval, timeout - elapsed))
    return True


def scale(kube: KubeClient, name: str, namespace: str, group: str, replicas: int) -> ScaleResult:
    obj = get_cluster_or_raise(kube, name, namespace)
    groups: list[dict[str, Any]] = obj.get("spec", {}).get("workerGroupSpecs") or []
    names = [g.get("groupName", "") for g in groups]
    if group not in names:
        raise UnknownWorkerGroup.make(group, name, names)
    index = names.index(group)
    lo = int(groups[index].get("minReplicas") or 0)
    hi = int(groups[index].get("maxReplicas") or 0)
    if not lo <= replicas <= hi:
        raise ConfigError(
            f"Worker group '{group}' of RayCluster '{name}' allows {lo} to {hi} replicas; {replicas} is outside.",
            "Pick a value in that range, or change min_replicas/max_replicas in the spec and recreate the "
            "cluster (`raytf down`, then `raytf up`).",
        )
    previous = int(groups[index].get("replicas") or 0)
    # `test` makes the patch fail rather than resize the wrong group if the list changed meanwhile.
    kube.patch_cluster(name, namespace, [
        {"op": "test", "path": f"/spec/workerGroupSpecs/{index}/groupName", "value": group},
        {"op": "replace", "path": f"/spec/workerGroupSpecs/{index}/replicas", "value": replicas},
    ])
    warning = None
    if obj.get("spec", {}).get("enableInTreeAutoscaling"):
        warning = "Autoscaling is enabled: the Ray autoscaler owns replicas and may change this number again."
    return ScaleResult(group, previous, replicas, warning)


def spec_differences(desired: dict[str, Any], live: dict[str, Any], limit: int = 12) -> list[str]:
    """Human-readable reasons the live RayCluster does not match the rendered spec ([] if it does)."""
    live_hash = (live["metadata"].get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
    if live_hash == desired["metadata"]["annotations"][SPEC_HASH_ANNOTATION]:
        return []  # same spec; replicas changed by `raytf scale` or the autoscaler do not count
    found = _diff(desired["spec"], live.get("spec") or {}, "spec")
    if live_hash is None:
        found.insert(0, f"it was not created by raytf (no {SPEC_HASH_ANNOTATION} annotation)")
    if not found:
        found = ["it was created from a different raytf spec"]
    return found[:limit] + ([f"... and {len(found) - limit} more"] if len(found) > limit else [])


def _diff(want: Any, have: Any, path: str) -> list[str]:
    # Only keys raytf sets are compared: the API server and operator add defaults of their own.
    if isinstance(want, dict) and isinstance(have, dict):
        out: list[str] = []
        for key, value in want.items():
            if key not in have:
                out.append(f"{path}.{key}: missing in the cluster")
            else:
                out += _diff(value, have[key], f"{path}.{key}")
        return out
    if path.endswith("workerGroupSpecs") and isinstance(want, list) and isinstance(have, list):
        have_by_name = {g.get("groupName"): g for g in have if isinstance(g, dict)}
        out = []
        for group in want:
            name = group.get("groupName")
            if name not in have_by_name:
                out.append(f"{path}[{name}]: group missing in the cluster")
            else:
                out += _diff(group, have_by_name.pop(name), f"{path}[{name}]")
        out += [f"{path}[{name}]: group in the cluster but not in the spec" for name in have_by_name]
        return out
    if isinstance(want, list) and isinstance(have, list) and len(want) == len(have):
        return [line for i, (w, h) in enumerate(zip(want, have)) for line in _diff(w, h, f"{path}[{i}]")]
    if want != have:
        return [f"{path}: cluster has {have!r}, spec says {want!r}"]
    return []
