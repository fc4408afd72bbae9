"""The wire between real processes: a peer SIGKILLed mid-transfer is an exception at once on the
other end (the kernel closes its sockets), never a wait until a deadline; and across two network
namespaces joined by a shaped veth pair (root only; skipped cleanly otherwise)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from raytf.exchange.wire import PUSH, REPLY, Duplex, PeerGone, WireListener, connect

pytestmark = pytest.mark.slow

SECRET = b"k" * 32
CHUNK = 256 * 1024
SIZE = 16 * CHUNK // 4
DEADLINE = 120.0  # a test that reaches it has hung
_SPAWN = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing of pytest's threads


def _push_half_then_die(port: int, ready) -> None:
    conn = connect("127.0.0.1", port, SECRET, peer_id=9, chunk_bytes=CHUNK)
    conn.send_chunk(PUSH, 0, 0, 0, 16, 0, np.ones(CHUNK // 4, np.float32))
    ready.set()
    conn.sock.sendall(b"RTFW" + b"\0" * 16)  # the start of the next frame's header, and no more
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_worker_killed_mid_push_ends_the_servers_receive_with_peer_gone():
    done = threading.Event()
    errors: list[BaseException] = []

    def serve(conn):
        try:
            conn.receive(np.zeros(SIZE, np.float32), deadline=time.monotonic() + DEADLINE)
        except PeerGone as err:
            errors.append(err)
        finally:
            done.set()

    listener = WireListener("127.0.0.1", SECRET, serve, chunk_bytes=CHUNK)
    ready = _SPAWN.Event()
    worker = _SPAWN.Process(target=_push_half_then_die, args=(listener.address[1], ready))
    worker.start()
    worker.join(DEADLINE)
    assert worker.exitcode == -signal.SIGKILL and ready.is_set()
    assert done.wait(DEADLINE)
    listener.close()
    assert len(errors) == 1 and "worker 9" in str(errors[0])


def _serve_then_die_mid_reply(port_queue) -> None:
    def serve(conn):
        grads = np.zeros(SIZE, np.float32)

        def reply_then_die(frame, start, stop):
            conn.send_chunk(REPLY, frame.seq, 1, frame.index, frame.count, start, grads[start:stop])
            if frame.index == 3:
                os.kill(os.getpid(), signal.SIGKILL)  # three chunks of the reply are out, then the process dies

        conn.receive(grads, reply_then_die)

    listener = WireListener("127.0.0.1", SECRET, serve, chunk_bytes=CHUNK)
    port_queue.put(listener.address[1])
    threading.Event().wait()


def test_a_server_killed_mid_reply_ends_the_workers_exchange_with_peer_gone():
    ports = _SPAWN.Queue()
    server = _SPAWN.Process(target=_serve_then_die_mid_reply, args=(ports,))
    server.start()
    try:
        worker = Duplex(connect("127.0.0.1", ports.get(timeout=DEADLINE), SECRET, peer_id=0, chunk_bytes=CHUNK))
        into = np.zeros(SIZE, np.float32)
        chunks = []
        with pytest.raises(PeerGone):
            worker.exchange(0, 0, np.ones(SIZE, np.float32), into, on_chunk=lambda f, a, b: chunks.append(f.index),
                            deadline=time.monotonic() + DEADLINE)
        worker.close()
        assert chunks[:3] == [0, 1, 2]  # what came before the death was delivered, in order
    finally:
        server.join(DEADLINE)
    assert server.exitcode == -signal.SIGKILL


REPO = Path(__file__).resolve().parents[2]


def _netns_or_skip():
    sys.path.insert(0, str(REPO))
    from examples import netns

    reason = netns.unavailable_reason()
    if reason:
        pytest.skip(reason)
    return netns


def test_namespaces_are_made_shaped_and_always_deleted():
    netns = _netns_or_skip()
    prefix = f"raytf-t{os.getpid()}"
    with netns.Namespaces(2, netns.Link.parse("1gbit,0.1ms"), prefix=prefix) as nodes:
        assert sorted(netns.leftovers(prefix)) == sorted([*nodes.names, nodes.bridge])
        assert nodes.shaping.startswith(("netem rate 1gbit", "tbf rate 1gbit"))
        seen = nodes.run(1, ["ip", "-4", "-o", "addr", "show", "dev", "eth0"], capture_output=True, text=True)
        assert "198.18.0.2/24" in seen.stdout
    assert netns.leftovers(prefix) == []
    with pytest.raises(RuntimeError, match="boom"), netns.Namespaces(1, prefix=prefix):
        raise RuntimeError("boom")
    assert netns.leftovers(prefix) == []


def test_sigterm_inside_the_namespaces_still_deletes_them():
    netns = _netns_or_skip()
    before = set(netns.leftovers("raytf-"))
    waiter = "import sys; print('ready', flush=True); sys.stdin.read()"
    runner = subprocess.Popen([sys.executable, str(REPO / "examples" / "netns.py"), "--nodes", "2", "--",
                               sys.executable, "-c", waiter], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert runner.stdout.readline().strip() == "ready"  # the command runs inside node 0
    assert len(set(netns.leftovers("raytf-")) - before) == 3
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(DEADLINE) == 128 + signal.SIGTERM
    runner.stdin.close()
    assert set(netns.leftovers("raytf-")) - before == set()


def test_the_wire_bench_runs_across_two_shaped_namespaces():
    netns = _netns_or_skip()
    before = set(netns.leftovers("raytf-"))
    bench = subprocess.run([sys.executable, str(REPO / "examples" / "wire_bench.py"), "--link", "1gbit,0.1ms",
                            "--repeats", "1", "--bytes", "4000000"],
                           capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert bench.returncode == 0, bench.stderr
    assert "two namespaces" in bench.stdout and "| int8 | bf16 | yes |" in bench.stdout
    assert set(netns.leftovers("raytf-")) - before == set()


def test_a_ray_cluster_runs_across_two_shaped_namespaces_and_is_gone_after():
    """examples/netns_cluster.py, as `benchmark.py --link` uses it: the head (servers' node) in one
    namespace, the workers' node in the other; a task asking for `bench_worker` runs at the second
    node's address; afterwards neither the namespaces nor a process of either node is left."""
    netns = _netns_or_skip()
    from examples.netns_cluster import ShapedCluster, live_in_groups

    prefix = f"raytf-c{os.getpid()}"
    with ShapedCluster(netns.Link.parse("1gbit,0.1ms"), prefix=prefix) as cluster:
        groups = cluster.process_groups
        probe = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
                 "where = ray.remote(num_cpus=0, resources={'bench_worker': 1})(ray.util.get_node_ip_address); "
                 "print(sorted(n['NodeManagerAddress'] for n in ray.nodes() if n['Alive']), ray.get(where.remote()))")
        seen = cluster.run_in_head_namespace([sys.executable, "-c", probe, cluster.address], capture_output=True,
                                             text=True, timeout=DEADLINE * 4)
        assert seen.returncode == 0, seen.stderr[-2000:]
        assert seen.stdout.split("\n")[-2] == "['198.18.0.1', '198.18.0.2'] 198.18.0.2"
        assert len(netns.leftovers(prefix)) == 3
    assert netns.leftovers(prefix) == []
    assert live_in_groups(groups) == []

