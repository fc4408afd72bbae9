"""`raytf train` as a Ray Job: submit it to a cluster's dashboard, stream its logs, report its end.

The job's driver runs `python -m raytf.cli train CONFIG --address auto` on the cluster, in a copy
of `working_dir` (its cwd, so `examples.*` import paths resolve as they do here). raytf itself must
be importable there: installed in the cluster's Python, or brought by the caller's extra `runtime_env`
(KubeRay: `py_modules` + `pip`, raytf/cluster/kuberay/runtime_env.py).
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

from raytf.errors import ClusterError, ConfigError

EXCLUDES = ["runs/", ".git/", "__pycache__/"]
_TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def job_entrypoint(config: str, overrides: Sequence[str], flags: Sequence[str] = ()) -> str:
    args = ["python", "-m", "raytf.cli", "train", config, "--plain", *flags]
    for override in overrides:
        args += ["--set", override]
    args += ["--address", "auto"]
    return shlex.join(args)


def submission_id(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "run"
    return f"raytf-{slug}-{uuid.uuid4().hex[:8]}"


def job_url(dashboard_url: str, job_id: str) -> str:
    return f"{dashboard_url.rstrip('/')}/#/jobs/{job_id}"


def follow_command(job_id: str, dashboard_url: str) -> str:
    """The `ray` command that follows the job; for raytf's local cluster it names its token file (not the token)."""
    from raytf.cluster.local import auth_env, recorded_for

    cluster = recorded_for(dashboard_url)
    env = "".join(f"{name}={shlex.quote(value)} " for name, value in auth_env(cluster).items()) if cluster else ""
    return f"{env}ray job logs --follow {job_id} --address {dashboard_url}"


def _config_in_working_dir(config_path: str, working_dir: str) -> str:
    config, root = Path(config_path).resolve(), Path(working_dir).resolve()
    try:
        return config.relative_to(root).as_posix()
    except ValueError:
        raise ConfigError(
            f"The config {config_path} is outside the directory uploaded with the job ({root}).",
            "Run raytf from the directory that contains the config (and the modules it names).",
        ) from None


def _client(dashboard_url: str, headers: dict[str, str] | None = None):
    from ray.job_submission import JobSubmissionClient

    from raytf.cluster.local import headers_for

    # Given headers (KubeRay: the token from the cluster's Secret) win; raytf's local cluster: its token.
    # Otherwise Ray's client adds the token RAY_AUTH_* configure, if any.
    headers = headers or headers_for(dashboard_url) or None
    from ray.exceptions import AuthenticationError

    try:
        return JobSubmissionClient(dashboard_url, headers=headers)
    except AuthenticationError as err:
        # Ray's own advice (token files, RAY_AUTH_MODE) is about its environment variables, not raytf's tokens.
        refusal = _redact(str(err).strip().splitlines()[0], headers)
        raise ClusterError(
            f"The Ray dashboard at {dashboard_url} refused the token raytf sent ({refusal}).",
            "KubeRay: the token in the cluster's Secret is not the one its pods started with (was the Secret "
            "replaced?); `raytf status` probes it, and recreating the cluster (`raytf down`, `raytf up`) resets both. "
            "Local cluster: `raytf down`, then `raytf up`.",
        ) from None
    except Exception as err:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ...
        raise ClusterError(
            f"Cannot reach the Ray dashboard at {dashboard_url} to submit the job: {_redact(str(err), headers)}",
            "Check that the cluster is up (`raytf status`), or start it with `raytf up`.",
        ) from None


def _stream_logs(client, job_id: str, console) -> None:
    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            console.out(chunk, end="", highlight=False)

    asyncio.run(tail())


