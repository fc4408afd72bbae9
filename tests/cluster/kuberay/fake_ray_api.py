"""A stand-in Ray dashboard on 127.0.0.1 with token authentication, for Ray's real JobSubmissionClient.

It answers what a job submission needs (`GET /api/version`, package check/upload under
`/api/packages/`, `POST /api/jobs/`) the way Ray 2.60's dashboard does with `RAY_AUTH_MODE=token`:
401 without an `Authorization: Bearer` header, 403 with a wrong token. It records every request's
auth header, the uploaded packages (zip bytes) and the submitted job bodies for the tests to inspect.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class FakeRayDashboard:
    token: str
    seen_auth: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Authorization)
    uploads: dict[str, bytes] = field(default_factory=dict)
    jobs: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args: object) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                code, payload = fake.handle(self.command, self.path, self.headers.get("Authorization"), body)
                data = json.dumps(payload).encode() if not isinstance(payload, str) else payload.encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json" if not isinstance(payload, str) else "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = _serve

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self.port = self._http.server_address[1]
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self) -> FakeRayDashboard:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()

    def handle(self, method: str, path: str, auth: str | None, body: bytes) -> tuple[int, Any]:
        with self._lock:
            self.seen_auth.append((method, path, auth))
            if not auth:
                return 401, "Unauthorized: Missing authentication token"
            if auth != f"Bearer {self.token}":
                return 403, "Forbidden: Invalid authentication token"
            if method == "GET" and path == "/api/version":
                return 200, {"version": "4", "ray_version": "2.60.0", "ray_commit": "fake", "session_name": "fake"}
            if path.startswith("/api/packages/"):
                name = path.rsplit("/", 1)[-1]
                if method == "PUT":
                    self.uploads[name] = body
                    return 200, {"result": True, "msg": "uploaded", "data": {}}
                return (200, {}) if name in self.uploads else (404, "not found")
            if method == "POST" and path == "/api/jobs/":
                job = json.loads(body)
                self.jobs.append(job)
                return 200, {"job_id": job["submission_id"], "submission_id": job["submission_id"]}
            return 404, "not found"
