"""Network namespaces as stand-in nodes: N namespaces joined by veth pairs to a bridge, addresses in
198.18.0.0/15 (the benchmarking range, RFC 2544), every node's link shaped with `tc`.

    python examples/netns.py --nodes 2 --link 1gbit,0.1ms -- ping -c 3 198.18.0.2   # runs in node 0

    with Namespaces(2, Link.parse("10gbit,0.1ms")) as nodes:
        server = nodes.popen(0, [sys.executable, "serve.py", nodes.address(0)])
        client = nodes.run(1, [sys.executable, "push.py", nodes.address(0)])

Layout: one namespace per node (`raytf-<pid>-<i>`, with `lo` up and 198.18.0.<i+1>/24 on its `eth0`)
and one more (`raytf-<pid>-br`) holding the bridge and the other ends of the veth pairs. Nothing is
created in the caller's own namespace: its routes, interfaces and firewall stay as they are, and
traffic between the nodes never leaves the namespaces.

Shaping: each node's `eth0` gets, on egress, `netem rate R delay D` where the kernel has netem;
where it has not (containers often lack the module) the rate is shaped with `tbf` and the delay is
not emulated, which `Namespaces.shaping` says and the CLI prints. A message from node i to node j is
shaped once, at i's egress, so `rate` is per direction and the round-trip delay is 2 x D.

Everything is deleted on the way out of the `with` (an exception, Ctrl-C, or SIGTERM, turned into
SystemExit while inside): deleting a namespace deletes its interfaces. Needs root (CAP_SYS_ADMIN
and CAP_NET_ADMIN), `ip` and `tc`; otherwise `NamespacesUnavailable` says which is missing, and
callers fall back to loopback.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass

SUBNET = "198.18.0"  # inside 198.18.0.0/15; nothing outside the namespaces is ever addressed
_UNITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}


class NamespacesUnavailable(RuntimeError):
    """Namespaces cannot be made here; the message says why and what would make them possible."""


@dataclass(frozen=True)
class Link:
    rate: str  # tc's notation: 10gbit, 1gbit, 500mbit
    delay: str  # one way: 0.1ms

    @classmethod
    def parse(cls, text: str) -> Link:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?(?:bit|kbit|mbit|gbit))\s*,\s*(\d+(?:\.\d+)?(?:us|ms|s))\s*", text.lower())
        if not match:
            raise ValueError(f"--link {text!r}: expected RATE,DELAY such as 10gbit,0.1ms or 1gbit,0.1ms")
        return cls(match.group(1), match.group(2))

    @property
    def bits_per_second(self) -> float:
        number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(\w+)", self.rate).groups()
        return float(number) * _UNITS[unit]

    def __str__(self) -> str:
        return f"{self.rate},{self.delay}"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here, or None when they can (as far as can be told up front)."""
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_SYS_ADMIN, CAP_NET_ADMIN); run as root, or on loopback"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not found: install iproute2 (apt-get install iproute2)"
    return None


