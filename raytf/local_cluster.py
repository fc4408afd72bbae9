"""The embedded cluster: a real Ray head on this machine, bound to 127.0.0.1.

`ray start --head --block` runs as one process of its own session (process group); it owns the
GCS, raylet and dashboard it starts and takes them down when it gets SIGTERM. We record its pid,
ports and temp dir so `stop` ends exactly that cluster and nothing else.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from raytf.errors import ClusterError
from raytf.state import raytf_home

HOST = "127.0.0.1"
# Ray resolves 127.0.0.1 to the machine's routable address unless it runs in single-machine mode
# (the mode it uses on macOS); that mode keeps every Ray address of the cluster on loopback.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


@dataclass(frozen=True)
class LocalCluster:
    pid: int
    gcs_address: str
    dashboard_url: str
    metrics_port: int
    temp_dir: str
    log_path: str
    num_cpus: int
    started_at: float

    provider = "local"

    def record(self) -> dict:
        return {"provider": self.provider, **asdict(self)}

    @classmethod
    def from_record(cls, record: dict) -> "LocalCluster":
        fields = {k: record[k] for k in cls.__dataclass_fields__}
        return cls(**fields)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def start(num_cpus: int | None = None, timeout: float = 90.0, on_wait: Callable[[float], None] | None = None) -> LocalCluster:
    """Start a Ray head and wait until its dashboard answers. Raises ClusterError with the log tail."""
    num_cpus = num_cpus or os.cpu_count() or 1
    gcs_port, dashboard_port, metrics_port = free_port(), free_port(), free_port()
    temp_dir = f"/tmp/raytf-{os.getuid()}/{gcs_port}"  # short: Ray's socket paths have a length limit
    logs = raytf_home() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"head-{gcs_port}.log"
    command = [
        sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
        f"--node-ip-address={HOST}", f"--port={gcs_port}",
        "--include-dashboard=true", f"--dashboard-host={HOST}", f"--dashboard-port={dashboard_port}",
        f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
        f"--metrics-export-port={metrics_port}", f"--num-cpus={num_cpus}", f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    env = dict(os.environ, **LOOPBACK_ENV)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, env=env)
    cluster = LocalCluster(
        pid=process.pid, gcs_address=f"{HOST}:{gcs_port}", dashboard_url=f"http://{HOST}:{dashboard_port}",
        metrics_port=metrics_port, temp_dir=temp_dir, log_path=str(log_path), num_cpus=num_cpus, started_at=time.time(),
    )
    deadline = time.monotonic() + timeout
    while not _ready(cluster):
        if process.poll() is not None:
            raise ClusterError(
                f"The local Ray head exited while starting (exit status {process.returncode}). Last lines of {log_path}:\n"
                + _tail(log_path),
                "Fix what the log says; `ray start` errors about ports usually mean another program holds them.",
            )
        if time.monotonic() > deadline:
            stop(cluster)
            raise ClusterError(
                f"The local Ray head did not answer within {timeout:.0f} s. Last lines of {log_path}:\n" + _tail(log_path),
                "Retry with a longer --timeout, or check the machine's load and free memory.",
            )
        if on_wait:
            on_wait(timeout - (deadline - time.monotonic()))
        time.sleep(0.25)
    return cluster


def dashboard_answers(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/version", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def is_alive(cluster: LocalCluster) -> bool:
    try:
        os.kill(cluster.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _is_ray_head(cluster.pid, cluster.temp_dir)


def stop(cluster: LocalCluster, grace: float = 5.0) -> list[int]:
    """SIGTERM the head's process group, then SIGKILL whatever of this cluster is left after `grace` s.

    Returns the pids that had to be killed. Only processes of this cluster's session are touched:
    its process group, or processes whose command line names its temp dir. (A graceful Ray head
    shutdown can take half a minute; a local cluster holds no state worth that wait.)
    """
    _signal_group(cluster.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _cluster_processes(cluster):
        time.sleep(0.2)
    leftovers = _cluster_processes(cluster)
    _signal_group(cluster.pid, signal.SIGKILL)
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _cluster_processes(cluster):
        time.sleep(0.1)
    _reap(cluster.pid)
    return leftovers


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)  # when we started it ourselves
    except ChildProcessError:
        pass


def _cluster_processes(cluster: LocalCluster) -> list[int]:
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        if proc.info.get("status") == psutil.STATUS_ZOMBIE:
            continue  # already dead; only its parent can reap it
        try:
            in_group = os.getpgid(proc.pid) == cluster.pid
        except (ProcessLookupError, PermissionError):
            in_group = False
        if (in_group or _names_dir(proc.info.get("cmdline") or [], cluster.temp_dir)) and proc.pid != os.getpid():
            found.append(proc.pid)
    return found


def _names_dir(args: list[str], directory: str) -> bool:
    # Exact path or a path below it: /tmp/raytf-0/123 must not match /tmp/raytf-0/1234.
    return any(arg.endswith(directory) or f"{directory}/" in arg for arg in args)


def _is_ray_head(pid: int, temp_dir: str) -> bool:
    import psutil

    try:
        return _names_dir(psutil.Process(pid).cmdline(), temp_dir)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _tail(path: Path | str, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def nodes(dashboard_url: str, timeout: float = 5.0) -> list[dict]:
    """The cluster's nodes (ip, state, resources_total), from the dashboard's state API."""
    url = f"{dashboard_url}/api/v0/nodes?detail=1"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        payload = json.loads(response.read())
    return payload.get("data", {}).get("result", {}).get("result", [])


def _ready(cluster: LocalCluster) -> bool:
    # The dashboard answers before the head's raylet has registered; a cluster without an
    # alive node cannot schedule anything yet.
    if not dashboard_answers(cluster.dashboard_url):
        return False
    try:
        return any(node.get("state") == "ALIVE" for node in nodes(cluster.dashboard_url, timeout=2.0))
    except (urllib.error.URLError, OSError, json.JSONDecodeError):
        return False
