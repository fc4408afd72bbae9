"""Finding, starting and connecting to the cluster a command acts on.

`raytf up` records the cluster it starts (`raytf.state`); every other command finds it there.
`raytf train` with no recorded cluster starts an embedded one for the run and stops it after.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable, Iterator

from raytf import local_cluster
from raytf.errors import ClusterError
from raytf.local_cluster import LocalCluster
from raytf.state import clear_cluster_record, load_cluster_record, save_cluster_record


def _local_record() -> LocalCluster | None:
    """The local cluster in the record, alive or not (an unreadable record is dropped)."""
    record = load_cluster_record()
    if not record or record.get("provider") != "local":
        return None
    try:
        return LocalCluster.from_record(record)
    except (KeyError, TypeError):
        clear_cluster_record()
        return None


def recorded_local_cluster() -> LocalCluster | None:
    """The local cluster `raytf up` started, if it is still running (a stale record is dropped)."""
    cluster = _local_record()
    if cluster is not None and not local_cluster.is_alive(cluster):
        clear_cluster_record()
        return None
    return cluster


def up_local(num_cpus: int | None = None, timeout: float = 90.0, on_wait: Callable[[float], None] | None = None) -> tuple[LocalCluster, bool]:
    """Start and record a local cluster, or return the running one. Returns (cluster, started_now)."""
    record = load_cluster_record()
    if record and record.get("provider") not in (None, "local"):
        raise ClusterError(
            f"A {record['provider']} cluster '{record.get('name', '?')}' is the current raytf cluster.",
            "Run `raytf down` first, or use it as it is.",
        )
    running = recorded_local_cluster()
    if running:
        return running, False
    cluster = local_cluster.start(num_cpus=num_cpus, timeout=timeout, on_wait=on_wait)
    save_cluster_record(cluster.record())
    return cluster, True


def down_local(grace: float = 5.0) -> LocalCluster | None:
    """Stop the recorded local cluster. Returns it, or None when none was running."""
    cluster = recorded_local_cluster()
    if cluster is not None:
        local_cluster.stop(cluster, grace=grace)
        clear_cluster_record()
    return cluster


@dataclass(frozen=True)
class Connection:
    address: str
    dashboard_url: str | None
    ephemeral: bool  # started for this run and stopped after it


def _driver_runtime_env() -> dict:
    # Workers import the user's modules by the same paths as the driver: current directory first.
    paths = [os.getcwd()] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(paths), "TF_CPP_MIN_LOG_LEVEL": "2"}}


def _use_loopback_addresses() -> None:
    """Make this driver resolve 127.0.0.1 to itself, as the local cluster's processes do.

    Ray turns 127.0.0.1 into the machine's routable address unless it runs in single-machine
    mode; the head gets that mode from its environment (`LOOPBACK_ENV`), but in this process Ray
    may already be imported, so the flag Ray read from that variable is set directly.
    """
    import ray._private.ray_constants as ray_constants

    os.environ.update(local_cluster.LOOPBACK_ENV)
    ray_constants.ENABLE_RAY_CLUSTER = False


@contextlib.contextmanager
def connect(address: str | None = None, on_event: Callable[[str], None] = lambda message: None,
            metadata: dict[str, str] | None = None) -> Iterator[Connection]:
    """Connect this process to Ray for a training run, and disconnect (and stop an ephemeral cluster) after.

    `metadata` is attached to this driver's Ray job (the dashboard's Jobs view shows it)."""
    import ray

    if ray.is_initialized():  # the caller (a notebook, a Ray job) already connected
        yield Connection(address="(existing connection)", dashboard_url=None, ephemeral=False)
        return
    ephemeral: LocalCluster | None = None
    dashboard = None
    init_options: dict = {}
    if address is None:
        cluster = recorded_local_cluster()
        record = load_cluster_record() if cluster is None else None
        if record:
            raise ClusterError(
                f"The current raytf cluster is a {record.get('provider')} cluster; training there runs as a Ray job.",
                "Use `raytf train CONFIG` (it submits the job through a port-forward), pass the cluster's address, "
                "or `raytf down` to go back to local runs.",
            )
        if cluster is None:
            on_event("No cluster is up (`raytf up`); starting an embedded local Ray cluster for this run.")
            cluster = ephemeral = local_cluster.start()
            on_event(f"Embedded cluster ready at {cluster.gcs_address}; dashboard {cluster.dashboard_url}")
        address, dashboard = cluster.gcs_address, cluster.dashboard_url
    if address.split(":")[0] in ("127.0.0.1", "localhost"):
        _use_loopback_addresses()
        init_options["_node_ip_address"] = local_cluster.HOST
    try:
        try:
            from ray.job_config import JobConfig

            ray.init(address=address, runtime_env=_driver_runtime_env(), logging_level="ERROR",
                     log_to_driver=True, job_config=JobConfig(metadata=dict(metadata or {})), **init_options)
        except (ConnectionError, TimeoutError, ValueError, RuntimeError) as err:
            raise ClusterError(
                f"Cannot connect to the Ray cluster at {address}: {err}",
                "Check that it is running (`raytf status`), or start one with `raytf up`.",
            ) from None
        yield Connection(address=address, dashboard_url=dashboard, ephemeral=ephemeral is not None)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if ephemeral is not None:
            local_cluster.stop(ephemeral)
            on_event("Stopped the embedded cluster.")
