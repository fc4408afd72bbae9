"""Rendering a one-shot run as a KubeRay `RayJob` (ray.io/v1), and reading its status.

Pure: spec + names -> manifest dict, RayJob object -> `RayJobState` -> `Outcome`. The side effects
(create, follow, submit) live in `follow.py` and `oneshot.py`.

The RayJob uses `submissionMode: InteractiveMode`, as `kubectl ray job submit` does: KubeRay
creates the cluster and waits (`jobDeploymentStatus: Waiting`); raytf then submits the Ray job
itself through a port-forward, uploading the working directory (config and model code) and the
runtime_env exactly like `raytf train --submit`, and sets `spec.jobId` so that KubeRay tracks the job
and deletes the cluster when it ends. KubeRay's own submitter (K8sJobMode) runs inside the
cluster and so cannot upload files from this machine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from raytf.cluster.kuberay.manifest import API_VERSION, MANAGED_BY, SPEC_HASH_ANNOTATION, render_raycluster, spec_hash
from raytf.cluster.kuberay.spec import ClusterSpec

KIND = "RayJob"
PLURAL = "rayjobs"
SUBMISSION_MODE = "InteractiveMode"
CONFIG_ANNOTATION = "raytf.io/config"
RUN_ANNOTATION = "raytf.io/run"
# KubeRay names the RayJob's cluster "<rayjob>-<5 chars>" and caps cluster names at 53 (MaxRayJobNameLength).
MAX_RAYJOB_NAME = 47
SUFFIX_LENGTH = 5

# The enums of KubeRay v1.7.0 (ray-operator/apis/ray/v1/rayjob_types.go); the CRD declares them as plain strings.
JOB_STATUSES = ("", "PENDING", "RUNNING", "STOPPED", "SUCCEEDED", "FAILED")
DEPLOYMENT_STATUSES = ("", "Initializing", "Running", "Complete", "Failed", "ValidationFailed", "Suspending",
                       "Suspended", "Retrying", "Waiting")
TERMINAL_JOB = ("SUCCEEDED", "FAILED", "STOPPED")
TERMINAL_DEPLOYMENT = ("Complete", "Failed", "ValidationFailed")


def rayjob_name(spec_name: str, suffix: str) -> str:
    """`<spec name>-<suffix>`, cut so that KubeRay's cluster name `<rayjob>-xxxxx` stays valid."""
    if not re.fullmatch(r"[a-z0-9]{%d}" % SUFFIX_LENGTH, suffix):
        raise ValueError(f"suffix must be {SUFFIX_LENGTH} lowercase letters or digits, not {suffix!r}")
    head = spec_name[: MAX_RAYJOB_NAME - SUFFIX_LENGTH - 1].rstrip("-")
    return f"{head}-{suffix}"


def render_rayjob(
    spec: ClusterSpec,
    *,
    name: str,
    entrypoint: str,
    run: str,
    config: str,
    ttl_seconds: int | None = None,
) -> dict[str, Any]:
    """The RayJob manifest: `spec.rayClusterSpec` is the RayCluster `spec` that `raytf up` renders.

    `entrypoint` is what raytf submits once the cluster waits (KubeRay ignores it in
    InteractiveMode; it is kept for readers of `kubectl get rayjob -o yaml` and for operators
    before 1.2.2, which required it). `ttl_seconds` overrides the spec's `rayjob` options.
    """
    cluster_spec = render_raycluster(spec)["spec"]
    options = spec.rayjob
    ttl = options.ttl_seconds_after_finished if ttl_seconds is None else ttl_seconds
    if ttl < 0:
        raise ValueError("ttl_seconds must be >= 0")
    body: dict[str, Any] = {
        "entrypoint": entrypoint,
        "submissionMode": SUBMISSION_MODE,
        # The cluster lives as long as the job: deleted `ttlSecondsAfterFinished` after it ends.
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": ttl,
        "preRunningDeadlineSeconds": options.pre_running_deadline_seconds,
        "rayClusterSpec": cluster_spec,
    }
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": spec.namespace,
            "labels": dict(MANAGED_BY),
            "annotations": {
                SPEC_HASH_ANNOTATION: spec_hash(cluster_spec),
                RUN_ANNOTATION: run,
                CONFIG_ANNOTATION: config,
            },
        },
        "spec": body,
    }


@dataclass(frozen=True)
class RayJobState:
    """The parts of `RayJob.status` (and `spec.jobId`) raytf acts on."""

    name: str
    namespace: str
    deployment: str  # jobDeploymentStatus
    job: str  # jobStatus
    cluster: str  # rayClusterName
    job_id: str  # spec.jobId: set by raytf after it submitted the job
    reason: str
    message: str
    deleting: bool


def read_state(obj: dict[str, Any]) -> RayJobState:
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    return RayJobState(
        name=meta.get("name", "?"),
        namespace=meta.get("namespace", "?"),
        deployment=str(status.get("jobDeploymentStatus") or ""),
        job=str(status.get("jobStatus") or ""),
        cluster=str(status.get("rayClusterName") or ""),
        job_id=str((obj.get("spec") or {}).get("jobId") or ""),
        reason=str(status.get("reason") or ""),
        message=str(status.get("message") or "").strip(),
        deleting=bool(meta.get("deletionTimestamp")),
    )


def waits_for_submission(state: RayJobState) -> bool:
    """KubeRay made the cluster ready and waits for raytf to submit the job and set spec.jobId."""
    return state.deployment == "Waiting" and bool(state.cluster) and not state.job_id


@dataclass(frozen=True)
class Outcome:
    code: int  # the CLI's exit status: 0 succeeded, 2 failed or stopped
    summary: str


def outcome(state: RayJobState) -> Outcome | None:
    """The run's end as KubeRay reports it, or None while it is still going."""
    if state.job not in TERMINAL_JOB and state.deployment not in TERMINAL_DEPLOYMENT:
        return None
    where = f"RayJob '{state.name}' in namespace '{state.namespace}'"
    why = ": ".join(p for p in (state.reason, state.message) if p)
    if state.job == "SUCCEEDED":
        return Outcome(0, f"{where} succeeded.")
    if state.job in ("FAILED", "STOPPED"):
        return Outcome(2, f"{where} ended {state.job}" + (f" ({why})." if why else "."))
    # The deployment failed before the Ray job ran (deadline, validation, submission, status checks).
    return Outcome(2, f"{where} {state.deployment or 'ended'}" + (f": {why}" if why else " without a job status."))


def describe(state: RayJobState) -> str:
    """One progress line; printed whenever it changes."""
    parts = [f"RayJob {state.name}: {state.deployment or 'created'}"]
    if state.job:
        parts.append(f"job {state.job}")
    if state.cluster:
        parts.append(f"cluster {state.cluster}")
    if state.deleting:
        parts.append("deleting")
    line = ", ".join(parts)
    if state.message and state.deployment not in TERMINAL_DEPLOYMENT:
        line += f" ({state.message})"
    return line
