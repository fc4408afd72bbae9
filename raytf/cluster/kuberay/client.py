"""The boundary to the Kubernetes API: the official client in, plain data and named errors out.

Everything above this module works with dicts (RayCluster objects), `PodInfo`/`EventInfo`
and raytf errors; no `ApiException` or urllib3 error escapes. The `ApiClient` is injected so
tests point the real client at a fake API server on 127.0.0.1.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import portforward

from raytf.cluster.kuberay.errors import (
    AlreadyExists,
    CrdNotInstalled,
    Forbidden,
    KubeUnreachable,
    NotFound,
    Rejected,
    Unauthorized,
)
from raytf.cluster.kuberay.manifest import GROUP, PLURAL, VERSION
from raytf.errors import RaytfError

RAYCLUSTERS = f"{PLURAL}.{GROUP}"
T = TypeVar("T")


@dataclass(frozen=True)
class PodInfo:
    name: str
    phase: str
    labels: dict[str, str]
    ready: bool
    waiting_reasons: tuple[str, ...]  # e.g. ("ImagePullBackOff: Back-off pulling image ...",)


@dataclass(frozen=True)
class EventInfo:
    type: str
    reason: str
    message: str
    count: int


class KubeClient:
    """Just the calls raytf makes, each translated to raytf errors on failure."""

    def __init__(self, api_client: k8s.ApiClient, *, request_timeout: tuple[float, float] = (5.0, 30.0)) -> None:
        self.api_client = api_client
        self.host = api_client.configuration.host
        self._custom = k8s.CustomObjectsApi(api_client)
        self._core = k8s.CoreV1Api(api_client)
        self._timeout = request_timeout
        # `kubernetes.stream.portforward` temporarily swaps `call_api` on the ApiClient it uses,
        # so port-forwards get their own ApiClient and are opened one at a time.
        self._pf_core: k8s.CoreV1Api | None = None
        self._pf_lock = threading.Lock()

    # -- RayCluster custom objects ------------------------------------------------------------

    def get_cluster(self, name: str, namespace: str) -> dict[str, Any] | None:
        """The RayCluster, or None when it does not exist."""
        try:
            return self._call("get", RAYCLUSTERS, namespace, name, lambda: self._custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, _request_timeout=self._timeout))
        except NotFound:
            return None

    def list_clusters(self, namespace: str) -> list[dict[str, Any]]:
        found = self._call("list", RAYCLUSTERS, namespace, None, lambda: self._custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, _request_timeout=self._timeout))
        return list(found.get("items", []))

    def create_cluster(self, manifest: dict[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        return self._call("create", RAYCLUSTERS, meta["namespace"], meta["name"], lambda: self._custom.create_namespaced_custom_object(
            GROUP, VERSION, meta["namespace"], PLURAL, manifest, _request_timeout=self._timeout))

    def patch_cluster(self, name: str, namespace: str, operations: list[dict[str, Any]]) -> dict[str, Any]:
        """Apply an RFC 6902 JSON Patch (CRDs take no strategic merge; merge-patch replaces lists)."""
        return self._call("patch", RAYCLUSTERS, namespace, name, lambda: self._custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, operations,
            _content_type="application/json-patch+json", _request_timeout=self._timeout))

    def delete_cluster(self, name: str, namespace: str) -> bool:
        """Ask for deletion; False when there was nothing to delete.

        Foreground propagation keeps the RayCluster until its pods are gone, so waiting for the
        object to vanish means waiting for the resources to be freed."""
        try:
            self._call("delete", RAYCLUSTERS, namespace, name, lambda: self._custom.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, propagation_policy="Foreground",
                _request_timeout=self._timeout))
        except NotFound:
            return False
        return True

    # -- Core objects ---------------------------------------------------------------------------

    def list_pods(self, namespace: str, label_selector: str) -> list[PodInfo]:
        pods = self._call("list", "pods", namespace, None, lambda: self._core.list_namespaced_pod(
            namespace, label_selector=label_selector, _request_timeout=self._timeout))
        return sorted((_pod_info(p) for p in pods.items or []), key=lambda p: p.name)

    def list_events(self, namespace: str, involved_name: str) -> list[EventInfo]:
        events = self._call("list", "events", namespace, None, lambda: self._core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={involved_name}", _request_timeout=self._timeout))
        return [
            EventInfo(type=e.type or "", reason=e.reason or "", message=(e.message or "").strip(), count=e.count or 1)
            for e in events.items or []
        ]

    def get_service_ports(self, name: str, namespace: str) -> dict[str, int] | None:
        """Port name -> target port of a Service, or None when it does not exist."""
        try:
            svc = self._call("get", "services", namespace, name, lambda: self._core.read_namespaced_service(
                name, namespace, _request_timeout=self._timeout))
        except NotFound:
            return None
        ports: dict[str, int] = {}
        for port in (svc.spec.ports if svc.spec else None) or []:
            target = port.target_port
            ports[port.name or str(port.port)] = target if isinstance(target, int) else port.port
        return ports

    def read_secret(self, name: str, namespace: str) -> dict[str, str] | None:
        """A Secret's data, decoded; None when it does not exist (403 raises `Forbidden`)."""
        try:
            secret = self._call("get", "secrets", namespace, name, lambda: self._core.read_namespaced_secret(
                name, namespace, _request_timeout=self._timeout))
        except NotFound:
            return None
        decoded: dict[str, str] = {}
        for key, value in (secret.data or {}).items():
            try:
                decoded[key] = base64.b64decode(value, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                continue  # not text: never a Ray token
        return decoded

    def open_pod_port(self, pod: str, namespace: str, port: int) -> Any:
        """A socket-like stream to `port` inside `pod` (one websocket per call, like kubectl)."""
        with self._pf_lock:
            if self._pf_core is None:
                self._pf_core = k8s.CoreV1Api(k8s.ApiClient(self.api_client.configuration))
            forward = self._call("create", "pods/portforward", namespace, pod, lambda: portforward(
                self._pf_core.connect_get_namespaced_pod_portforward, pod, namespace, ports=str(port)))
        return forward.socket(port)

    # -- translation ----------------------------------------------------------------------------

    def _call(self, verb: str, resource: str, namespace: str, name: str | None, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except ApiException as err:
            raise self._translate(err, verb, resource, namespace, name) from None
        except urllib3.exceptions.HTTPError as err:
            raise KubeUnreachable.make(self.host, _connection_detail(err)) from None

    def _translate(self, err: ApiException, verb: str, resource: str, namespace: str, name: str | None) -> RaytfError:
        body = _status_body(err)
        message = str(body.get("message") or err.reason or "").strip()
        status = err.status or 0
        if status == 0:
            # Websocket (port-forward) failures arrive as status 0 with the handshake text.
            if "Handshake status 403" in message:
                return Forbidden.make(verb, resource, namespace, message)
            if "Handshake status 404" in message:
                return NotFound(
                    f"Pod '{name}' in namespace '{namespace}' was not found for port-forwarding.",
                    "It may have been restarted; check `raytf status` and retry.",
                )
            return KubeUnreachable.make(self.host, message or "no response")
        if status == 401:
            return Unauthorized.make(self.host)
        if status == 403:
            return Forbidden.make(verb, resource, namespace, message)
        if status == 404:
            details = body.get("details") or {}
            if details.get("kind") == "namespaces":
                return NotFound(
                    f"Namespace '{namespace}' does not exist.",
                    f"Create it with `kubectl create namespace {namespace}` or set `namespace` in the spec.",
                )
            if resource == RAYCLUSTERS and not details.get("name"):
                # A missing object names itself in `details`; a missing API group/CRD does not.
                return CrdNotInstalled.make(self.host)
            return NotFound.make(resource, name or "?", namespace)
        if status == 409 and verb == "create":
            return AlreadyExists.make(name or "?", namespace)
        return Rejected.make(verb, resource, namespace, status, message or str(err.reason))


def _status_body(err: ApiException) -> dict[str, Any]:
    try:
        body = json.loads(err.body) if err.body else {}
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _connection_detail(err: urllib3.exceptions.HTTPError) -> str:
    detail = str(getattr(err, "reason", None) or err)
    marker = "Failed to establish a new connection: "
    return detail.split(marker, 1)[1] if marker in detail else detail


def _pod_info(pod: k8s.V1Pod) -> PodInfo:
    status = pod.status
    ready = any(c.type == "Ready" and c.status == "True" for c in (status.conditions if status else None) or [])
    waiting = []
    for cs in (status.container_statuses if status else None) or []:
        state = cs.state.waiting if cs.state else None
        if state and state.reason:
            waiting.append(f"{state.reason}: {state.message}" if state.message else state.reason)
    return PodInfo(
        name=pod.metadata.name if pod.metadata else "?",
        phase=(status.phase if status else None) or "Unknown",
        labels=dict((pod.metadata.labels if pod.metadata else None) or {}),
        ready=ready,
        waiting_reasons=tuple(waiting),
    )
