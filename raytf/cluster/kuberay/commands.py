"""What the CLI calls for a KubeRay cluster: parse nothing, print with rich, raise RaytfError.

Every function takes already-parsed arguments, a `rich.console.Console` for messages and an
optional `ApiClient` (tests inject one pointed at a fake API server; otherwise it is built from
--kubeconfig/--context, $KUBECONFIG, ~/.kube/config or the in-cluster service account). The
commands without a spec path act on the cluster remembered by `raytf up` (raytf/cluster/record.py).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from kubernetes import client as k8s
from rich.console import Console
from rich.table import Table
from rich.text import Text

from raytf.cluster.kuberay import lifecycle
from raytf.cluster.kuberay.auth import auth_disabled_warning, auth_secret_name, bearer, token_command
from raytf.cluster.kuberay.client import KubeClient
from raytf.cluster.kuberay.dashboard import dashboard_responds, probe_dashboard, wait_for_dashboard
from raytf.cluster.kuberay.errors import AuthTokenUnavailable
from raytf.cluster.kuberay.kubeconfig import build_api_client, current_context, kubeconfig_path
from raytf.cluster.kuberay.manifest import PLACEMENT_OVERRIDES, manifest_yaml, render_raycluster
from raytf.cluster.kuberay.portforward import LocalForward, forward_dashboard, head_dashboard_target
from raytf.cluster.kuberay.runtime_env import job_runtime_env
from raytf.cluster.kuberay.spec import ClusterSpec
from raytf.cluster.kuberay.specfile import load_cluster_spec
from raytf.cluster.kuberay.status import ClusterStatus, get_cluster_or_raise, read_status
from raytf.cluster.kuberay.storage import check_output_dir
from raytf.cluster.kuberay.token import cluster_token, read_token
from raytf.cluster.kuberay.versions import version_mismatch_warning
from raytf.cluster.record import clear_cluster_record, load_cluster_record, save_cluster_record
from raytf.errors import ClusterError, RaytfError


def up(
    spec_path: str | Path,
    *,
    dry_run: bool = False,
    timeout: float = 600.0,
    kubeconfig: str | None = None,
    context: str | None = None,
    console: Console,
    api_client: k8s.ApiClient | None = None,
    poll_interval: float = 2.0,
    check_dashboard: bool = True,
    warm: int | None = 0,
) -> ClusterStatus | None:
    """Create the RayCluster described by `spec_path` and wait until it is ready.

    `dry_run` writes the manifest as YAML to stdout (for `kubectl apply -f -`) and touches
    nothing else, not even the kubeconfig. `warm`: start the warm pool with that many processes per
    pod with CPUs (None: the pod's CPUs + 1, the CLI's default; 0: no pool). Returns the ready status
    (None for a dry run).
    """
    spec = load_cluster_spec(spec_path)  # validated before anything else happens
    unauthenticated = auth_disabled_warning(spec)
    if dry_run:
        if unauthenticated:  # stderr: stdout stays a manifest for `kubectl apply -f -`
            print(f"Warning: {unauthenticated}", file=sys.stderr)
        sys.stdout.write(manifest_yaml(render_raycluster(spec)))
        sys.stdout.flush()
        return None
    for warning in (version_mismatch_warning(spec), unauthenticated):
        if warning:
            console.print(Text(warning, style="yellow"))
    kube, kubeconfig, context = _connect(api_client, kubeconfig, context)
    ensured = lifecycle.ensure_cluster(spec, kube)
    where = f"RayCluster '{spec.name}' in namespace '{spec.namespace}'"
    if ensured.created:
        console.print(Text(f"Created {where}."))
    elif ensured.differences:
        console.print(Text(f"{where} already exists and differs from {spec_path}:", style="yellow"))
        for line in ensured.differences:
            console.print(Text(f"  - {line}", style="yellow"))
        console.print(Text("Using it as it is. To apply the spec, run `raytf down` and then `raytf up` again "
                           "(or `raytf scale` for replica counts).", style="yellow"))
    else:
        console.print(Text(f"{where} already exists with this spec; waiting for it."))
    # Remembered as soon as it exists, so `raytf down` can clean up even if the wait fails.
    save_cluster_record({
        "provider": "kuberay",
        "name": spec.name,
        "namespace": spec.namespace,
        "kubeconfig": kubeconfig,
        "context": context,
        "spec_path": str(Path(spec_path).resolve()),
    })
    with _Progress(console) as progress:
        status = lifecycle.wait_ready(kube, spec.name, spec.namespace, timeout=timeout, poll_interval=poll_interval,
                                      on_progress=lambda p: progress.show(_progress_line(p)))
    console.print(Text(f"{where} is ready: " + _groups_line(status), style="green"))
    if check_dashboard:
        _check_dashboard(kube, status, console)
    if warm != 0:
        _start_pool(kube, spec, warm, console)
    return status


def _start_pool(kube: KubeClient, spec: ClusterSpec, per_node: int | None, console: Console) -> None:
    """Submit the warm pool's job (raytf.cluster.jobs.submit_pool_job) through a port-forward; a failure
    is said, not raised: the cluster is up, and runs start their actors afresh without a pool."""
    from raytf.cluster.jobs import submit_pool_job

    try:
        with _job_api(kube, spec.name, spec.namespace) as (url, headers, _):
            job_id = submit_pool_job(url, per_node, headers=headers, runtime_env=job_runtime_env(spec))
    except RaytfError as error:
        console.print(Text(f"Warm pool not started: {error.problem} {error.fix or ''}".strip(), style="yellow"))
        return
    console.print(Text(f"Warm pool: starting on every pod with CPUs (Ray job {job_id}); runs take its processes "
                       "once they have imported TensorFlow."))


def down(
    spec_path: str | Path | None = None,
    *,
    timeout: float = 300.0,
    kubeconfig: str | None = None,
    context: str | None = None,
    console: Console,
    api_client: k8s.ApiClient | None = None,
    poll_interval: float = 2.0,
) -> bool:
    """Delete the RayCluster and wait until its pods are gone. False when it did not exist."""
    target = _target(spec_path, kubeconfig, context)
    kube, _, _ = _connect(api_client, target.kubeconfig, target.context)
    with _Progress(console) as progress:
        existed = lifecycle.down(kube, target.name, target.namespace, timeout=timeout, poll_interval=poll_interval,
                                 on_progress=lambda t, n: progress.show(f"[{t:4.0f}s] deleting; {n} pods left"))
    where = f"RayCluster '{target.name}' in namespace '{target.namespace}'"
    console.print(Text(f"Deleted {where}." if existed else f"{where} did not exist; nothing to delete."))
    record = load_cluster_record()
    if record and record.get("provider") == "kuberay" and (record.get("name"), record.get("namespace")) == (target.name, target.namespace):
        clear_cluster_record()
    return existed


def status(
    spec_path: str | Path | None = None,
    *,
    kubeconfig: str | None = None,
    context: str | None = None,
    console: Console,
    api_client: k8s.ApiClient | None = None,
    check_dashboard: bool = True,
) -> ClusterStatus:
    """Print and return conditions, ready/desired pods per group, head pod/service and endpoints; with
    `check_dashboard`, also whether the dashboard takes the token from the cluster's Secret."""
    target = _target(spec_path, kubeconfig, context)
    kube, _, _ = _connect(api_client, target.kubeconfig, target.context)
    st = read_status(kube, target.name, target.namespace)
    table = Table(title=f"RayCluster {st.namespace}/{st.name}: {'ready' if st.ready else 'NOT ready'}"
                  + (" (deleting)" if st.deleting else ""))
    for column in ("group", "role", "ready/desired", "min..max"):
        table.add_column(column)
    table.add_row("head", "head", "1/1" if st.head_ready else "0/1", "1..1")
    for g in st.groups:
        table.add_row(g.name, g.role, f"{g.ready}/{g.desired}", f"{g.min_replicas}..{g.max_replicas}")
    console.print(table)
    console.print(Text(f"state: {st.state or 'none'}; autoscaling: {'on' if st.autoscaling else 'off'}"))
    for condition in st.conditions:
        console.print(Text(f"condition {condition}"))
    console.print(Text(f"head pod: {st.head_pod or '-'} ({st.head_pod_ip or 'no IP'}); "
                       f"head service: {st.head_service} ({st.head_service_ip or 'no IP'})"))
    if st.endpoints:
        console.print(Text("endpoints: " + ", ".join(f"{k}={v}" for k, v in st.endpoints.items())))
    if check_dashboard and st.head_ready:
        _report_auth(kube, st, console)
    return st