class Opened:
    """A context manager whose `_open` is undone by `close` however it ends, a failed `_open` included
    (so `close` must cope with a half-made state)."""

    def __enter__(self):
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class Namespaces(Opened):
    """N stand-in nodes; use as a context manager."""

    def __init__(self, count: int, link: Link | None = None, prefix: str | None = None) -> None:
        if not 1 <= count <= 250:
            raise ValueError("between 1 and 250 nodes")
        self.count, self.link = count, link
        self.prefix = prefix or f"raytf-{os.getpid()}"
        self.names = [f"{self.prefix}-{i}" for i in range(count)]
        self.bridge = f"{self.prefix}-br"
        self.shaping = "none"
        self._made: list[str] = []
        self._old_sigterm = None

    def address(self, node: int) -> str:
        return f"{SUBNET}.{node + 1}"

    def _open(self) -> None:
        reason = unavailable_reason()
        if reason:
            raise NamespacesUnavailable(reason)
        self._old_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        self._create()

    def _netns(self, name: str) -> None:
        result = _ip("netns", "add", name, check=False)
        if result.returncode:
            raise NamespacesUnavailable(f"ip netns add {name} failed: {result.stderr.strip()} "
                                        "(a container without CAP_SYS_ADMIN cannot make namespaces)")
        self._made.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _create(self) -> None:
        self._netns(self.bridge)
        _ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge, "link", "set", "br0", "up")
        for i, name in enumerate(self.names):
            self._netns(name)
            _ip("link", "add", f"{self.prefix[:6]}{i}a", "netns", name, "type", "veth",
                "peer", "name", f"p{i}", "netns", self.bridge)
            _ip("-n", name, "link", "set", f"{self.prefix[:6]}{i}a", "name", "eth0")
            _ip("-n", name, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
            _ip("-n", name, "link", "set", "eth0", "up")
            _ip("-n", self.bridge, "link", "set", f"p{i}", "master", "br0", "up")
            if self.link is not None:
                self._shape(name)

    def _shape(self, name: str) -> None:
        link = self.link
        netem = ["ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "eth0", "root", "netem",
                 "rate", link.rate, "delay", link.delay, "limit", "100000"]
        if subprocess.run(netem, capture_output=True).returncode == 0:
            self.shaping = f"netem rate {link.rate} delay {link.delay} (each direction)"
            return
        # No netem in this kernel: shape the rate alone. The bucket holds 1 ms at the rate (and at
        # least one 64 KB GSO packet), the queue 5 ms.
        burst = max(65536, int(link.bits_per_second / 8 / 1000))
        tbf = ["ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf",
               "rate", link.rate, "burst", str(burst), "latency", "5ms"]
        result = subprocess.run(tbf, capture_output=True, text=True)
        if result.returncode:
            raise NamespacesUnavailable(f"tc can shape neither with netem nor with tbf here: {result.stderr.strip()}")
        self.shaping = f"tbf rate {link.rate} (this kernel has no netem: the {link.delay} delay is NOT emulated)"

    def command(self, node: int, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.names[node], *argv]

    def popen(self, node: int, argv: list[str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.command(node, argv), **kwargs)

    def run(self, node: int, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(node, argv), **kwargs)

    def close(self) -> None:
        """Delete every namespace made (their interfaces go with them); safe to call twice."""
        for name in reversed(self._made):
            # A process still inside keeps the namespace alive until it exits, but the name is gone.
            _ip("netns", "del", name, check=False)
        self._made.clear()
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None


def two_nodes_or_loopback(link: str | None) -> Namespaces | None:
    """Two shaped namespaces for `--link RATE,DELAY`, or None (with the reason printed) where there is
    no link or namespaces cannot be made: the caller then runs both ends on 127.0.0.1. Close it."""
    try:
        if link is None:
            raise NamespacesUnavailable("no --link given")
        return Namespaces(2, Link.parse(link)).__enter__()
    except NamespacesUnavailable as err:
        print(f"On loopback, unshaped: {err}.")
        return None


def start_server(nodes: Namespaces | None, argv: list[str], secret: str) -> tuple[subprocess.Popen, str]:
    """Start `argv` in node 0 (or here), hand it `secret` on its standard input (never on a command
    line) and return the process and the first line it prints (its ports)."""
    command = nodes.command(0, argv) if nodes else argv
    server = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    server.stdin.write(secret + "\n")
    server.stdin.flush()
    return server, server.stdout.readline().strip()


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through the `with`, which deletes the namespaces


def leftovers(prefix: str) -> list[str]:
    """Namespaces whose name starts with `prefix` (a test checks that none outlive their `with`)."""
    result = _ip("netns", "list", check=False)
    return [line.split()[0] for line in result.stdout.splitlines() if line.startswith(prefix)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--link", type=Link.parse, default=None, help="RATE,DELAY, e.g. 10gbit,0.1ms")
    parser.add_argument("--node", type=int, default=0, help="which node runs the command")
    parser.add_argument("command", nargs="+", help="what to run inside (after --)")
    args = parser.parse_args()
    try:
        with Namespaces(args.nodes, args.link) as nodes:
            print(f"nodes: {', '.join(f'{n} {nodes.address(i)}' for i, n in enumerate(nodes.names))}; "
                  f"shaping: {nodes.shaping}", file=sys.stderr)
            return nodes.run(args.node, args.command).returncode
    except NamespacesUnavailable as err:
        print(f"No namespaces: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
