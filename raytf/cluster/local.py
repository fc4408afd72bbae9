"""The embedded cluster: a real Ray head on this machine, bound to 127.0.0.1.

`ray start --head --block` runs as one process of its own session (process group); it owns the
GCS, raylet and dashboard it starts and takes them down when it gets SIGTERM. We record its pid,
ports and temp dir so `stop` ends exactly that cluster and nothing else.

Every cluster runs with Ray's token authentication (`RAY_AUTH_MODE=token`): a fresh random token
per cluster in a file only this user can read (`$RAYTF_HOME/auth/`), handed to Ray by its path
(`RAY_AUTH_TOKEN_PATH`), never by value, so it appears in no command line, environment or log.
Ray's GCS, raylet, dashboard, Job and state APIs then refuse clients without it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

from raytf.cluster.record import load_cluster_record, raytf_home
from raytf.errors import ClusterError
from raytf.runtime import private_temp_root

HOST = "127.0.0.1"
# Ray resolves 127.0.0.1 to the machine's routable address unless it runs in single-machine mode
# (the mode it uses on macOS); that mode keeps every Ray address of the cluster on loopback.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
# Ray's token settings; RAY_AUTH_TOKEN (the token by value) outranks RAY_AUTH_TOKEN_PATH, so raytf
# clears it wherever it sets the path.
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")


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
    # The file holding the cluster's token (never the token itself: the record is world-readable).
    # "" only in records of clusters started before raytf turned token authentication on.
    token_path: str = ""

    provider = "local"

    def record(self) -> dict:
        return {"provider": self.provider, **asdict(self)}

    @classmethod
    def from_record(cls, record: dict) -> "LocalCluster":
        fields = {k: record[k] for k in cls.__dataclass_fields__ if k in record}
        return cls(**fields)


def auth_env(cluster: LocalCluster) -> dict[str, str]:
    """What makes Ray (a head, its workers, a driver, the `ray` CLI) use this cluster's token."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": cluster.token_path} if cluster.token_path else {}


def auth_headers(cluster: LocalCluster) -> dict[str, str]:
    """The HTTP header the dashboard, Job and state APIs want from clients of this cluster."""
    if not cluster.token_path:
        return {}
    try:
        token = Path(cluster.token_path).read_text().strip()
    except FileNotFoundError:
        raise ClusterError(
            f"The token file of the local Ray cluster at {cluster.gcs_address} is gone ({cluster.token_path}).",
            "Nothing can authenticate to that cluster any more: `raytf down`, then `raytf up`.",
        ) from None
    return {"Authorization": f"Bearer {token}"}


def recorded_for(dashboard_url: str) -> LocalCluster | None:
    """The local cluster `raytf up` recorded, if `dashboard_url` is its dashboard."""
    record = load_cluster_record()
    if not record or record.get("provider") != "local" or record.get("dashboard_url") != dashboard_url.rstrip("/"):
        return None
    try:
        return LocalCluster.from_record(record)
    except TypeError:  # a broken record describes no cluster
        return None


def headers_for(dashboard_url: str) -> dict[str, str]:
    """Auth headers for the dashboard at `dashboard_url` when it is the recorded local cluster's, else {}
    (Ray's own clients then fall back to RAY_AUTH_MODE / RAY_AUTH_TOKEN[_PATH] of the environment)."""
    cluster = recorded_for(dashboard_url)
    return auth_headers(cluster) if cluster is not None else {}


@contextlib.contextmanager
def token_auth(cluster: LocalCluster | None) -> Iterator[None]:
    """Make Ray in this process (`ray.init`, its SDKs) use `cluster`'s token; restore the settings after.

    Ray has no per-connection token: a driver takes it from the environment, so it is set here."""
    if cluster is None or not cluster.token_path:
        yield
        return
    saved = {name: os.environ.get(name) for name in AUTH_VARS}
    os.environ.pop("RAY_AUTH_TOKEN", None)
    os.environ.update(auth_env(cluster))
    reload_ray_auth()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        reload_ray_auth()


