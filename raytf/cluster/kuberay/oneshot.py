"""`raytf train CONFIG --cluster SPEC`: one run on a cluster that lives only as long as the run.

What happens (see rayjob.py for why InteractiveMode):
1. The spec and the config are validated, and the run's output_dir must be on the spec's shared
   storage (storage.check_output_dir) -- all before anything is created.
2. A RayJob `<spec name>-<5 chars>` is created: its `rayClusterSpec` is what `raytf up` renders for
   the spec, with `shutdownAfterJobFinishes` and a TTL. `--dry-run` prints it and stops there.
3. Once KubeRay's cluster waits for the job, raytf port-forwards its dashboard (token from the
   cluster's Secret), submits `python -m raytf.cli train CONFIG ...` with the current directory as
   working_dir (the config and model code travel with it, as for `raytf train --submit`) plus the
   runtime_env that brings raytf to stock images, and sets the RayJob's `spec.jobId`.
4. It streams the job's logs and exits from the RayJob's status: 0 SUCCEEDED, 2 FAILED/STOPPED or a
   failed deployment (with KubeRay's message); Ctrl-C stops (deletes the RayJob) or detaches.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import string
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from kubernetes import client as k8s
from rich.console import Console
from rich.text import Text

from raytf.cluster.kuberay import follow as follower
from raytf.cluster.kuberay.auth import bearer
from raytf.cluster.kuberay.client import KubeClient
from raytf.cluster.kuberay.kubeconfig import build_api_client
from raytf.cluster.kuberay.manifest import PLACEMENT_OVERRIDES, manifest_yaml
from raytf.cluster.kuberay.portforward import LocalForward, forward_dashboard
from raytf.cluster.kuberay.rayjob import SUFFIX_LENGTH, rayjob_name, render_rayjob
from raytf.cluster.kuberay.runtime_env import job_runtime_env
from raytf.cluster.kuberay.specfile import load_cluster_spec
from raytf.cluster.kuberay.storage import check_output_dir
from raytf.cluster.kuberay.token import cluster_token
from raytf.cluster.kuberay.versions import version_mismatch_warning
from raytf.errors import ClusterError, RaytfError

_SUFFIX_CHARS = string.ascii_lowercase + string.digits


@dataclass(frozen=True)
class JobRequest:
    """The Ray job raytf submits once the RayJob's cluster is ready."""

    job_id: str
    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]


@dataclass(frozen=True)
class Prepared:
    """Everything decided before touching the cluster (pure; `--dry-run` prints `manifest`)."""

    manifest: dict[str, Any]
    request: JobRequest
    name: str
    namespace: str
    ttl_seconds: int
    warnings: tuple[str, ...] = field(default=())


def prepare(
    config_path: str | Path,
    overrides: Sequence[str],
    spec_path: str | Path,
    *,
    flags: Sequence[str] = (),
    ttl_seconds: int | None = None,
    working_dir: str | Path | None = None,
    suffix: str | None = None,
    job_id: str | None = None,
    strict_output: bool = True,
) -> Prepared:
    """Validate spec and config and render the RayJob. `strict_output=False` (dry runs) turns an
    output_dir off the shared storage into a warning instead of an error."""
    from raytf.cluster.jobs import EXCLUDES, _config_in_working_dir, job_entrypoint, submission_id
    from raytf.config import load_config

    spec = load_cluster_spec(spec_path)
    if ttl_seconds is not None and ttl_seconds < 0:
        raise ClusterError(f"--ttl must be 0 or more seconds, not {ttl_seconds}.",
                           "Pass the seconds KubeRay keeps the finished job's cluster, e.g. --ttl 300.")
    # Parameter servers on ps-capable groups, workers on worker-capable ones; the user's --set win.
    overrides = [*PLACEMENT_OVERRIDES, *overrides]
    cfg = load_config(config_path, overrides)  # bad config: an error before anything is created
    warnings: list[str] = []
    try:
        check_output_dir(spec, str(cfg.output_dir), spec_source=str(spec_path))
    except RaytfError as err:
        if strict_output:
            raise
        warnings.append(f"Warning (a real run would stop here): {err.problem} Fix: {err.fix}")
    work = os.path.abspath(working_dir or os.getcwd())
    relative = _config_in_working_dir(str(config_path), work)
    entrypoint = job_entrypoint(relative, overrides, flags)
    name = rayjob_name(spec.name, suffix or "".join(secrets.choice(_SUFFIX_CHARS) for _ in range(SUFFIX_LENGTH)))
    manifest = render_rayjob(spec, name=name, entrypoint=entrypoint, run=cfg.name, config=relative, ttl_seconds=ttl_seconds)
    request = JobRequest(
        job_id=job_id or submission_id(cfg.name),
        entrypoint=entrypoint,
        runtime_env={"working_dir": work, "excludes": list(EXCLUDES), **job_runtime_env(spec)},
        metadata={"job_name": f"raytf {cfg.name}", "raytf_run": cfg.name, "raytf_config": relative, "rayjob": name},
    )
    return Prepared(manifest, request, name, spec.namespace, manifest["spec"]["ttlSecondsAfterFinished"], tuple(warnings))


