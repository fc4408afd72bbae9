"""Finding, starting and connecting to the cluster a command acts on.

`raytf up` records the cluster it starts (`raytf.cluster.record`); every other command finds it there.
`raytf train` with no recorded cluster starts an embedded one for the run and stops it after.
A driver connecting to either uses that cluster's token (`local_cluster.token_auth`).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from raytf.cluster import local as local_cluster
from raytf.cluster.local import LocalCluster
from raytf.cluster.record import clear_cluster_record, load_cluster_record, save_cluster_record
from raytf.errors import ClusterError
from raytf.observe.startup import StartupClock


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
        local_cluster.remove_token(cluster)
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


def dashboard_login_hint(cluster: LocalCluster) -> str | None:
    """How to open the cluster's dashboard in a browser, which asks for the token (None: no token)."""
    if not cluster.token_path:
        return None
    return (f"The dashboard asks for this cluster's token once per browser (it keeps it in a cookie): "
            f"paste the contents of {cluster.token_path} (only you can read it).")


@dataclass(frozen=True)
class Connection:
    address: str
    dashboard_url: str | None
    ephemeral: bool  # started for this run and stopped after it


def _driver_runtime_env() -> dict:
    # Workers import the user's modules by the same paths as the driver: current directory first.
    from raytf.observe.native_logs import VERBOSE_ENV, verbose_requested

    paths = [os.getcwd()] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    # Ray Data (data.train as a dataset) logs every execution of every epoch at INFO: warnings only.
    env = {"PYTHONPATH": os.pathsep.join(paths), "TF_CPP_MIN_LOG_LEVEL": "3", "RAY_DATA_LOG_LEVEL": "WARNING"}
    if verbose_requested():  # the actors show TensorFlow's native logs too
        env.update({VERBOSE_ENV: "1", "TF_CPP_MIN_LOG_LEVEL": "0", "RAY_DATA_LOG_LEVEL": "INFO"})
    return {"env_vars": env}


