"""What moving one parameter version costs on this machine, by every path raytf could use.

    python examples/exchange_costs.py            # 7.45 MB, the benchmark MLP's 1.86 M floats
    python examples/exchange_costs.py --floats 500000 --repeats 50

Each line is the median over `--repeats` of one operation on a buffer of `--floats` float32, with
the caches flushed between repeats (a real step's buffers are cold: the other actors ran since),
measured in this process and in a real Ray actor (on the cluster `raytf up` started, else on an
embedded one bound to 127.0.0.1, started and stopped here). It prints numbers; it judges none. The closing note of issue 13 and the README's
benchmark section use them to say what the exchange's remaining milliseconds are made of:

* shared memory (raytf's same-node path): one copy into a mapped slot;
* the doorbell: a 26-byte frame and an 18-byte answer over an AF_UNIX socket;
* the object store (raytf's cross-node path): `ray.put`, a zero-copy `ray.get`, an actor call that
  carries the buffer as its argument, and an empty actor call;
* loopback TCP: the buffer sent to another process and a buffer of the same size sent back (what a
  data plane of raytf's own beside Ray would cost per step, before any network).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

_FLUSH: list[np.ndarray] = []  # 64 MB once used: more than this machine's caches
# The echo peers start fresh interpreters: a fork would copy whatever threads the caller runs
# (Ray's gRPC clients, TensorFlow's pools), which is not safe.
_SPAWN = multiprocessing.get_context("spawn")


def _cold() -> None:
    if not _FLUSH:
        _FLUSH.append(np.zeros(64 * 1024 * 1024 // 4, np.float32))
    np.add(_FLUSH[0], 1.0, out=_FLUSH[0])


def median_ms(operation, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        _cold()
        started = time.perf_counter()
        operation()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def _echo_unix(path: str, frame: int, answer: int) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    conn, _ = listener.accept()
    while conn.recv(frame, socket.MSG_WAITALL):
        conn.sendall(b"a" * answer)


def _echo_tcp(port_out, nbytes: int) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port_out.put(listener.getsockname()[1])
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    inbox, outbox = bytearray(nbytes), np.ones(nbytes // 4, np.float32)
    view = memoryview(inbox)
    while True:
        got = 0
        while got < nbytes:
            count = conn.recv_into(view[got:], nbytes - got)
            if not count:
                return
            got += count
        conn.sendall(memoryview(outbox).cast("B"))


def local_costs(floats: int, repeats: int) -> dict[str, float]:
    source = np.random.default_rng(0).random(floats, dtype=np.float32)
    results = {}
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        slot = np.memmap(Path(tmp) / "slot", dtype=np.float32, mode="w+", shape=(floats,))
        results["shared memory: copy into the slot"] = median_ms(lambda: np.copyto(slot, source), repeats)
        path = str(Path(tmp) / "bell")
        server = _SPAWN.Process(target=_echo_unix, args=(path, 26, 18), daemon=True)
        server.start()
        bell = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        for _ in range(500):
            try:
                bell.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                time.sleep(0.01)  # the echo process is starting
        frame = b"p" * 26
        results["doorbell: 26-byte push, 18-byte answer (AF_UNIX)"] = median_ms(
            lambda: (bell.sendall(frame), bell.recv(18, socket.MSG_WAITALL)), repeats)
        bell.close()
        server.join(5)
    ports = _SPAWN.Queue()
    server = _SPAWN.Process(target=_echo_tcp, args=(ports, floats * 4), daemon=True)
    server.start()
    conn = socket.create_connection(("127.0.0.1", ports.get(timeout=30)))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    back = bytearray(floats * 4)
    view = memoryview(back)

    def round_trip() -> None:
        conn.sendall(memoryview(source).cast("B"))
        got = 0
        while got < len(back):
            got += conn.recv_into(view[got:], len(back) - got)

    results["loopback TCP: the buffer out and one back"] = median_ms(round_trip, repeats)
    conn.close()
    server.join(5)
    return results


def ray_costs(floats: int, repeats: int) -> dict[str, float]:
    import ray

    from raytf.cluster.connection import connect

    # The cluster `raytf up` started, or an embedded one for this script (on 127.0.0.1 only).
    with connect(on_event=lambda message: print(f"[exchange_costs] {message}", file=sys.stderr)):

        @ray.remote(num_cpus=0)
        class Sink:
            def take(self, buffer) -> int:
                return int(buffer.shape[0])

            def nothing(self) -> int:
                return 0

        source = np.random.default_rng(0).random(floats, dtype=np.float32)
        sink = Sink.remote()
        ray.get(sink.nothing.remote())
        ref = ray.put(source)
        return {
            "object store: ray.put": median_ms(lambda: ray.put(source), repeats),
            "object store: ray.get of a stored object (zero-copy)": median_ms(lambda: ray.get(ref), repeats),
            "object store: actor call carrying the buffer": median_ms(lambda: ray.get(sink.take.remote(source)), repeats),
            "actor call, empty": median_ms(lambda: ray.get(sink.nothing.remote()), repeats),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--floats", type=int, default=1_863_690, help="buffer size in float32 (default: the MLP's)")
    parser.add_argument("--repeats", type=int, default=100, help="repeats per operation (default 100)")
    args = parser.parse_args(argv)
    print(f"buffer: {args.floats:,} float32 = {args.floats * 4 / 1e6:.2f} MB; median of {args.repeats}, caches flushed")
    results = {**local_costs(args.floats, args.repeats), **ray_costs(args.floats, args.repeats)}
    width = max(map(len, results))
    for name, ms in results.items():
        print(f"  {name:<{width}}  {ms:8.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
