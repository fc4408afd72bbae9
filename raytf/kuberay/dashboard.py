"""Is the Ray dashboard answering? Checked over the 127.0.0.1 port-forward only.

Separate from the wait for readiness (a ready head does not guarantee the dashboard is up) and
with an injectable check, so tests use a local HTTP server.
"""

from __future__ import annotations

import http.client
import ipaddress
import time
import urllib.error
import urllib.request
from typing import Callable
from urllib.parse import urlparse


def require_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"refusing to probe {url}: raytf only talks to the dashboard through 127.0.0.1")


def dashboard_responds(url: str, timeout: float = 2.0) -> bool:
    """True when GET <url>/api/version answers 200 (the endpoint Ray's job SDK uses too)."""
    require_loopback(url)
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/api/version", timeout=timeout) as response:
            response.read()  # finish the exchange so the connection closes cleanly
            return response.status == 200
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError):
        return False


def wait_for_dashboard(
    url: str,
    *,
    timeout: float,
    poll_interval: float = 1.0,
    check: Callable[[str], bool] = dashboard_responds,
    give_up: Callable[[], bool] = lambda: False,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Poll `check(url)` until it passes (True), or `timeout` seconds pass or `give_up()` (False)."""
    require_loopback(url)
    start = clock()
    while True:
        if check(url):
            return True
        elapsed = clock() - start
        if elapsed >= timeout or give_up():
            return False
        sleep(min(poll_interval, timeout - elapsed))
