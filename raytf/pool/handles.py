"""A run's view of a pool host: the lease it holds on it, and a handle that is spoken to like the
Ray actor the host stands in for (`handle.push.remote(...)`), so the driver, the servers and the
workers need not know which of their peers came from the pool.

A call goes to the host's one method, `call`, with the lease: the host runs it on the role it holds
for that lease, or builds the role first where its process is new (Ray restarted it). Ray names
each such task after the run's actor (`raytf:<run>:worker-0.run`), so the dashboard's task views
show whose work a host does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ROLES = ("ps", "worker")
# A Ray job's runtime_env keys that are the run's own, not its processes' make-up: a host takes them on
# for the lease (environment variables, the working_dir's code); the rest (pip, py_modules, conda, ...)
# must be what the host was started with (`code_env`).
PER_RUN_ENV = ("env_vars", "working_dir", "excludes")


def code_env(runtime_env: dict) -> str:
    """What of a runtime_env a process is made of (not per run), canonical, to compare a run's with a host's."""
    import json

    return json.dumps({k: v for k, v in dict(runtime_env or {}).items() if k not in PER_RUN_ENV}, sort_keys=True,
                      default=str)


def gcs_actor_entry(actor) -> tuple[int, str] | None:
    """(restarts, state) of a Ray actor (its handle, or a HostedHandle: its host's) as Ray's GCS has it:
    how many times Ray restarted its process, and ALIVE, RESTARTING, DEAD or PENDING_CREATION; None if
    the GCS does not know it. Ray's public API has neither (`ray.util.state` goes through the dashboard,
    which may be off, and has no restart count), so this reads the GCS's actor table through Ray's
    private `ray._private.state`, here and nowhere else."""
    from ray._private.state import state

    info = state.actor_table(actor._actor_id.hex())
    return (int(info["NumRestarts"]), str(info["State"])) if info else None


@dataclass(frozen=True)
class Lease:
    """One run's claim on one host: the role it plays there, and what the run's own actors would
    have had from the run's Ray job (its import paths and environment variables)."""

    run_id: str
    run_name: str
    role: str  # "ps" or "worker"
    index: int
    description: str
    job_id: str  # the driver's Ray job (hex): a host whose run's driver is gone recycles itself
    paths: tuple[str, ...] = ()  # the driver's current directory and PYTHONPATH, as its actors get them
    env: tuple[tuple[str, str], ...] = ()  # the environment variables the run's actors get
    working_dir: str | None = None  # the job's working_dir package (a URI): unpacked by a host that lacks it

    @property
    def actor_name(self) -> str:
        return f"raytf:{self.run_name}:{self.role}-{self.index}"


class HostedMethod:
    """`handle.<name>`: `.remote(...)` calls it on the host, for the lease."""

    def __init__(self, host, lease: Lease, name: str) -> None:
        self._host, self._lease, self._name = host, lease, name

    def remote(self, *args: Any, **kwargs: Any):
        task = f"{self._lease.actor_name}.{self._name}"
        return self._host.call.options(name=task).remote(self._lease, self._name, *args, **kwargs)


class HostedHandle:
    """A pool host as the run's server or worker. Picklable (the workers get the servers' handles).
    `restarts_before`: Ray's restart count of the host when the run took it (the run counts its own)."""

    def __init__(self, host, lease: Lease, restarts_before: int = 0) -> None:
        self.host = host
        self.lease = lease
        self.restarts_before = restarts_before
        self._actor_id = host._actor_id  # what Ray's actor table knows it by (gcs_actor_entry)

    def __getattr__(self, name: str) -> HostedMethod:
        if name.startswith("_"):  # pickle's and copy's probes, before __dict__ exists
            raise AttributeError(name)
        return HostedMethod(self.host, self.lease, name)

    def __repr__(self) -> str:
        return f"HostedHandle({self.lease.actor_name} on pool host {self._actor_id.hex()[:8]})"
