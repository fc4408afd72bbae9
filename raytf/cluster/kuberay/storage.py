"""Shared storage on KubeRay: one volume at the same path in every pod, and the output_dir check.

A run writes checkpoints from its parameter servers, the model and summary from its driver and
TensorBoard events from its workers, each in its own pod. They only meet if `output_dir` is on a
volume all pods mount (a ReadWriteMany PVC, NFS, a CSI driver); anything else scatters a run over
pod-local disks that vanish with the pods. So a KubeRay run is refused before submission unless its
`output_dir` is under the spec's `shared_storage.path`.
"""

from __future__ import annotations

import posixpath
from typing import Any

from raytf.cluster.kuberay.errors import OutputNotShared
from raytf.cluster.kuberay.spec import ClusterSpec

VOLUME_NAME = "raytf-shared"
# The rayproject/ray images run as uid 1000, gid 100 (users): fsGroup makes a fresh block-backed PVC
# writable for them (NFS and most CSI file drivers ignore it); OnRootMismatch avoids a chown per start.
POD_SECURITY_CONTEXT = {"fsGroup": 100, "fsGroupChangePolicy": "OnRootMismatch"}


def pod_volumes(spec: ClusterSpec) -> list[dict[str, Any]]:
    if spec.shared_storage is None:
        return []
    return [{"name": VOLUME_NAME, **spec.shared_storage.volume_source()}]


def container_mounts(spec: ClusterSpec) -> list[dict[str, Any]]:
    if spec.shared_storage is None:
        return []
    return [{"name": VOLUME_NAME, "mountPath": spec.shared_storage.path}]


def check_output_dir(spec: ClusterSpec, output_dir: str, *, spec_source: str = "the cluster spec") -> None:
    """Raise `OutputNotShared` (naming the key, the mounted path and the fix) unless `output_dir` is
    under the spec's shared_storage.path."""
    storage = spec.shared_storage
    if storage is None:
        raise OutputNotShared(
            f"RayCluster '{spec.name}' ({spec_source}) mounts no shared storage, but a run on KubeRay writes its "
            f"output_dir ({output_dir}) from several pods (checkpoints, model, TensorBoard): on pod-local disks "
            "it would be scattered and lost with the pods.",
            "Add `shared_storage: {path: /mnt/raytf, claim: <a ReadWriteMany PersistentVolumeClaim>}` (or "
            "`volume: {nfs: {...}}`) to the spec (docs/kuberay.md), recreate the cluster (`raytf down`, "
            "`raytf up`), and train with `--set output_dir=/mnt/raytf/runs/<name>`.",
        )
    suggestion = posixpath.join(storage.path, "runs", posixpath.basename(output_dir.rstrip("/")) or "run")
    if not posixpath.isabs(output_dir):
        raise OutputNotShared(
            f"output_dir '{output_dir}' is relative: on RayCluster '{spec.name}' it would land in each pod's private "
            f"copy of the job's working directory, not on the shared storage mounted at {storage.path} "
            f"(shared_storage.path in {spec_source}).",
            f"Put it under the mount: `--set output_dir={suggestion}` (or set output_dir in the config).",
        )
    normalized = posixpath.normpath(output_dir)
    if normalized != storage.path and not normalized.startswith(storage.path.rstrip("/") + "/"):
        raise OutputNotShared(
            f"output_dir '{output_dir}' is not under {storage.path}, the shared storage RayCluster '{spec.name}' "
            f"mounts in every pod (shared_storage.path in {spec_source}): the run's pods would not see each "
            "other's files.",
            f"Put it under the mount: `--set output_dir={suggestion}`, or change shared_storage.path and "
            "recreate the cluster.",
        )
