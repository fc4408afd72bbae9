"""What `raytf status` shows about runs in progress, read over HTTP without joining the cluster.

Live runs come from the state API (alive actors named `raytf:<run>:<role>-<i>`), which wants the
cluster's token; their step, loss and rate from the node's Prometheus endpoint, where raytf's
metrics land (raytf/observe/metrics.py). Ray serves that endpoint without authentication (Prometheus scrapes
it), on 127.0.0.1 for the local cluster.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field

_SAMPLE = re.compile(r'^ray_(raytf_step|raytf_loss|raytf_samples_per_second)\{([^}]*)\}\s+(\S+)')
_LABEL = re.compile(r'(\w+)="([^"]*)"')


@dataclass
class RunStatus:
    name: str
    workers: int = 0
    servers: int = 0
    steps: dict[str, float] = field(default_factory=dict)  # worker index -> step
    losses: dict[str, float] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)

    @property
    def step(self) -> int | None:
        return int(min(self.steps.values())) if self.steps else None

    @property
    def loss(self) -> float | None:
        return sum(self.losses.values()) / len(self.losses) if self.losses else None

    @property
    def samples_per_second(self) -> float | None:
        return sum(self.rates.values()) if self.rates else None


@dataclass
class PoolHostStatus:
    """One process of the warm pool (raytf.pool): its Ray state, and the run's actor it plays now."""

    name: str
    node: str  # Ray's node id, shortened
    state: str  # Ray's: ALIVE, RESTARTING (a fresh process imports TensorFlow), ...
    pid: int | None
    playing: str | None = None  # e.g. raytf:digits:worker-0, from the task it runs


@dataclass
class ClusterActivity:
    runs: dict[str, RunStatus]
    pool: list[PoolHostStatus]


POOL_PREFIX = "raytf-pool:"  # raytf.pool.host.NAME_PREFIX (that layer is above this one)


def _client(dashboard_url: str, headers: dict[str, str] | None):
    from ray.util.state import StateApiClient

    from raytf.cluster.local import headers_for

    auth = headers_for(dashboard_url) if headers is None else headers
    return StateApiClient(address=dashboard_url, headers={"Content-Type": "application/json", **auth})


def activity(dashboard_url: str, headers: dict[str, str] | None = None) -> ClusterActivity:
    """raytf's runs with actors alive, and the warm pool. A run's own actors are named
    `raytf:<run>:<role>-<i>`; a pool host playing one runs tasks named after it (`raytf:<run>:worker-0.run`).
    `headers` default to the recorded local cluster's token when `dashboard_url` is its dashboard;
    without one, Ray's client uses RAY_AUTH_* of the environment."""
    from ray.util.state.common import ListApiOptions, StateResource

    client = _client(dashboard_url, headers)
    live = ListApiOptions(filters=[("state", "!=", "DEAD")], limit=10_000)
    actors = client.list(StateResource.ACTORS, options=live, raise_on_missing_output=True)
    runs: dict[str, RunStatus] = {}
    pool: dict[str, PoolHostStatus] = {}
    for actor in actors:
        name = actor.name or ""
        if name.startswith(POOL_PREFIX):
            pool[actor.actor_id] = PoolHostStatus(name, (actor.node_id or "?")[:12], actor.state, actor.pid)
        elif actor.state == "ALIVE":
            _count(runs, name)
    if pool:
        # A host plays the run of its newest running raytf task: a task of an earlier run can still show as
        # running (its end not recorded while the driver that called it lives on: a run that failed).
        running = ListApiOptions(filters=[("state", "=", "RUNNING")], limit=10_000, detail=True)
        newest: dict[str, int] = {}
        for task in client.list(StateResource.TASKS, options=running, raise_on_missing_output=False):
            host = pool.get(task.actor_id or "")
            created = task.creation_time_ms or 0
            if host is not None and (task.name or "").startswith("raytf:") and created >= newest.get(host.name, -1):
                host.playing, newest[host.name] = task.name.rsplit(".", 1)[0], created
        for host in pool.values():
            if host.playing:
                _count(runs, host.playing)
    return ClusterActivity(runs, sorted(pool.values(), key=lambda h: h.name))


def live_runs(dashboard_url: str, headers: dict[str, str] | None = None) -> dict[str, RunStatus]:
    """raytf's runs with actors alive (see `activity`)."""
    return activity(dashboard_url, headers).runs


def _count(runs: dict[str, RunStatus], actor_name: str) -> None:
    parts = actor_name.split(":")
    if len(parts) != 3 or parts[0] != "raytf":
        return
    run = runs.setdefault(parts[1], RunStatus(parts[1]))
    if parts[2].startswith("worker-"):
        run.workers += 1
    elif parts[2].startswith("ps-"):
        run.servers += 1


def add_metrics(runs: dict[str, RunStatus], metrics_url: str) -> None:
    """Fill in step, loss and rate from the Prometheus text (missing until Ray's first export)."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as response:
            body = response.read().decode()
    except (urllib.error.URLError, OSError):
        return
    for line in body.splitlines():
        match = _SAMPLE.match(line)
        if not match:
            continue
        labels = dict(_LABEL.findall(match.group(2)))
        run = runs.get(labels.get("run", ""))
        if run is None or labels.get("role") != "worker":
            continue
        target = {"raytf_step": run.steps, "raytf_loss": run.losses, "raytf_samples_per_second": run.rates}[match.group(1)]
        target[labels.get("index", "?")] = float(match.group(3))
