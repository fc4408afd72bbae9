"""A Ray cluster of two nodes in two network namespaces joined by a shaped link (examples/netns.py):
node 0 (the head, where the parameter servers go: resource `bench_ps`) at 198.18.0.1, node 1 (the
workers: `bench_worker`) at 198.18.0.2, so everything between a server and its workers crosses the
shaped veth: the wire, the object store's transfers, Ray's own calls.

    with ShapedCluster(Link.parse("1gbit,0.1ms")) as cluster:
        done = cluster.run_in_head_namespace([sys.executable, "driver.py", cluster.address])

A driver must run inside node 0's namespace (nothing outside the namespaces can reach them):
`run_in_head_namespace`, which hands it the cluster's token (Ray's token authentication, as
`raytf up` sets it up: `env`).
Both `ray start --block` processes are stopped (their process groups) and the namespaces deleted on
every way out. Needs root; `NamespacesUnavailable` otherwise.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from examples.netns import Link, Namespaces, Opened

GCS_PORT = 6379
JOIN_TIMEOUT = 120.0
OBJECT_STORE = f"--object-store-memory={1024**3}"


class ShapedCluster(Opened):
    def __init__(self, link: Link, ps_cpus: int = 1, worker_cpus: int = 2, prefix: str | None = None) -> None:
        self.link, self.prefix = link, prefix
        self.ps_cpus, self.worker_cpus = ps_cpus, worker_cpus
        self.nodes: Namespaces | None = None
        self._processes: list[subprocess.Popen] = []
        self._temp = tempfile.mkdtemp(prefix="raytf-netns-")
        token = Path(self._temp) / "token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        # Not the single-machine mode a local cluster's driver may have set (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0,
        # raytf.cluster.local.LOOPBACK_ENV): in it a second node refuses to join.
        self.env = {**{k: v for k, v in os.environ.items()
                       if not k.startswith("RAY_AUTH") and k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"},
                    "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0"}

    @property
    def address(self) -> str:
        return f"{self.nodes.address(0)}:{GCS_PORT}"

    @property
    def shaping(self) -> str:
        return self.nodes.shaping

    def _open(self) -> None:
        self.nodes = Namespaces(2, self.link, prefix=self.prefix).__enter__()
        self._start()

    def _ray_start(self, node: int, *args: str) -> None:
        log = open(Path(self._temp) / f"node{node}.log", "wb")
        self._processes.append(self.nodes.popen(
            node, [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--disable-usage-stats",
                   f"--node-ip-address={self.nodes.address(node)}", *args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=self.env))

    def _start(self) -> None:
        self._ray_start(0, "--head", f"--port={GCS_PORT}", f"--num-cpus={self.ps_cpus}", OBJECT_STORE,
                        "--resources=" + json.dumps({"bench_ps": self.ps_cpus}), "--include-dashboard=false",
                        f"--temp-dir={self._temp}/ray")
        self._ray_start(1, f"--address={self.address}", f"--num-cpus={self.worker_cpus}", OBJECT_STORE,
                        "--resources=" + json.dumps({"bench_worker": self.worker_cpus}))
        probe = ("import ray, sys, time; ray.init(address=sys.argv[1], logging_level='ERROR'); "
                 "deadline = time.monotonic() + float(sys.argv[2])\n"
                 "while sum(n['Alive'] for n in ray.nodes()) < 2:\n"
                 "    assert time.monotonic() < deadline, 'the second node did not join'; time.sleep(0.2)")
        done = self.run_in_head_namespace([sys.executable, "-c", probe, self.address, str(JOIN_TIMEOUT)],
                                          capture_output=True, text=True, timeout=JOIN_TIMEOUT + 60)
        if done.returncode:
            raise RuntimeError(f"the shaped cluster did not come up: {done.stderr.strip()[-2000:]}\n"
                               f"{self.log_tail()}")

    def run_in_head_namespace(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        return self.nodes.run(0, argv, env={**self.env, **kwargs.pop("env", {})}, **kwargs)

    def log_tail(self, lines: int = 20) -> str:
        tails = []
        for path in sorted(Path(self._temp).glob("node*.log")):
            tails.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(tails)

    @property
    def process_groups(self) -> list[int]:
        """Those of the two `ray start --block` processes (each node's Ray processes are in its group)."""
        return [process.pid for process in self._processes]

    def close(self) -> None:
        for process in self._processes:  # `ray start --block` stops what it started on SIGTERM
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in self._processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(process, signal.SIGKILL)  # whatever is left of its group
        # A killed process is gone only once the kernel has torn it down: wait for that (bounded), so that
        # whoever runs next (a test's check, the next benchmark's cluster) finds nothing of these nodes.
        groups, deadline = self.process_groups, time.monotonic() + 10
        while live_in_groups(groups) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._processes.clear()
        if self.nodes is not None:
            self.nodes.close()
            self.nodes = None


def live_in_groups(groups: list[int]) -> list[str]:
    """Processes of these process groups that still run ("pid name"; zombies, whose parent died before
    reaping them and which this machine's init reaps late, are not running)."""
    live = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        state, _, pgrp = stat[stat.rindex(")") + 2:].split()[:3]
        if int(pgrp) in groups and state != "Z":
            live.append(f"{pid} {stat[stat.index('(') + 1:stat.rindex(')')]}")
    return live


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