def train(
    config_path: str | Path,
    overrides: Sequence[str],
    spec_path: str | Path,
    *,
    flags: Sequence[str] = (),
    dry_run: bool = False,
    ttl_seconds: int | None = None,
    on_interrupt: follower.InterruptChoice = "ask",
    kubeconfig: str | None = None,
    context: str | None = None,
    console: Console,
    err_console: Console | None = None,
    api_client: k8s.ApiClient | None = None,
    working_dir: str | Path | None = None,
    suffix: str | None = None,
    job_id: str | None = None,
    poll_interval: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    interactive: Callable[[], bool] | None = None,
) -> int:
    """Run the config as a RayJob and follow it; returns the exit status (see follow.follow).

    `--dry-run` writes only the RayJob YAML to stdout (warnings to `err_console`) and touches
    nothing else, not even the kubeconfig."""
    err_console = err_console or console
    prepared = prepare(config_path, overrides, spec_path, flags=flags, ttl_seconds=ttl_seconds, working_dir=working_dir,
                       suffix=suffix, job_id=job_id, strict_output=not dry_run)
    if dry_run:
        for warning in prepared.warnings:
            err_console.print(Text(warning, style="yellow"))
        sys.stdout.write(manifest_yaml(prepared.manifest))
        sys.stdout.flush()
        return 0
    warning = version_mismatch_warning(load_cluster_spec(spec_path))
    if warning:
        console.print(Text(warning, style="yellow"))
    kube = KubeClient(api_client if api_client is not None else build_api_client(kubeconfig, context))
    api = follower.RayJobApi(kube)
    api.create(prepared.manifest)
    console.print(Text(f"Created RayJob '{prepared.name}' in namespace '{prepared.namespace}' (its cluster is deleted "
                       f"{prepared.ttl_seconds}s after the job ends)."))
    launcher = DashboardLauncher(kube, prepared.namespace, prepared.request, console=console)
    return follower.follow(api, prepared.name, prepared.namespace, launcher, console=console, on_interrupt=on_interrupt,
                           poll_interval=poll_interval, sleep=sleep, interactive=interactive)


class DashboardLauncher:
    """Submits the Ray job through a port-forward to the cluster's dashboard and streams its logs
    (in a thread, while the follow loop keeps reading the RayJob)."""

    def __init__(self, kube: KubeClient, namespace: str, request: JobRequest, *, console: Console,
                 connect_timeout: float = 60.0, drain_timeout: float = 30.0) -> None:
        self._kube = kube
        self._namespace = namespace
        self._request = request
        self._console = console
        self._connect_timeout = connect_timeout
        self._drain_timeout = drain_timeout
        self._forward: LocalForward | None = None
        self._logs: threading.Thread | None = None
        self._headers: dict[str, str] = {}
        self._client = None
        self._streamed: list[str] = []
        self.errors: list[str] = []

    def start(self, cluster: str) -> str:
        from raytf.cluster.jobs import _redact

        self._headers = bearer(cluster_token(self._kube, cluster, self._namespace))  # {} without token auth
        self._forward = forward_dashboard(self._kube, cluster, self._namespace).start()
        client = self._connect(self._forward)
        req = self._request
        try:
            client.submit_job(entrypoint=req.entrypoint, submission_id=req.job_id, runtime_env=req.runtime_env,
                              metadata=req.metadata)
        except Exception as err:  # noqa: BLE001 - Ray raises RuntimeError/ValueError/ConnectionError for uploads and HTTP errors
            raise ClusterError(
                f"The RayJob's cluster '{cluster}' rejected the training job: {_redact(str(err), self._headers)}",
                "Check the message above; a working directory over Ray's upload limit needs more `excludes` "
                "(keep data out of it), and the spec's ray_version must match the Ray installed here.",
            ) from None
        self._client = client
        self._logs = threading.Thread(target=self._stream, args=(client,), name="raytf-rayjob-logs", daemon=True)
        self._logs.start()
        return req.job_id

    def finish(self) -> None:
        if self._logs is not None:
            self._logs.join(self._drain_timeout)  # the stream ends with the job; a dead forward must not hang us
            if self._logs.is_alive() or self.errors:
                self._catch_up()
        for error in dict.fromkeys(self.errors):
            self._console.print(Text(error, style="yellow"))
        self.close()

    def _catch_up(self) -> None:
        """Print what the log stream missed: a websocket through a port-forward can drop the last
        chunks when the job ends (seen as close code 1006), but the job's log file has them all."""
        from raytf.cluster.jobs import _redact

        seen = "".join(self._streamed)
        try:
            full = self._client.get_job_logs(self._request.job_id)
        except Exception as err:  # noqa: BLE001 - Ray raises RuntimeError/ConnectionError when the dashboard is gone
            self.errors.append(f"Could not fetch the rest of job {self._request.job_id}'s logs: "
                               f"{_redact(str(err), self._headers)} (the RayJob's status decides the outcome).")
            return
        self.errors.clear()  # the stream's failure no longer matters: the logs are complete
        rest = full[len(seen):] if full.startswith(seen) else full
        if rest:
            self._console.out(rest, end="", highlight=False)

    def close(self) -> None:
        if self._forward is not None:
            self._forward.close()
            self._forward = None

    def _connect(self, forward: LocalForward):
        """Ray's job client on the forward; the dashboard may lag the head pod's readiness by seconds."""
        from raytf.cluster.jobs import _client

        deadline = time.monotonic() + self._connect_timeout
        while True:
            try:
                return _client(forward.url, self._headers or None)
            except ClusterError as err:
                if forward.errors or time.monotonic() >= deadline:
                    why = "; ".join(dict.fromkeys(forward.errors))
                    raise ClusterError(err.problem + (f" (port-forward: {why})" if why else ""), err.fix) from None
            time.sleep(1.0)

    def _stream(self, client) -> None:
        from raytf.cluster.jobs import _redact

        async def tail() -> None:
            async for chunk in client.tail_job_logs(self._request.job_id):
                self._streamed.append(chunk)
                self._console.out(chunk, end="", highlight=False)

        try:
            asyncio.run(tail())
        except Exception as err:  # noqa: BLE001 - aiohttp/websocket errors when the forward or the cluster goes
            self.errors.append(f"The log stream of job {self._request.job_id} ended early: "
                               f"{_redact(str(err), self._headers)} (the RayJob's status decides the outcome).")