def scale(
    group: str,
    replicas: int,
    spec_path: str | Path | None = None,
    *,
    kubeconfig: str | None = None,
    context: str | None = None,
    console: Console,
    api_client: k8s.ApiClient | None = None,
) -> lifecycle.ScaleResult:
    """Set the replica count of one worker group (within its min..max)."""
    target = _target(spec_path, kubeconfig, context)
    kube, _, _ = _connect(api_client, target.kubeconfig, target.context)
    result = lifecycle.scale(kube, target.name, target.namespace, group, replicas)
    console.print(Text(f"Worker group '{group}' of RayCluster '{target.name}': {result.previous} -> {replicas} replicas."))
    if result.warning:
        console.print(Text(result.warning, style="yellow"))
    return result


def dashboard(
    spec_path: str | Path | None = None,
    *,
    port: int = 8265,
    kubeconfig: str | None = None,
    context: str | None = None,
    console: Console,
    api_client: k8s.ApiClient | None = None,
    until: Callable[[str], object] | None = None,
) -> None:
    """Forward the head's dashboard to http://127.0.0.1:`port` until Ctrl-C.

    With `until`, forwarding runs in the background while `until(url)` runs, and stops after it
    returns (the CLI leaves it None; tests and other commands use it).
    """
    target = _target(spec_path, kubeconfig, context)
    kube, _, _ = _connect(api_client, target.kubeconfig, target.context)
    cluster = get_cluster_or_raise(kube, target.name, target.namespace)
    secret = auth_secret_name(cluster)  # None without token auth; an unreadable token fails here, with the fix
    token = read_token(kube, target.namespace, target.name, secret_name=secret) if secret else None
    forward = forward_dashboard(kube, target.name, target.namespace, port=port)
    if until is not None:
        with forward:
            until(forward.url)
        return
    console.print(Text(f"Ray dashboard of '{target.name}': {forward.url}  (Ctrl-C to stop)", style="bold"))
    login = token_command(cluster)
    if login:  # the browser asks for the token; raytf never prints it, only where to get it
        console.print(Text(f"Token authentication is on: the dashboard asks for the token. Print it with:\n  {login}"))
    threading.Thread(target=lambda: console.print(Text(_dashboard_check_line(forward, token))), daemon=True).start()
    try:
        forward.serve_forever()
    except KeyboardInterrupt:
        console.print(Text("Port-forward stopped."))
    finally:
        for error in dict.fromkeys(forward.errors):
            console.print(Text(error, style="red"))