def _final_status(client, job_id: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = str(client.get_job_status(job_id).value)
        if status in _TERMINAL or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def _follow_hint(job_id: str, dashboard_url: str, reattach_hint: str | None) -> str:
    other = reattach_hint.format(job_id=job_id) if reattach_hint else follow_command(job_id, dashboard_url)
    return f"raytf attach {job_id}\n  (or: {other})"


def _redact(text: str, headers: dict[str, str] | None) -> str:
    """`text` without the secret part of any auth header (error messages may echo a request)."""
    for value in (headers or {}).values():
        secret = value.split(" ", 1)[-1]
        if secret:
            text = text.replace(secret, "<redacted>")
    return text


def _on_interrupt(client, job_id: str, dashboard_url: str, console, reattach_hint: str | None = None) -> int:
    stop = False
    if sys.stdin is not None and sys.stdin.isatty():
        import typer

        try:
            stop = typer.confirm(f"\nStop job {job_id} on the cluster? (no: leave it running)", default=False)
        except (KeyboardInterrupt, EOFError, typer.Abort):
            stop = False
    if stop:
        client.stop_job(job_id)
        console.print(f"Stopping job {job_id}; status: {_final_status(client, job_id)}.")
        return 2
    console.print(f"Detached; job {job_id} keeps running. Follow it with:\n  {_follow_hint(job_id, dashboard_url, reattach_hint)}")
    return 130


def submit_training_job(
    dashboard_url: str,
    config_path: str,
    overrides: list[str],
    *,
    working_dir: str,
    console,
    follow: bool = True,
    flags: Sequence[str] = (),
    headers: dict[str, str] | None = None,
    runtime_env: dict[str, Any] | None = None,
    reattach_hint: str | None = None,
) -> int:
    """Submit `raytf train` as a Ray Job (`flags`: --resume / --restart, passed on); with `follow`, stream its logs and wait for its end.

    `headers` go with every request (KubeRay: `Authorization: Bearer <token>`; never printed);
    `runtime_env` adds keys to the job's runtime_env (KubeRay: `py_modules` and `pip` bringing raytf);
    `reattach_hint` (with `{job_id}`) replaces the `ray job logs` command shown on detach (a port-forward
    URL dies with this process).
    Returns 0 when the job succeeded, 2 when it failed or was stopped, 130 when the user
    detached with Ctrl-C (the job keeps running).
    """
    from raytf.config import load_config

    cfg = load_config(config_path, overrides)  # bad input never reaches the cluster
    relative = _config_in_working_dir(config_path, working_dir)
    client = _client(dashboard_url, headers)
    job_id = submission_id(cfg.name)
    try:
        client.submit_job(
            entrypoint=job_entrypoint(relative, overrides, flags),
            submission_id=job_id,
            runtime_env={"working_dir": os.path.abspath(working_dir), "excludes": list(EXCLUDES), **(runtime_env or {})},
            metadata={"job_name": f"raytf {cfg.name}", "raytf_run": cfg.name, "raytf_config": relative},
        )
    except Exception as err:  # noqa: BLE001 - upload errors, HTTP 4xx/5xx from the job API
        raise ClusterError(
            f"The Ray cluster at {dashboard_url} rejected the training job: {_redact(str(err), headers)}",
            "Check the message above; a working directory over Ray's upload limit needs more `excludes` "
            "(keep data out of it), and the cluster must run the same Ray version as this machine.",
        ) from None
    console.print(f"Submitted Ray job {job_id} ('{cfg.name}').")
    console.print(f"  Dashboard: {job_url(dashboard_url, job_id)}")
    if not follow:
        console.print(f"Follow it with: {_follow_hint(job_id, dashboard_url, reattach_hint)}")
        return 0
    return _follow(client, job_id, dashboard_url, console, headers, reattach_hint)


def _follow(client, job_id: str, dashboard_url: str, console, headers: dict[str, str] | None,
            reattach_hint: str | None) -> int:
    """Stream the job's logs until it ends; its exit code (`_outcome`), or 130 when the user detached."""
    try:
        _stream_logs(client, job_id, console)
        status = _final_status(client, job_id)
    except KeyboardInterrupt:
        return _on_interrupt(client, job_id, dashboard_url, console, reattach_hint)
    except Exception as err:  # noqa: BLE001 - the log stream dropped (dashboard gone)
        raise ClusterError(
            f"Lost the log stream of job {job_id} at {dashboard_url}: {_redact(str(err), headers)}",
            f"The job may still run; check it with `{_follow_hint(job_id, dashboard_url, reattach_hint)}`.",
        ) from None
    return _outcome(console, job_id, status)


def _outcome(console, job_id: str, status: str) -> int:
    """Say how the job ended: 0 when it succeeded, else 2."""
    if status == "SUCCEEDED":
        console.print(f"Ray job {job_id} succeeded.")
        return 0
    console.print(f"Ray job {job_id} ended {status}; its logs are above and in the dashboard's Jobs view.")
    return 2


# -- coming back to a submitted run: `raytf logs`, `raytf attach` ------------------------------------

def raytf_jobs(client) -> list:
    """The cluster's raytf training jobs (submitted by `raytf train`), newest first."""
    jobs = [job for job in client.list_jobs() if (job.metadata or {}).get("raytf_run") and job.submission_id]
    return sorted(jobs, key=lambda job: job.start_time or 0, reverse=True)


def pick_job(client, job_id: str | None, dashboard_url: str):
    """The job `job_id`, or the newest raytf job; a clear error when there is none or the id is unknown."""
    jobs = raytf_jobs(client)
    if job_id is None:
        if not jobs:
            raise ClusterError(f"No raytf job was ever submitted to the cluster at {dashboard_url}.",
                               "Submit one with `raytf train CONFIG --submit` (runs on a KubeRay cluster always are).")
        return jobs[0]
    for job in jobs:
        if job.submission_id == job_id:
            return job
    import difflib

    known = [job.submission_id for job in jobs]
    guess = difflib.get_close_matches(job_id, known, n=1)
    raise ClusterError(f"The cluster at {dashboard_url} has no raytf job '{job_id}'.",
                       (f"Did you mean {guess[0]}? " if guess else "")
                       + (f"Its raytf jobs, newest first: {', '.join(known[:5])}." if known else "It has no raytf job."))


def job_logs(dashboard_url: str, job_id: str | None, *, console, follow: bool = False,
             headers: dict[str, str] | None = None, reattach_hint: str | None = None) -> int:
    """Print a submitted run's logs (`job_id`, default the newest raytf job). With `follow`, stream them
    until the job ends (Ctrl-C detaches again, or stops it when asked) and return its exit code as
    `submit_training_job` does; without, print what there is and return 0."""
    client = _client(dashboard_url, headers)
    job = pick_job(client, job_id, dashboard_url)
    job_id = job.submission_id
    status = str(job.status.value if hasattr(job.status, "value") else job.status)
    console.print(f"Ray job {job_id} ('{job.metadata.get('raytf_run')}'): {status}. Dashboard: {job_url(dashboard_url, job_id)}")
    if not follow or status in _TERMINAL:
        try:
            text = client.get_job_logs(job_id)
        except Exception as err:  # noqa: BLE001 - the dashboard went away meanwhile
            raise ClusterError(f"Lost the logs of job {job_id} at {dashboard_url}: {_redact(str(err), headers)}",
                               "Check the cluster with `raytf status`; the job may still run.") from None
        console.out(text, end="", highlight=False)
        return _outcome(console, job_id, status) if follow else 0
    return _follow(client, job_id, dashboard_url, console, headers, reattach_hint)


def submit_pool_job(dashboard_url: str, per_node: int | None, *, headers: dict[str, str] | None = None,
                    runtime_env: dict[str, Any] | None = None) -> str:
    """Start (or resize) the cluster's warm pool from a short Ray job on the head: `python -m raytf.pool`
    (raytf.pool.start). Its processes get the job's `runtime_env` (KubeRay: raytf by py_modules and pip,
    as every run's job brings it) and outlive it. Returns the job's id."""
    client = _client(dashboard_url, headers)
    entrypoint = "python -m raytf.pool" + (f" --warm {int(per_node)}" if per_node is not None else "")
    job_id = f"raytf-pool-{uuid.uuid4().hex[:8]}"
    try:
        client.submit_job(entrypoint=entrypoint, submission_id=job_id, runtime_env=dict(runtime_env or {}),
                          metadata={"job_name": "raytf warm pool"})
    except Exception as err:  # noqa: BLE001 - upload errors, HTTP 4xx/5xx from the job API
        raise ClusterError(f"The Ray cluster at {dashboard_url} rejected the warm pool's job: {_redact(str(err), headers)}",
                           "The cluster is up; runs start their actors afresh. Retry with `raytf up --warm N`.") from None
    return job_id