def use_loopback_addresses() -> None:
    """Make this driver resolve 127.0.0.1 to itself, as the local cluster's processes do.

    Ray turns 127.0.0.1 into the machine's routable address unless it runs in single-machine
    mode; the head gets that mode from its environment (`LOOPBACK_ENV`), but in this process Ray
    may already be imported, so the flag Ray read from that variable is set directly.
    """
    import ray._private.ray_constants as ray_constants

    os.environ.update(local_cluster.LOOPBACK_ENV)
    ray_constants.ENABLE_RAY_CLUSTER = False


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail at once on a malformed address or one nothing listens on: given either, `ray.init`
    retries for about 14 minutes. ("auto" and ray:// client addresses are left to Ray.)"""
    if address == "auto" or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ClusterError(f"The Ray address '{address}' is not of the form HOST:PORT.",
                           "Pass the head's GCS address, e.g. --address 127.0.0.1:6379 (`raytf status` prints the local cluster's).")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise ClusterError(f"Nothing answers at the Ray address {address} ({err.strerror or err}).",
                           "Check the host and port (`raytf status` prints the local cluster's address), "
                           "or start a cluster with `raytf up`.") from None


_VERSION_MISMATCH = re.compile(r"started with:\s*Ray: (\S+)\s*Python: (\S+).*started with:\s*Ray: (\S+)\s*Python: (\S+)", re.S)


def _connect_error(address: str, err: Exception) -> ClusterError:
    """One paragraph for why `ray.init` refused the address (Ray's own messages span lines)."""
    text = str(err)
    versions = _VERSION_MISMATCH.search(text) if "Version mismatch" in text else None
    if versions:
        cluster_ray, cluster_python, local_ray, local_python = versions.groups()
        return ClusterError(
            f"The Ray cluster at {address} runs Ray {cluster_ray} on Python {cluster_python}, but this machine has "
            f"Ray {local_ray} on Python {local_python}; a Ray driver must match its cluster's versions.",
            f"Run raytf here under Python {cluster_python} with `pip install ray=={cluster_ray}`, or train on a cluster "
            "of this machine's versions (for the local one: `raytf down`, then `raytf up`).",
        )
    return ClusterError(
        f"Cannot connect to the Ray cluster at {address}: {' '.join(text.split())}",
        "Check that it is running (`raytf status`), or start one with `raytf up`. A cluster with token "
        "authentication needs RAY_AUTH_MODE=token and its token (e.g. RAY_AUTH_TOKEN_PATH) in this environment.",
    )


@contextlib.contextmanager
def _driver(address: str, metadata: dict[str, str] | None, init_options: dict, clock: StartupClock) -> Iterator[None]:
    """This process as a Ray driver of the cluster at `address`, disconnected after."""
    import ray
    from ray.job_config import JobConfig

    check_reachable(address)
    try:
        try:
            from raytf.observe.native_logs import verbose_requested

            with clock.span("connect"):
                ray.init(address=address, runtime_env=_driver_runtime_env(),
                         logging_level="INFO" if verbose_requested() else "ERROR",
                         log_to_driver=True, job_config=JobConfig(metadata=dict(metadata or {})), **init_options)
        except (ConnectionError, TimeoutError, ValueError, RuntimeError) as err:
            raise _connect_error(address, err) from None
        yield
    finally:
        if ray.is_initialized():
            ray.shutdown()


def needs_embedded_cluster(address: str | None) -> bool:
    """Whether a run given `address` would start an embedded cluster of its own (none is up)."""
    ray = sys.modules.get("ray")  # not imported: not connected either (and importing it costs a second)
    connected = ray is not None and ray.is_initialized()
    return address is None and not connected and load_cluster_record() is None


@contextlib.contextmanager
def connect(address: str | None = None, on_event: Callable[[str], None] = lambda message: None,
            metadata: dict[str, str] | None = None, clock: StartupClock | None = None,
            head: local_cluster.PendingHead | None = None) -> Iterator[Connection]:
    """Connect this process to Ray for a training run, and disconnect (and stop an ephemeral cluster) after.

    `metadata` is attached to this driver's Ray job (the dashboard's Jobs view shows it); `clock`
    records the cluster's start and the connection as start-up phases. `head` is an embedded
    head the caller already launched (see `needs_embedded_cluster`): it becomes the run's cluster
    when none is up, and is stopped in any case."""
    import ray

    clock = clock or StartupClock()
    if ray.is_initialized():  # the caller (a notebook, a Ray job) already connected
        if head is not None:
            head.stop()
        yield Connection(address="(existing connection)", dashboard_url=None, ephemeral=False)
        return
    try:
        address, cluster, ephemeral = _target(address, on_event, clock, head)
    except BaseException:
        if head is not None:
            head.stop()
        raise
    init_options: dict = {}
    if address.split(":")[0] in ("127.0.0.1", "localhost"):
        use_loopback_addresses()
        init_options["_node_ip_address"] = local_cluster.HOST
    try:
        with local_cluster.token_auth(cluster), _driver(address, metadata, init_options, clock):
            yield Connection(address=address, dashboard_url=cluster.dashboard_url if cluster else None,
                             ephemeral=ephemeral)
    finally:
        if ephemeral:
            local_cluster.stop(cluster)
            on_event("Stopped the embedded cluster.")


def _target(address: str | None, on_event: Callable[[str], None], clock: StartupClock,
            head: local_cluster.PendingHead | None) -> tuple[str, LocalCluster | None, bool]:
    """(address, raytf's local cluster there or None, whether it is an embedded one for this run).

    A launched `head` that is not needed (a cluster is up, or an address was given) is stopped."""
    cluster = recorded_local_cluster()
    if address is not None and (cluster is None or address != cluster.gcs_address):
        cluster = None  # not raytf's: Ray's own RAY_AUTH_* settings of the environment apply
    if address is not None or cluster is not None:
        if head is not None:
            head.stop()
        return address or cluster.gcs_address, cluster, False
    record = load_cluster_record()
    if record:
        raise ClusterError(
            f"The current raytf cluster is a {record.get('provider')} cluster; training there runs as a Ray job.",
            "Use `raytf train CONFIG` (it submits the job through a port-forward), pass the cluster's address, "
            "or `raytf down` to go back to local runs.",
        )
    on_event("No cluster is up (`raytf up`); starting an embedded local Ray cluster for this run.")
    head = head or local_cluster.launch()
    try:
        cluster = head.wait()
    finally:
        clock.add("cluster_start", "driver", head.cluster.started_at, time.time())
    on_event(f"Embedded cluster ready at {cluster.gcs_address}; dashboard {cluster.dashboard_url} "
             f"(it asks for the token in {cluster.token_path})")
    return cluster.gcs_address, cluster, True