# -- helpers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    name: str
    namespace: str
    kubeconfig: str | None
    context: str | None


def _target(spec_path: str | Path | None, kubeconfig: str | None, context: str | None) -> _Target:
    if spec_path is not None:
        spec = load_cluster_spec(spec_path)
        return _Target(spec.name, spec.namespace, kubeconfig, context)
    record = load_cluster_record()
    if not record or record.get("provider") != "kuberay":
        raise ClusterError(
            "No KubeRay cluster is remembered on this machine (`raytf up` with a kuberay spec was not run here).",
            "Pass the cluster spec file, e.g. `cluster-configs/kuberay-cpu.yaml`.",
        )
    return _Target(record["name"], record["namespace"], kubeconfig or record.get("kubeconfig"),
                   context or record.get("context"))


def _connect(api_client: k8s.ApiClient | None, kubeconfig: str | None, context: str | None) -> tuple[KubeClient, str | None, str | None]:
    """A KubeClient plus the kubeconfig path and context it resolved to (for the cluster record)."""
    if api_client is not None:
        return KubeClient(api_client), kubeconfig, context
    path = kubeconfig_path(kubeconfig)
    return KubeClient(build_api_client(kubeconfig, context)), path, current_context(path, context)


def _check_dashboard(kube: KubeClient, st: ClusterStatus, console: Console, timeout: float = 30.0) -> None:
    try:
        headers = bearer(cluster_token(kube, st.name, st.namespace))
    except AuthTokenUnavailable as err:
        console.print(Text(f"Cluster is ready but its Ray token is unreadable: {err.problem} Fix: {err.fix}", style="yellow"))
        return
    with forward_dashboard(kube, st.name, st.namespace) as forward:
        # Stop at the first failed port-forward (RBAC, pod gone): retrying will not fix those.
        ok = wait_for_dashboard(forward.url, timeout=timeout, check=lambda url: dashboard_responds(url, headers=headers),
                                give_up=lambda: bool(forward.errors))
    if ok:
        console.print(Text("Dashboard answers through a port-forward; open it with `raytf dashboard`."))
    else:
        why = "; ".join(dict.fromkeys(forward.errors)) or f"no answer within {timeout:.0f}s"
        console.print(Text(f"Cluster is ready but its dashboard did not answer through a port-forward ({why}). "
                           "Retry with `raytf dashboard`.", style="yellow"))