def reload_ray_auth() -> None:
    # Ray reads RAY_AUTH_MODE into its config at import and caches the token once loaded; this is
    # how Ray itself switches a process to token mode (authentication_token_setup._enable_token_auth).
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _write_token(path: Path) -> None:
    """A fresh 256-bit token (as `ray get-auth-token --generate` makes), readable by this user only."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    path.unlink(missing_ok=True)  # left by a cluster that died on the same port
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others, not even briefly
    with os.fdopen(fd, "w") as file:
        file.write(secrets.token_hex(32))


def remove_token(cluster: LocalCluster) -> None:
    """Delete the cluster's token file: done when the cluster stops, as nothing may use it after."""
    if cluster.token_path:
        Path(cluster.token_path).unlink(missing_ok=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class PendingHead:
    """A Ray head that was launched and may still be starting (see `launch`)."""

    def __init__(self, process: subprocess.Popen, cluster: LocalCluster) -> None:
        self.process = process
        self.cluster = cluster

    def wait(self, timeout: float = 90.0, on_wait: Callable[[float], None] | None = None) -> LocalCluster:
        """Wait until its dashboard answers. Raises ClusterError with the log tail (and stops it)."""
        cluster, process = self.cluster, self.process
        deadline = time.monotonic() + timeout
        while not _ready_or_stop(cluster):
            if process.poll() is not None:
                remove_token(cluster)
                raise ClusterError(
                    f"The local Ray head exited while starting (exit status {process.returncode}). Last lines of "
                    f"{cluster.log_path}:\n" + _tail(cluster.log_path),
                    "Fix what the log says; `ray start` errors about ports usually mean another program holds them.",
                )
            if time.monotonic() > deadline:
                stop(cluster)
                raise ClusterError(
                    f"The local Ray head did not answer within {timeout:.0f} s. Last lines of {cluster.log_path}:\n"
                    + _tail(cluster.log_path),
                    "Retry with a longer --timeout, or check the machine's load and free memory.",
                )
            if on_wait:
                on_wait(timeout - (deadline - time.monotonic()))
            time.sleep(0.1)
        return cluster

    def stop(self) -> None:
        """Stop it, started or not (a run that fails while its head starts leaves nothing behind)."""
        stop(self.cluster)


METRICS_INTERVAL_ENV, METRICS_INTERVAL_MS = "RAY_metrics_report_interval_ms", 2000


def launch(num_cpus: int | None = None) -> PendingHead:
    """Start a Ray head process and return at once; `PendingHead.wait` waits until it is ready.

    A run overlaps the head's start with its own preparation (TensorFlow's import, the model)."""
    num_cpus = num_cpus or os.cpu_count() or 1
    gcs_port, dashboard_port, metrics_port = free_port(), free_port(), free_port()
    temp_dir = f"{private_temp_root()}/{gcs_port}"  # short: Ray's socket paths have a length limit
    logs = raytf_home() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"head-{gcs_port}.log"
    token_path = raytf_home() / "auth" / f"cluster-{gcs_port}.token"
    _write_token(token_path)
    command = [
        sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
        f"--node-ip-address={HOST}", f"--port={gcs_port}",
        "--include-dashboard=true", f"--dashboard-host={HOST}", f"--dashboard-port={dashboard_port}",
        f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
        f"--metrics-export-port={metrics_port}", f"--num-cpus={num_cpus}", f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    env = {name: value for name, value in os.environ.items() if name not in AUTH_VARS}
    env.update(LOOPBACK_ENV, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path))
    # Every process of the cluster exports its metrics every 2 s instead of Ray's 10: `raytf status` and the
    # dashboard see a run of a few seconds (a user's own setting wins).
    env.setdefault(METRICS_INTERVAL_ENV, str(METRICS_INTERVAL_MS))
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, env=env)
    cluster = LocalCluster(
        pid=process.pid, gcs_address=f"{HOST}:{gcs_port}", dashboard_url=f"http://{HOST}:{dashboard_port}",
        metrics_port=metrics_port, temp_dir=temp_dir, log_path=str(log_path), num_cpus=num_cpus, started_at=time.time(),
        token_path=str(token_path),
    )
    return PendingHead(process, cluster)


def start(num_cpus: int | None = None, timeout: float = 90.0, on_wait: Callable[[float], None] | None = None) -> LocalCluster:
    """Start a Ray head and wait until its dashboard answers. Raises ClusterError with the log tail."""
    return launch(num_cpus).wait(timeout, on_wait)


def dashboard_answers(url: str, timeout: float = 1.0, headers: dict[str, str] | None = None) -> bool:
    """Whether the dashboard serves its API. A dashboard refusing the token (401/403) raises ClusterError."""
    request = urllib.request.Request(f"{url}/api/version", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status == 200
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            raise _refused(url, error) from None
        return False
    except (urllib.error.URLError, OSError):
        return False


def _refused(url: str, error: urllib.error.HTTPError) -> ClusterError:
    why = "a token" if error.code == 401 else "the right token"
    return ClusterError(
        f"The Ray dashboard at {url} requires token authentication and the request had not {why} (HTTP {error.code}).",
        "Its token file was replaced or is not the one it started with: `raytf down`, then `raytf up`.",
    )


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
    remove_token(cluster)
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


def nodes(dashboard_url: str, timeout: float = 5.0, headers: dict[str, str] | None = None) -> list[dict]:
    """The cluster's nodes (ip, state, resources_total), from the dashboard's state API.

    `headers` default to the recorded local cluster's token when `dashboard_url` is its dashboard."""
    request = urllib.request.Request(f"{dashboard_url}/api/v0/nodes?detail=1",
                                     headers=headers_for(dashboard_url) if headers is None else headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = json.loads(response.read())
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            raise _refused(dashboard_url, error) from None
        raise
    return payload.get("data", {}).get("result", {}).get("result", [])


def _ready_or_stop(cluster: LocalCluster) -> bool:
    try:
        return _ready(cluster)
    except ClusterError:  # it refused our token: a cluster nobody can use
        stop(cluster)
        raise


def _ready(cluster: LocalCluster) -> bool:
    # The dashboard answers before the head's raylet has registered; a cluster without an
    # alive node cannot schedule anything yet.
    headers = auth_headers(cluster)
    if not dashboard_answers(cluster.dashboard_url, headers=headers):
        return False
    try:
        return any(node.get("state") == "ALIVE" for node in nodes(cluster.dashboard_url, timeout=2.0, headers=headers))
    except (urllib.error.URLError, OSError, json.JSONDecodeError):
        return False
