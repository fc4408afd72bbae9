"""A tiny Kubernetes API server on 127.0.0.1 for driving the real `kubernetes` client in tests.

It serves only what raytf uses: RayCluster custom objects (create/get/list/patch/delete), pod and
event lists, the head Service, pod port-forward, and Secrets: like the KubeRay 1.7.0 operator, it
creates the `<cluster>` Secret with an `auth_token` for every RayCluster with `authOptions.mode: token`
(unless `creates_auth_secrets=False`; `forbidden={("get", "secrets")}` answers 403 for them). Time is counted in GETs of a RayCluster, not
seconds: a cluster reports ready after `ready_after` GETs and vanishes `gone_after` GETs after a
delete, so tests never sleep. Failure switches mimic real API server answers (bodies included):
`crd_installed=False`, `forbidden={(verb, resource)}`, `conflict_on_create`, `stuck=Stuck(...)`,
`legacy_status` (operators before KubeRay 1.2 report only `status.state`).
"""

from __future__ import annotations

import copy
import json
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from . import fake_objects as objects
from .fake_websocket import accept_websocket, relay_port

_CLUSTER = re.compile(r"^/apis/ray\.io/v1/namespaces/(?P<ns>[^/]+)/rayclusters(?:/(?P<name>[^/]+))?$")
_JOB = re.compile(r"^/apis/ray\.io/v1/namespaces/(?P<ns>[^/]+)/rayjobs(?:/(?P<name>[^/]+))?$")
_CORE = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/(?P<kind>pods|events|services|secrets)(?:/(?P<name>[^/]+))?(?P<pf>/portforward)?$")


@dataclass(frozen=True)
class Stuck:
    """Pods of `group` ("headgroup" for the head) never become ready, with this evidence."""

    group: str
    event_reason: str
    event_message: str
    waiting_reason: str | None = None


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str
    body: Any


