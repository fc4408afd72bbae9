"""Forwarding a port of the Ray head pod to 127.0.0.1, like `kubectl port-forward`.

`LocalForward` is the local half: a TCP listener bound to a loopback address only, piping each
accepted connection to a fresh remote stream from `open_remote()`. In production that stream
is `kubernetes.stream.portforward` to the head pod (see `head_dashboard_target`); in tests it is
any socket, so the listener and the piping are tested without a cluster.
"""

from __future__ import annotations

import ipaddress
import select
import socket
import threading
from typing import Any, Callable

from raytf.cluster.kuberay.client import KubeClient
from raytf.cluster.kuberay.manifest import DASHBOARD_PORT
from raytf.cluster.kuberay.status import get_cluster_or_raise, pod_selector, snapshot
from raytf.errors import ClusterError, RaytfError

_CHUNK = 64 * 1024


class LocalForward:
    def __init__(self, open_remote: Callable[[], Any], *, port: int = 0, host: str = "127.0.0.1") -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"port-forwards bind to loopback only, not {host}")
        self._open_remote = open_remote
        try:
            self._listener = socket.create_server((host, port))
        except OSError as err:
            raise ClusterError(
                f"Cannot listen on {host}:{port}: {err.strerror or err}.",
                "Pick another local port (--port), or 0 for any free one.",
            ) from None
        self.host = host
        self.port: int = self._listener.getsockname()[1]
        self.errors: list[str] = []  # why remote streams failed to open, for the caller to show
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> LocalForward:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self.serve_forever, name=f"raytf-forward-{self.port}", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        with self._listener:
            while not self._stop.is_set():
                # A short select timeout lets close() stop the loop; accept() alone would block forever.
                readable, _, _ = select.select([self._listener], [], [], 0.2)
                if readable:
                    conn, _ = self._listener.accept()
                    threading.Thread(target=self._pipe, args=(conn,), daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)  # serve_forever closes the listener on its way out
        else:
            self._listener.close()

    def __enter__(self) -> LocalForward:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pipe(self, local: socket.socket) -> None:
        with local:
            try:
                remote = self._open_remote()
            except (RaytfError, OSError) as err:
                self.errors.append(str(err))
                return
            try:
                _shovel(local, remote, self._stop)
            finally:
                _close_gracefully(remote)


def _shovel(a: Any, b: Any, stop: threading.Event) -> None:
    """Copy bytes both ways until either side closes (the Kubernetes stream has no half-close)."""
    peer = {a: b, b: a}
    while not stop.is_set():
        readable, _, _ = select.select([a, b], [], [], 0.2)
        for sock in readable:
            try:
                data = sock.recv(_CHUNK)
            except OSError:
                return
            if not data:
                return
            try:
                peer[sock].sendall(data)
            except OSError:
                return


def _close_gracefully(remote: Any, timeout: float = 2.0) -> None:
    """Half-close, drain until the far end closes, then close.

    Closing a socket with unread bytes resets it, and the Kubernetes client's port-forward thread
    dies on that reset (unhandled ConnectionResetError); browsers often drop connections early.
    """
    try:
        remote.shutdown(socket.SHUT_WR)
        remote.settimeout(timeout)
        while remote.recv(_CHUNK):
            pass
    except OSError:
        pass  # already reset or timed out: nothing left to be graceful about
    finally:
        remote.close()


def head_dashboard_target(kube: KubeClient, name: str, namespace: str) -> tuple[str, int]:
    """(head pod, container port) behind the head service's dashboard port, as kubectl resolves it."""
    obj = get_cluster_or_raise(kube, name, namespace)
    status = snapshot(obj, kube.list_pods(namespace, pod_selector(name)))
    if not status.head_pod or not status.head_ready:
        raise ClusterError(
            f"The head pod of RayCluster '{name}' in namespace '{namespace}' is not running and ready.",
            "Wait for it with `raytf up <spec>` (or check `raytf status`), then retry.",
        )
    ports = kube.get_service_ports(status.head_service, namespace)
    if ports is None:
        raise ClusterError(
            f"The head service '{status.head_service}' of RayCluster '{name}' does not exist yet.",
            "Wait until the cluster is ready (`raytf status`), then retry.",
        )
    return status.head_pod, ports.get("dashboard", DASHBOARD_PORT)


def forward_dashboard(kube: KubeClient, name: str, namespace: str, *, port: int = 0) -> LocalForward:
    """A (not yet started) forward from 127.0.0.1:`port` to the head pod's dashboard."""
    pod, target = head_dashboard_target(kube, name, namespace)
    return LocalForward(lambda: kube.open_pod_port(pod, namespace, target), port=port)