def _report_auth(kube: KubeClient, st: ClusterStatus, console: Console) -> None:
    """One line on token auth and one on the dashboard (probed with the token through a port-forward)."""
    try:
        token = cluster_token(kube, st.name, st.namespace)
    except AuthTokenUnavailable as err:
        console.print(Text(f"auth: token, but {err.problem} Fix: {err.fix}", style="yellow"))
        return
    console.print(Text("auth: Ray token (read from the cluster's Secret)" if token else
                       "auth: none (Ray token authentication is off)", style=None if token else "yellow"))
    with forward_dashboard(kube, st.name, st.namespace) as forward:
        console.print(Text(_dashboard_check_line(forward, token)))


def _dashboard_check_line(forward: LocalForward, token: str | None) -> str:
    code = probe_dashboard(forward.url, headers=bearer(token), timeout=10)
    if code == 200:
        return "dashboard: answers" + (" with the cluster's token" if token else "")
    if code in (401, 403):
        return f"dashboard: refused the request (HTTP {code}): " + (
            "the token in the Secret does not match the cluster's" if token else "it requires a token")
    why = "; ".join(dict.fromkeys(forward.errors)) or (f"HTTP {code}" if code else "no answer")
    return f"dashboard: not reachable through a port-forward ({why})"


# -- training as a Ray Job -----------------------------------------------------------------------


def train(
    config_path: str | Path,
    overrides: Sequence[str],
    flags: Sequence[str] = (),
    *,
    console: Console,
    working_dir: str | None = None,
    kubeconfig: str | None = None,
    context: str | None = None,
    api_client: k8s.ApiClient | None = None,
    follow: bool = True,
) -> int:
    """`raytf train` on the remembered KubeRay cluster: a Ray Job submitted through a dashboard port-forward.

    Refused before any request when output_dir is not on the spec's shared storage. The job carries
    the cluster's token (from its Secret) and, unless the spec says `image_has_raytf`, the runtime_env
    that brings raytf and its pinned dependencies. Returns the job's exit code (see submit_training_job).
    """
    from raytf.cluster.jobs import submit_training_job
    from raytf.config import load_config

    target = _target(None, kubeconfig, context)
    spec, spec_source = _recorded_spec(target)
    overrides = [*PLACEMENT_OVERRIDES, *overrides]  # the user's own --set come last and win
    cfg = load_config(config_path, overrides)
    check_output_dir(spec, cfg.output_dir, spec_source=spec_source)
    extra_env = job_runtime_env(spec)
    kube, _, _ = _connect(api_client, target.kubeconfig, target.context)
    with _job_api(kube, target.name, target.namespace) as (url, headers, reattach):
        return submit_training_job(url, str(config_path), overrides, working_dir=working_dir or os.getcwd(),
                                   console=console, flags=flags, follow=follow, headers=headers,
                                   runtime_env=extra_env, reattach_hint=reattach)