@dataclass
class FakeApiServer:
    ready_after: int = 2
    gone_after: int = 1
    crd_installed: bool = True
    forbidden: set[tuple[str, str]] = field(default_factory=set)
    conflict_on_create: bool = False
    legacy_status: bool = False
    stuck: Stuck | None = None
    missing_namespaces: set[str] = field(default_factory=set)
    forward_to: int | None = None  # 127.0.0.1 port that pod port-forwards reach
    forward_idle_timeout: float = 30.0  # a relay idle this long ends (generous: loaded CI machines stall uploads)
    auth_token: str = "fake-ray-token-4f1c9a7e2b"  # what the "operator" puts in each cluster's Secret
    creates_auth_secrets: bool = True
    secrets: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    clusters: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    # RayJobs (see _job_view for the simulated operator): `rayjobs_installed=False` serves RayClusters only.
    rayjobs_installed: bool = True
    jobs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    job_ready_after: int = 2  # GETs of a RayJob until its cluster is ready and KubeRay waits for the job
    ray_job_status: Callable[[str], tuple[str, str]] | None = None  # jobId -> (jobStatus, message), as the operator reads
    job_status: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # set_job_status overrides

    def __post_init__(self) -> None:
        self._gets: Counter[tuple[str, str]] = Counter()
        self._deleting: dict[tuple[str, str], int] = {}
        self._job_gets: Counter[tuple[str, str]] = Counter()
        self._lock = threading.RLock()
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}"
        # A short poll interval keeps shutdown() (and so each test's teardown) fast.
        self._thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self) -> FakeApiServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()

    # -- helpers for tests ------------------------------------------------------------------------

    def add_cluster(self, manifest: dict[str, Any], *, ready: bool = False) -> None:
        with self._lock:
            key = (manifest["metadata"]["namespace"], manifest["metadata"]["name"])
            self.clusters[key] = objects.stored(manifest)
            self._operator_reconciles(key)
            if ready:
                self._gets[key] = self.ready_after

    def set_job_status(self, namespace: str, name: str, **status: Any) -> None:
        """Drive a RayJob from the test: these status fields win over the simulated operator's."""
        with self._lock:
            self.job_status.setdefault((namespace, name), {}).update(status)

    def calls(self, method: str | None = None, path_part: str = "") -> list[Recorded]:
        return [r for r in self.requests if (method is None or r.method == method) and path_part in r.path]

    # -- request handling ---------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, list[str]], ctype: str, body: Any) -> tuple[int, Any]:
        with self._lock:
            self.requests.append(Recorded(method, path, query, ctype, body))
            if m := _CLUSTER.match(path):
                return self._clusters(method, m["ns"], m["name"], ctype, body)
            if m := _JOB.match(path):
                return self._rayjobs(method, m["ns"], m["name"], ctype, body)
            if path.startswith("/apis/ray.io"):
                return 404, objects.status(404, "NotFound", "the server could not find the requested resource")
            if m := _CORE.match(path):
                return self._core(method, m["kind"], m["ns"], m["name"], query)
            return 404, objects.status(404, "NotFound", "the server could not find the requested resource")

    def _admit(self, method: str, plural: str, installed: bool, ns: str, name: str | None,
               body: Any) -> tuple[str, tuple[str, str], tuple[int, Any] | None]:
        """What every ray.io request goes through first: the verb, the object's key, and the refusal
        (CRD not installed, RBAC, missing namespace) or None."""
        verb = {"POST": "create", "PATCH": "patch", "DELETE": "delete"}.get(method, "get" if name else "list")
        if name is None and isinstance(body, dict):
            name = body.get("metadata", {}).get("name", "")
        key = (ns, name or "")
        if not installed:
            return verb, key, (404, objects.status(404, "NotFound", "the server could not find the requested resource"))
        if (verb, plural) in self.forbidden:
            return verb, key, (403, objects.forbidden(verb, plural, "ray.io", ns))
        if ns in self.missing_namespaces:
            return verb, key, (404, objects.status(404, "NotFound", f'namespaces "{ns}" not found',
                                                   {"name": ns, "kind": "namespaces"}))
        return verb, key, None

    def _clusters(self, method: str, ns: str, name: str | None, ctype: str, body: Any) -> tuple[int, Any]:
        verb, key, refused = self._admit(method, "rayclusters", self.crd_installed, ns, name, body)
        if refused:
            return refused
        name = key[1]
        if verb == "list":
            items = [self._view(k) for k in sorted(self.clusters) if k[0] == ns]
            return 200, {"apiVersion": "ray.io/v1", "kind": "RayClusterList", "metadata": {}, "items": items}
        if verb == "create":
            if self.conflict_on_create or key in self.clusters:
                return 409, objects.status(409, "AlreadyExists", f'rayclusters.ray.io "{key[1]}" already exists',
                                    {"name": key[1], "group": "ray.io", "kind": "rayclusters"})
            self.clusters[key] = objects.stored(body)
            self._operator_reconciles(key)
            return 201, copy.deepcopy(self.clusters[key])
        if key not in self.clusters:
            return 404, objects.status(404, "NotFound", f'rayclusters.ray.io "{name}" not found',
                                {"name": name, "group": "ray.io", "kind": "rayclusters"})
        if verb == "get":
            self._gets[key] += 1
            if key in self._deleting:
                self._deleting[key] -= 1
                if self._deleting[key] < 0:
                    del self.clusters[key], self._deleting[key]
                    self.secrets.pop(key, None)  # owned by the RayCluster: garbage-collected with it
                    return 404, objects.status(404, "NotFound", f'rayclusters.ray.io "{name}" not found',
                                        {"name": name, "group": "ray.io", "kind": "rayclusters"})
            return 200, self._view(key)
        if verb == "delete":
            self.clusters[key]["metadata"]["deletionTimestamp"] = objects.TIME
            self._deleting[key] = self.gone_after - 1
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}
        return self._patch(self.clusters, key, ctype, body, self._view)

    def _rayjobs(self, method: str, ns: str, name: str | None, ctype: str, body: Any) -> tuple[int, Any]:
        verb, key, refused = self._admit(method, "rayjobs", self.crd_installed and self.rayjobs_installed, ns, name, body)
        if refused:
            return refused
        missing = objects.status(404, "NotFound", f'rayjobs.ray.io "{key[1]}" not found',
                                 {"name": key[1], "group": "ray.io", "kind": "rayjobs"})
        if verb == "list":
            items = [self._job_view(k) for k in sorted(self.jobs) if k[0] == ns]
            return 200, {"apiVersion": "ray.io/v1", "kind": "RayJobList", "metadata": {}, "items": items}
        if verb == "create":
            if key in self.jobs:
                return 409, objects.status(409, "AlreadyExists", f'rayjobs.ray.io "{key[1]}" already exists',
                                           {"name": key[1], "group": "ray.io", "kind": "rayjobs"})
            self.jobs[key] = objects.stored(body)
            return 201, copy.deepcopy(self.jobs[key])
        if key not in self.jobs:
            return 404, missing
        if verb == "get":
            self._job_gets[key] += 1
            return 200, self._job_view(key)
        if verb == "delete":  # owner references: the RayJob's cluster goes with it
            del self.jobs[key]
            self.clusters.pop((ns, objects.job_cluster_name(key[1])), None)
            self.secrets.pop((ns, objects.job_cluster_name(key[1])), None)
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}
        return self._patch(self.jobs, key, ctype, body, self._job_view)

    @staticmethod
    def _patch(store: dict, key: tuple[str, str], ctype: str, body: Any, view) -> tuple[int, Any]:
        """A JSON or merge patch of a stored object, as the API server applies it (generation + 1)."""
        obj = store[key]
        try:
            patched = objects.json_patch(obj, body) if ctype == "application/json-patch+json" else objects.merge(obj, body)
        except (KeyError, IndexError, ValueError) as err:
            return 422, objects.status(422, "Invalid", f"the server rejected our request due to an error in our request: {err}")
        patched["metadata"]["generation"] = obj["metadata"]["generation"] + 1
        store[key] = patched
        return 200, view(key)

    def _job_view(self, key: tuple[str, str]) -> dict[str, Any]:
        """KubeRay's InteractiveMode, one step per GET: Initializing (cluster created) -> Waiting (cluster
        ready) -> Running once spec.jobId is set, with the Ray job's status from `ray_job_status`."""
        obj = copy.deepcopy(self.jobs[key])
        ns, name = key
        gets = self._job_gets[key]
        status: dict[str, Any] = {}
        if gets >= 1:
            cluster = objects.job_cluster_name(name)
            status = {"jobDeploymentStatus": "Initializing", "rayClusterName": cluster, "startTime": objects.TIME}
            if (ns, cluster) not in self.clusters:
                self.add_cluster({"apiVersion": "ray.io/v1", "kind": "RayCluster",
                                  "metadata": {"name": cluster, "namespace": ns, "labels": {"ray.io/originated-from-cr-name": name}},
                                  "spec": obj["spec"]["rayClusterSpec"]})
            if gets >= self.job_ready_after:
                self._gets[(ns, cluster)] = max(self._gets[(ns, cluster)], self.ready_after)
                status.update(jobDeploymentStatus="Waiting", dashboardURL=f"{cluster}-head-svc.{ns}.svc.cluster.local:8265")
                job_id = obj["spec"].get("jobId")
                if job_id:
                    job, message = self.ray_job_status(job_id) if self.ray_job_status else ("", "")
                    deployment = {"SUCCEEDED": "Complete", "STOPPED": "Complete", "FAILED": "Failed"}.get(job, "Running")
                    status.update(jobId=job_id, jobStatus=job, jobDeploymentStatus=deployment, message=message)
                    if job == "FAILED":
                        status["reason"] = "AppFailed"
        status.update(self.job_status.get(key, {}))
        obj["status"] = {k: v for k, v in status.items() if v != ""}
        return obj

    def _core(self, method: str, kind: str, ns: str, name: str | None, query: dict[str, list[str]]) -> tuple[int, Any]:
        verb = "get" if name else "list"
        if (verb, kind) in self.forbidden:
            return 403, objects.forbidden(verb, kind, "", ns)
        if kind == "pods" and name is None:
            items = [p for p in self._pods(ns) if objects.selected(p["metadata"]["labels"], query.get("labelSelector", [""])[0])]
            return 200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}
        if kind == "events":
            wanted = objects.selector_pairs(query.get("fieldSelector", [""])[0]).get("involvedObject.name")
            items = [e for e in self._events(ns) if wanted in (None, e["involvedObject"]["name"])]
            return 200, {"apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": items}
        if kind == "services" and name and name.endswith("-head-svc") and (ns, name[:-9]) in self.clusters:
            return 200, objects.service(ns, name)
        if kind == "secrets" and name and (ns, name) in self.secrets:
            return 200, copy.deepcopy(self.secrets[(ns, name)])
        return 404, objects.status(404, "NotFound", f'{kind} "{name}" not found', {"name": name, "kind": kind})

    # -- simulated cluster state -----------------------------------------------------------------------

    def _operator_reconciles(self, key: tuple[str, str]) -> None:
        """KubeRay's reconcileAuthSecret: a token Secret named after the cluster, unless one is named."""
        options = self.clusters[key]["spec"].get("authOptions") or {}
        if self.creates_auth_secrets and options.get("mode") == "token" and not options.get("secretName"):
            self.secrets.setdefault(key, objects.secret(key[0], key[1], {"auth_token": self.auth_token}, owner=key[1]))

    def group_ready(self, key: tuple[str, str], group: str) -> bool:
        if self.stuck is not None and self.stuck.group == group:
            return False
        return self._gets[key] >= self.ready_after

    def _view(self, key: tuple[str, str]) -> dict[str, Any]:
        obj = copy.deepcopy(self.clusters[key])
        groups = [g["groupName"] for g in obj["spec"].get("workerGroupSpecs", [])]
        head = self.group_ready(key, "headgroup")
        ready = head and all(self.group_ready(key, g) for g in groups)
        status: dict[str, Any] = {"state": "ready"} if ready else {}
        if not self.legacy_status:
            status["conditions"] = [
                objects.condition("HeadPodReady", head, "HeadPodRunningAndReady" if head else "HeadPodNotFound"),
                objects.condition("RayClusterProvisioned", ready, "AllPodRunningAndReadyFirstTime" if ready else "RayClusterPodsProvisioning"),
            ]
        if head:
            status["head"] = {"podName": f"{key[1]}-head-x7k2p", "podIP": "10.0.0.5",
                              "serviceName": f"{key[1]}-head-svc", "serviceIP": "10.96.0.20"}
            status["endpoints"] = {"client": "10001", "dashboard": "8265", "gcs-server": "6379", "metrics": "8080"}
        obj["status"] = status
        return obj

    def _pods(self, ns: str) -> list[dict[str, Any]]:
        pods = []
        for (cns, name), obj in sorted(self.clusters.items()):
            if cns != ns:
                continue
            key = (cns, name)
            pods.append(objects.pod(f"{name}-head-x7k2p", name, "headgroup", "head", self.group_ready(key, "headgroup"), self._waiting("headgroup")))
            for g in obj["spec"].get("workerGroupSpecs", []):
                for i in range(int(g.get("replicas", 0))):
                    pods.append(objects.pod(f"{name}-{g['groupName']}-worker-{i}", name, g["groupName"], "worker",
                                     self.group_ready(key, g["groupName"]), self._waiting(g["groupName"])))
        return pods

    def _waiting(self, group: str) -> str | None:
        return self.stuck.waiting_reason if self.stuck is not None and self.stuck.group == group else None

    def _events(self, ns: str) -> list[dict[str, Any]]:
        events = []
        for pod in self._pods(ns):
            name, group = pod["metadata"]["name"], pod["metadata"]["labels"]["ray.io/group"]
            events.append(objects.event(name, "Normal", "Scheduled", f"Successfully assigned {ns}/{name}", 1))
            if self.stuck is not None and self.stuck.group == group:
                events.append(objects.event(name, "Warning", self.stuck.event_reason, self.stuck.event_message, 3))
        return events


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes; Nagle would delay the body 40 ms
    server_fake: FakeApiServer

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def _serve(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        fake = self.server_fake
        if self.headers.get("Upgrade", "").lower() == "websocket":
            m = _CORE.match(url.path)
            if m and m["pf"] and fake.forward_to and m["name"].endswith("-head-x7k2p"):
                with fake._lock:
                    fake.requests.append(Recorded("GET", url.path, query, "websocket", None))
                relay_port(accept_websocket(self), int(query["ports"][0]), fake.forward_to, fake.forward_idle_timeout)
                return
        code, payload = fake.handle(self.command, url.path, query, self.headers.get("Content-Type", ""), body)
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _serve
