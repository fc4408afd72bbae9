"""What raytf.exchange.wire costs for one push and its reply, by codec and with encryption, over a
shaped link between two network namespaces (or over loopback where namespaces cannot be made).

    python examples/wire_bench.py --link 10gbit,0.1ms          # as root: two namespaces, shaped veth
    python examples/wire_bench.py --link 1gbit,0.1ms --repeats 30
    python examples/wire_bench.py                              # loopback, no shaping

A server process (a stand-in for the parameter server: it receives the gradient chunk by chunk
into its buffer, runs a one-pass "update" on each chunk and streams that chunk's parameters back at
once) runs in node 0, the worker in node 1 (`examples/netns.py`). The worker pushes a buffer of
`--bytes` (default 7,454,760: the benchmark MLP) and receives the reply into its own buffer, with
each configuration in turn, interleaved, `--repeats` times. The secret goes to both processes on
their standard input, never on a command line. The table gives the median and min wall time of
push + reply, the bytes each way, and the wire's floor at the link's rate: the larger direction's
bytes / rate (both directions run at once when chunks are pipelined). It prints numbers, judges none.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CONFIGS = [  # (push codec, pull codec, encrypt)
    ("none", "none", False), ("bf16", "bf16", False), ("int8", "bf16", False), ("int8", "none", False),
    ("none", "none", True), ("int8", "bf16", True),
]
PULLS = ["none", "bf16"]  # the push's `version` field names the reply's codec (this benchmark's convention)


def serve(host: str, size: int, secret: bytes, chunk_bytes: int) -> None:
    from raytf.exchange.wire import REPLY, PeerGone, WireListener

    params = np.random.default_rng(0).standard_normal(size).astype(np.float32)

    def on_peer(conn) -> None:
        grads = np.zeros(size, np.float32)

        def apply(frame, start, stop):
            np.subtract(params[start:stop], grads[start:stop], out=params[start:stop])  # one pass, like SGD
            conn.send_chunk(REPLY, frame.seq, frame.version, frame.index, frame.count, start, params[start:stop],
                            PULLS[frame.version])

        while True:
            try:
                conn.receive(grads, apply, deadline=None)
            except PeerGone:
                return

    listeners = [WireListener(host, secret, on_peer, encrypt=encrypt, chunk_bytes=chunk_bytes) for encrypt in (False, True)]
    print(json.dumps([listener.address[1] for listener in listeners]), flush=True)
    sys.stdin.readline()  # the parent closes our stdin when the run is over


def push(host: str, ports: list[int], size: int, secret: bytes, repeats: int, chunk_bytes: int) -> None:
    from raytf.exchange.codecs import ErrorFeedback
    from raytf.exchange.wire import Duplex, connect

    links = {encrypt: Duplex(connect(host, ports[encrypt], secret, peer_id=1, encrypt=encrypt,
                                            chunk_bytes=chunk_bytes))
             for encrypt in (False, True)}
    gradient = np.random.default_rng(1).standard_normal(size).astype(np.float32)
    into = np.zeros(size, np.float32)
    feedback = {config: ErrorFeedback(size) for config in CONFIGS}
    times: dict[int, list[float]] = {i: [] for i in range(len(CONFIGS))}
    wire: dict[int, tuple[int, int]] = {}
    for repeat in range(repeats + 2):  # two warm-ups
        for i, config in enumerate(CONFIGS):
            push_codec, pull_codec, encrypt = config
            link = links[encrypt]
            sent, got = link.conn.bytes_sent, link.conn.bytes_received
            started = time.perf_counter()
            link.exchange(repeat, PULLS.index(pull_codec), gradient, into, push_codec=push_codec,
                          feedback=feedback[config] if push_codec != "none" else None,
                          deadline=time.monotonic() + 60)
            elapsed = time.perf_counter() - started
            if repeat >= 2:
                times[i].append(elapsed)
            wire[i] = (link.conn.bytes_sent - sent, link.conn.bytes_received - got)
    for link in links.values():
        link.close()
    print(json.dumps({"times": times, "wire": wire}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bytes", type=int, default=7_454_760)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--chunk-bytes", type=int, default=4 * 1024 * 1024, help="the wire's chunk size")
    parser.add_argument("--link", default=None, help="RATE,DELAY between two namespaces, e.g. 10gbit,0.1ms")
    parser.add_argument("--role", choices=["serve", "push"], help=argparse.SUPPRESS)
    parser.add_argument("--host", help=argparse.SUPPRESS)
    parser.add_argument("--ports", help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = args.bytes // 4
    if args.role:
        secret = bytes.fromhex(sys.stdin.readline().strip())
        if args.role == "serve":
            serve(args.host, size, secret, args.chunk_bytes)
        else:
            push(args.host, json.loads(args.ports), size, secret, args.repeats, args.chunk_bytes)
        return 0

    from examples.netns import Link, start_server, two_nodes_or_loopback
    from raytf.exchange.wire import new_secret

    link = Link.parse(args.link) if args.link else None
    secret = new_secret().hex()
    me = [sys.executable, str(Path(__file__).resolve()), "--bytes", str(args.bytes), "--repeats", str(args.repeats),
          "--chunk-bytes", str(args.chunk_bytes)]
    nodes = two_nodes_or_loopback(args.link)
    try:
        host = nodes.address(0) if nodes else "127.0.0.1"
        wrap = (lambda node, argv: nodes.command(node, argv)) if nodes else (lambda node, argv: argv)
        server, ports = start_server(nodes, me + ["--role", "serve", "--host", host], secret)
        pusher = subprocess.run(wrap(1, me + ["--role", "push", "--host", host, "--ports", ports]),
                                input=secret + "\n", capture_output=True, text=True, timeout=1800)
        server.stdin.close()
        server.wait(60)
        if pusher.returncode:
            print(pusher.stderr, file=sys.stderr)
            return pusher.returncode
        result = json.loads(pusher.stdout.strip().splitlines()[-1])
    finally:
        if nodes:
            shaping = nodes.shaping
            nodes.close()
    where = f"two namespaces, {shaping}" if nodes else "loopback, unshaped"
    print(f"push + reply of {args.bytes:,} bytes in chunks of {args.chunk_bytes:,}, {where}, "
          f"{args.repeats} interleaved repeats")
    print("| push | pull | encrypt | MB out / back | median ms | min ms | floor ms at the rate | median / floor |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for i, (push_codec, pull_codec, encrypt) in enumerate(CONFIGS):
        times = result["times"][str(i)]
        out, back = result["wire"][str(i)]
        median = statistics.median(times)
        floor = max(out, back) * 8 / link.bits_per_second if nodes else None
        print(f"| {push_codec} | {pull_codec} | {'yes' if encrypt else 'no'} | {out / 1e6:.2f} / {back / 1e6:.2f} | "
              f"{1000 * median:.2f} | {1000 * min(times):.2f} | "
              f"{f'{1000 * floor:.2f}' if floor else '-'} | {f'{median / floor:.2f}' if floor else '-'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