def logs(job_id: str | None, *, follow: bool, console: Console, kubeconfig: str | None = None, context: str | None = None,
         api_client: k8s.ApiClient | None = None) -> int:
    """`raytf logs` / `raytf attach` on the remembered KubeRay cluster: its dashboard's job API through a
    port-forward, with the cluster's token."""
    from raytf.cluster.jobs import job_logs

    target = _target(None, kubeconfig, context)
    kube, _, _ = _connect(api_client, target.kubeconfig, target.context)
    with _job_api(kube, target.name, target.namespace) as (url, headers, reattach):
        return job_logs(url, job_id, console=console, follow=follow, headers=headers, reattach_hint=reattach)


@contextlib.contextmanager
def _job_api(kube: KubeClient, name: str, namespace: str) -> Iterator[tuple[str, dict[str, str], str]]:
    """The head's job API through a port-forward while in use: its URL, the cluster's token as request
    headers, and the command that follows a job from inside the head pod (`{job_id}` to fill in; the
    forward's URL dies with this process)."""
    headers = bearer(cluster_token(kube, name, namespace))
    pod, port = head_dashboard_target(kube, name, namespace)
    reattach = f"kubectl exec -n {namespace} {pod} -c ray-head -- ray job logs --follow {{job_id}}"
    with LocalForward(lambda: kube.open_pod_port(pod, namespace, port)) as forward:
        yield forward.url, headers, reattach


def _recorded_spec(target: _Target) -> tuple[ClusterSpec, str]:
    """The spec the remembered cluster was made from (it says where output_dir may go and how raytf gets there)."""
    record = load_cluster_record() or {}
    path = record.get("spec_path")
    if not path:
        raise ClusterError(f"The record of RayCluster '{target.name}' does not say which spec file made it.",
                           "Run `raytf up --cluster <spec>` again (it adopts the running cluster), then retry.")
    spec = load_cluster_spec(path)
    if (spec.name, spec.namespace) != (target.name, target.namespace):
        raise ClusterError(
            f"The spec {path} now describes RayCluster '{spec.namespace}/{spec.name}', not the remembered "
            f"'{target.namespace}/{target.name}'.",
            "Run `raytf up --cluster <spec>` for the cluster you want to train on, then retry.",
        )
    return spec, str(path)


def _progress_line(p: lifecycle.WaitProgress) -> str:
    st = p.status
    pending = next((c for c in st.conditions if c.status != "True"), None)
    line = f"[{p.elapsed:4.0f}s] waiting for '{st.name}': head {'ready' if st.head_ready else 'starting'}; {_groups_line(st)}"
    return line + (f"; {pending}" if pending else "")


def _groups_line(st: ClusterStatus) -> str:
    return ", ".join(f"{g.name} ({g.role}) {g.ready}/{g.desired}" for g in st.groups)


class _Progress:
    """A live status line on a terminal; otherwise one plain line per change (for CI logs)."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._live = console.status("") if console.is_terminal else None
        self._last = ""
        self._lock = threading.Lock()

    def __enter__(self) -> _Progress:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()

    def show(self, line: str) -> None:
        with self._lock:
            if self._live is not None:
                self._live.update(Text(line))
                return
            content = line.split("] ", 1)[-1]  # ignore the elapsed-time prefix when deduplicating
            if content != self._last:
                self._console.print(Text(line))
                self._last = content
