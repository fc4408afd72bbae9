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


def probe_dashboard(url: str, *, headers: dict[str, str] | None = None, timeout: float = 2.0) -> int | None:
    """The HTTP status of GET <url>/api/version (the endpoint Ray's job SDK checks first), None without an
    answer. A token-authenticated dashboard answers 401 without `headers`, 403 with a wrong token."""
    require_loopback(url)
    request = urllib.request.Request(url.rstrip("/") + "/api/version", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()  # finish the exchange so the connection closes cleanly
            return response.status
    except urllib.error.HTTPError as err:
        err.close()
        return err.code
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError):
        return None


def dashboard_responds(url: str, timeout: float = 2.0, headers: dict[str, str] | None = None) -> bool:
    """True when GET <url>/api/version answers 200."""
    return probe_dashboard(url, headers=headers, timeout=timeout) == 200


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
