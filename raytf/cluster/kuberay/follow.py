"""Following a RayJob: the Kubernetes calls for RayJobs, the status loop, and Ctrl-C.

The loop reads the RayJob (the operator's view is the truth for the exit status), prints a line
when its state changes, hands the cluster to a `Launcher` once KubeRay waits for the job
(InteractiveMode), records the submitted job's id in `spec.jobId`, and ends on the job's end.
`clock`/`sleep` are injectable so tests drive the loop without waiting.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Literal, Protocol

from kubernetes import client as k8s
from rich.console import Console
from rich.text import Text

from raytf.cluster.kuberay.client import KubeClient
from raytf.cluster.kuberay.errors import AlreadyExists, CrdNotInstalled, NotFound
from raytf.cluster.kuberay.manifest import GROUP, VERSION
from raytf.cluster.kuberay.rayjob import PLURAL, describe, outcome, read_state, waits_for_submission
from raytf.errors import RaytfError

RAYJOBS = f"{PLURAL}.{GROUP}"
InterruptChoice = Literal["ask", "stop", "detach"]
DETACHED = 130  # the exit status of a run left running on Ctrl-C, as for `raytf train --submit`
STOPPED = 2
# Without any status after this long, no operator is reconciling the RayJob: say so (once).
NO_OPERATOR_WARNING_SECONDS = 60.0


class RayJobApi:
    """RayJob custom objects through the real client, failures as raytf's named KubeRay errors."""

    def __init__(self, kube: KubeClient) -> None:
        self._kube = kube
        self._custom = k8s.CustomObjectsApi(kube.api_client)
        self._timeout = (5.0, 30.0)

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        return self._call("create", meta["namespace"], meta["name"], lambda: self._custom.create_namespaced_custom_object(
            GROUP, VERSION, meta["namespace"], PLURAL, manifest, _request_timeout=self._timeout))

    def get(self, name: str, namespace: str) -> dict[str, Any] | None:
        try:
            return self._call("get", namespace, name, lambda: self._custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, _request_timeout=self._timeout))
        except NotFound:
            return None

    def set_job_id(self, name: str, namespace: str, job_id: str) -> None:
        """Tell KubeRay which Ray job to track (InteractiveMode): JSON Patch of `spec.jobId`."""
        operations = [{"op": "add", "path": "/spec/jobId", "value": job_id}]
        self._call("patch", namespace, name, lambda: self._custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, operations,
            _content_type="application/json-patch+json", _request_timeout=self._timeout))

    def delete(self, name: str, namespace: str) -> bool:
        """Delete the RayJob; its RayCluster (owned by it) goes with it. False when already gone."""
        try:
            self._call("delete", namespace, name, lambda: self._custom.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, propagation_policy="Foreground", _request_timeout=self._timeout))
        except NotFound:
            return False
        return True

    def _call(self, verb: str, namespace: str, name: str, fn: Callable[[], Any]) -> Any:
        try:
            return self._kube._call(verb, RAYJOBS, namespace, name, fn)
        except NotFound as err:
            raise self._not_found(err, verb, namespace, name) from None
        except AlreadyExists:
            raise AlreadyExists(f"A RayJob named '{name}' already exists in namespace '{namespace}' (409 Conflict).",
                                "Retry (each run picks a new name), or remove the old one with "
                                f"`kubectl delete rayjob {name} -n {namespace}`.") from None

    def _not_found(self, err: NotFound, verb: str, namespace: str, name: str) -> RaytfError:
        """KubeClient words a 404 for RayClusters; say what a 404 means for a RayJob."""
        if err.problem.startswith("Namespace "):
            return err
        if verb == "create":
            # Creating names no object, so a 404 means the API itself is missing: the RayJob CRD.
            return CrdNotInstalled.make(self._kube.host, kind="RayJob")
        return NotFound(f"RayJob '{name}' in namespace '{namespace}' is gone.",
                        f"It was deleted (`kubectl delete rayjob`, or KubeRay after its TTL); check "
                        f"`kubectl get rayjobs -n {namespace}`.")


