"""A sync step's exchange over the wire, without the compute: two workers on one node push the
benchmark MLP's gradient to a parameter server on another, which applies their mean and answers,
per codec, over a shaped link between two network namespaces (or over loopback without root).

    python examples/wire_step_bench.py --link 10gbit,0.1ms     # as root: two namespaces, shaped veth
    python examples/wire_step_bench.py --link 1gbit,0.1ms --steps 20
    python examples/wire_step_bench.py                         # loopback, no shaping

The server is raytf's own exchange (`raytf.exchange.Exchange` with the sync policy, the flat SGD
update of `raytf.exchange.optimizers`, the wire's buffers of `raytf.exchange.transport.ServerSlots`
and `raytf.exchange.wire_link.serve_connection`), the workers are `WireBell`s in two processes, so
a step here is a training step's exchange minus the compute and the Ray control plane. For each
setting (push codec, pull codec), in turn, interleaved, `--steps` steps after 3 warm-up ones. The
table: the step's exchange time (median over both workers, ring to answer), the bytes each way on
the server's link, and two floors at the link's rate, each plus the server's apply: all bytes, in
then out (a "whole" round receives every gradient before it applies and answers), and the larger
direction alone (both directions at once, what a "pipelined" round, raytf.exchange.pipeline, tends
to: it applies and answers piece by piece while later pieces still arrive). It prints numbers and
judges none.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# (push codec, pull codec, pipelined: the server applies and answers piece by piece, raytf.exchange.pipeline)
SETTINGS = [("none", "none", False), ("none", "none", True), ("bf16", "bf16", False), ("bf16", "bf16", True),
            ("int8", "bf16", False), ("int8", "bf16", True), ("int8", "none", True)]
WORKERS = 2
WARMUP = 3


def serve(host: str, size: int, secret: bytes) -> None:
    """One exchange per setting, each with its own listener; prints the ports, then the apply
    times (ms) per setting once stdin closes."""
    from raytf.config import OptimizerConfig
    from raytf.exchange import Exchange, Push, Reply, make_policy
    from raytf.exchange.optimizers import FlatOptimizer, PiecedOptimizer
    from raytf.exchange.pipeline import PIECE_VALUES, Pipeline
    from raytf.exchange.transport import ServerSlots
    from raytf.exchange.wire import WireListener
    from raytf.exchange.wire_link import serve_connection
    from raytf.runtime import configure_tensorflow

    configure_tensorflow(2)  # as a sync server: the workers wait while it applies
    listeners, applies = [], {}
    for index, (_, pull, pipelined) in enumerate(SETTINGS):
        config = OptimizerConfig(name="sgd", learning_rate=0.01)
        opt = (PiecedOptimizer(config, np.zeros(size, np.float32), piece=PIECE_VALUES) if pipelined
               else FlatOptimizer(config, np.zeros(size, np.float32)))
        slots = ServerSlots(f"wire-step-bench-{index}", 0, size, set(), shared_params=True,
                            wire_workers=set(range(WORKERS)))
        times = applies[index] = []

        class Backend:
            pipeline = None

            def apply(self, grads, opt=opt, times=times) -> None:
                if self.pipeline is not None and self.pipeline.applied_round([]):
                    times.append(self.pipeline.seconds_apply)  # the pieces' updates
                    self.pipeline.seconds_apply = 0.0
                    return
                started = time.perf_counter()
                opt.apply_mean(grads)
                times.append(time.perf_counter() - started)

            def publish(self, version, worker, opt=opt, slots=slots) -> None:
                if self.pipeline is None or worker not in self.pipeline.pipelined:
                    slots.publish(opt.params_view(), version, worker)

            def checkpoint(self, version) -> None:
                pass

        backend = Backend()
        exchange = Exchange(make_policy("sync", WORKERS), backend, workers=WORKERS, target=1 << 40)
        if pipelined:
            backend.pipeline = Pipeline(exchange, opt, lambda w, slots=slots: slots.wire_buffers(w)[0],
                                        lambda exchange=exchange: exchange.policy.required(exchange), pull)

        def push(worker, base, steps, loss, finite, exchange=exchange, slots=slots) -> Reply:
            outcome = exchange.push(Push(worker, base, steps, loss, finite), slots.gradient(worker, None))
            return Reply(outcome.status, outcome.version, 0, outcome.dropped)

        def on_peer(conn, slots=slots, push=push, pull=pull, pipeline=backend.pipeline) -> None:
            serve_connection(conn, slots.wire_buffers, push, slots.take_published, pull, pipeline)

        listeners.append(WireListener(host, secret, on_peer))
    print(json.dumps([listener.address[1] for listener in listeners]), flush=True)
    sys.stdin.read()  # until the workers are done
    print(json.dumps({str(i): times[WARMUP:] for i, times in applies.items()}), flush=True)


def work(host: str, ports: list[int], size: int, secret: bytes, worker: int, steps: int) -> None:
    """A worker: for each setting in turn (interleaved over the steps), ring and wait for the answer."""
    from raytf.exchange.wire import connect
    from raytf.exchange.wire_link import Parts, WireBell

    rng = np.random.default_rng(worker)
    gradient = rng.standard_normal(size, dtype=np.float32) * 1e-3
    parts = Parts(size)
    parts.set([gradient], (0,))
    bells = [WireBell(connect(host, port, secret, worker), parts, size, None, push) for port, (push, _, _) in
             zip(ports, SETTINGS)]
    times: dict[int, list[float]] = {i: [] for i in range(len(SETTINGS))}
    for step in range(WARMUP + steps):
        for i, bell in enumerate(bells):
            started = time.perf_counter()
            bell.ring(step, step + 1, None, True)
            bell.answer()
            if step >= WARMUP:
                times[i].append(time.perf_counter() - started)
    wire = {i: (bell.conn.bytes_sent, bell.conn.bytes_received) for i, bell in enumerate(bells)}
    for bell in bells:
        bell.close()
    print(json.dumps({"times": times, "wire": wire}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bytes", type=int, default=7_454_760, help="the gradient (default: the benchmark MLP's)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--link", default=None, help="RATE,DELAY between two namespaces, e.g. 10gbit,0.1ms")
    parser.add_argument("--role", choices=["serve", "work"], help=argparse.SUPPRESS)
    parser.add_argument("--host", help=argparse.SUPPRESS)
    parser.add_argument("--ports", help=argparse.SUPPRESS)
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = args.bytes // 4
    if args.role:
        secret = bytes.fromhex(sys.stdin.readline().strip())
        if args.role == "serve":
            serve(args.host, size, secret)
        else:
            work(args.host, json.loads(args.ports), size, secret, args.worker, args.steps)
        return 0

    from examples.netns import Link, start_server, two_nodes_or_loopback
    from raytf.exchange.wire import new_secret

    link = Link.parse(args.link) if args.link else None
    secret = new_secret().hex()
    me = [sys.executable, str(Path(__file__).resolve()), "--bytes", str(args.bytes), "--steps", str(args.steps)]
    nodes = two_nodes_or_loopback(args.link)
    try:
        host = nodes.address(0) if nodes else "127.0.0.1"
        wrap = (lambda node, argv: nodes.command(node, argv)) if nodes else (lambda node, argv: argv)
        server, ports = start_server(nodes, me + ["--role", "serve", "--host", host], secret)
        results: list = [None] * WORKERS

        def run(worker: int) -> None:
            done = subprocess.run(wrap(1, me + ["--role", "work", "--host", host, "--ports", ports,
                                                "--worker", str(worker)]),
                                  input=secret + "\n", capture_output=True, text=True, timeout=1800)
            results[worker] = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else done.stderr

        threads = [threading.Thread(target=run, args=(w,)) for w in range(WORKERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        server.stdin.close()
        applies = json.loads(server.stdout.readline())
        server.wait(60)
    finally:
        if nodes:
            shaping = nodes.shaping
            nodes.close()
    failed = [r for r in results if not isinstance(r, dict)]
    if failed:
        print(failed[0], file=sys.stderr)
        return 1
    where = f"two namespaces, {shaping}" if nodes else "loopback, unshaped"
    print(f"sync step exchange of {args.bytes:,} bytes per worker, {WORKERS} workers -> 1 server, {where}, "
          f"{args.steps} steps per setting, interleaved")
    print("| push | pull | server | MB in / out at the server | step exchange ms (median) | apply ms | floor ms: in + out "
          "| median / that | floor ms: both at once | median / that |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for i, (push, pull, pipelined) in enumerate(SETTINGS):
        times = [t for r in results for t in r["times"][str(i)]]
        sent = sum(r["wire"][str(i)][0] for r in results) / (WARMUP + args.steps)
        received = sum(r["wire"][str(i)][1] for r in results) / (WARMUP + args.steps)
        median, apply = statistics.median(times), statistics.median(applies[str(i)])
        floors = [(sent + received) * 8 / link.bits_per_second + apply,
                  max(sent, received) * 8 / link.bits_per_second + apply] if nodes else []
        columns = " | ".join(f"{1000 * floor:.2f} | {median / floor:.2f}" for floor in floors) or "- | - | - | -"
        print(f"| {push} | {pull} | {'pipelined' if pipelined else 'whole'} | {sent / 1e6:.2f} / {received / 1e6:.2f} | {1000 * median:.2f} | {1000 * apply:.2f} | "
              f"{columns} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