class Launcher(Protocol):
    """Starts the Ray job on the RayJob's cluster and streams its output (see oneshot.DashboardLauncher)."""

    def start(self, cluster: str) -> str:
        """Submit the job to `cluster` (ready and waiting); return the Ray job's submission id."""

    def finish(self) -> None:
        """The RayJob ended: let the log stream drain, then release the port-forward."""

    def close(self) -> None:
        """Release everything now (interrupted, or an error)."""


def follow(
    api: RayJobApi,
    name: str,
    namespace: str,
    launcher: Launcher,
    *,
    console: Console,
    on_interrupt: InterruptChoice = "ask",
    poll_interval: float = 2.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    interactive: Callable[[], bool] | None = None,
) -> int:
    """Follow the RayJob until it ends: 0 when its job succeeded, 2 when it failed or was stopped,
    130 when the user detached with Ctrl-C (the job keeps running)."""
    submitted = ""
    last = ""
    started = clock()
    warned = False
    try:
        while True:
            obj = api.get(name, namespace)
            if obj is None:
                raise NotFound(f"RayJob '{name}' in namespace '{namespace}' was deleted while raytf followed it.",
                               f"Someone (or something) deleted it; check `kubectl get events -n {namespace}`.")
            state = read_state(obj)
            line = describe(state)
            if line != last:
                console.print(Text(line))
                last = line
            end = outcome(state)
            if end is not None:
                if submitted:
                    launcher.finish()
                console.print(Text(end.summary, style="green" if end.code == 0 else "red"))
                return end.code
            if waits_for_submission(state) and not submitted:
                try:
                    submitted = launcher.start(state.cluster)
                except RaytfError:
                    # Nothing runs and nothing else would submit: free the cluster now, not after the deadline.
                    api.delete(name, namespace)
                    console.print(Text(f"Deleted RayJob '{name}' in namespace '{namespace}': its job could not be submitted."))
                    raise
                api.set_job_id(name, namespace, submitted)
                console.print(Text(f"Submitted Ray job {submitted} to cluster {state.cluster}; KubeRay tracks it."))
            if not state.deployment and not warned and clock() - started >= NO_OPERATOR_WARNING_SECONDS:
                warned = True
                console.print(Text(f"RayJob '{name}' has no status after {NO_OPERATOR_WARNING_SECONDS:.0f}s: is the KubeRay "
                                   f"operator running and watching namespace '{namespace}'? "
                                   "(`kubectl get pods -A -l app.kubernetes.io/name=kuberay-operator`)", style="yellow"))
            sleep(poll_interval)
    except KeyboardInterrupt:
        return _interrupted(api, name, namespace, launcher, console, submitted=bool(submitted),
                            choice=on_interrupt, interactive=interactive or _stdin_is_terminal)
    finally:
        launcher.close()


def _stdin_is_terminal() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


def _interrupted(api: RayJobApi, name: str, namespace: str, launcher: Launcher, console: Console, *,
                 submitted: bool, choice: InterruptChoice, interactive: Callable[[], bool]) -> int:
    where = f"RayJob '{name}' in namespace '{namespace}'"
    if not submitted:
        # Nothing runs yet and nothing else would submit the job: keeping the cluster would only cost.
        api.delete(name, namespace)
        console.print(Text(f"Interrupted before the job was submitted: deleted {where} (KubeRay removes its cluster)."))
        return STOPPED
    if choice == "ask":
        if interactive():
            import typer

            try:
                stop = typer.confirm(f"\nStop the run (delete {where} and its cluster)? No: leave it running", default=False)
            except (KeyboardInterrupt, EOFError, typer.Abort):
                stop = False
            choice = "stop" if stop else "detach"
        else:
            console.print(Text("Interrupted and stdin is not a terminal: detaching (pass --on-interrupt stop to "
                               "delete the run instead)."))
            choice = "detach"
    if choice == "stop":
        launcher.close()
        api.delete(name, namespace)
        console.print(Text(f"Deleted {where}; KubeRay stops the job and removes its cluster."))
        return STOPPED
    console.print(Text(f"Detached; {where} keeps running, and KubeRay deletes its cluster after the job ends. "
                       f"Follow it with:\n  kubectl get rayjob {name} -n {namespace} -w\n"
                       f"Stop it with:\n  kubectl delete rayjob {name} -n {namespace}"))
    return DETACHED
