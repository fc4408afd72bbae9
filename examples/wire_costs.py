"""Which library should carry raytf's cross-node data plane? Measured, not guessed.

    python examples/wire_costs.py                       # 7,454,760 bytes (the benchmark MLP), 40 repeats
    python examples/wire_costs.py --bytes 30000000 --repeats 20
    python examples/wire_costs.py --busy 2 --repeats 100   # the cores busy, as training keeps them

Each contender moves one buffer out to a peer process over 127.0.0.1 and one buffer of the same size
back, with the semantics a parameter server needs: the sender sends from its own (gradient) buffer,
the peer ends up with the bytes in its preallocated gradient buffer and answers from its preallocated
parameter buffer, and the caller ends up with them in its preallocated parameter buffer. Contenders
run interleaved (one round trip of each, then the next repeat) so the machine's drift hits all
alike; the table gives the median and min wall time, and the mean CPU time of both processes (the
kernel counts CPU in 10 ms ticks, so only the mean over many repeats means something).

* `socket`: plain TCP, 8 MB socket buffers, `sendall(memoryview)` of the whole buffer, `recv_into`
  the destination; the peer answers after the whole buffer is in.
* `socket, 4 MB chunks, duplex`: the same sockets, the buffer in 4 MB pieces (BytePS's partition
  size); the peer answers piece k as soon as it is in while k+1 arrives, and the caller sends on a
  thread while it receives the answer (what raytf.exchange.wire does).
* `raytf.exchange.wire`: the module built on that choice (frames in its 1 MB chunks, checks, Duplex),
  to see what it adds.
* `pyzmq PAIR, copy=False`: `send(buffer, copy=False)` / `recv(copy=False)`; ZeroMQ owns the received
  message, so each side copies it into its destination (there is no recv-into-my-buffer in ZeroMQ).
* `pyzmq, no destination copy`: the same without those copies (what ZeroMQ costs if the received
  message could be used in place; raytf's server update and worker step read fixed buffers, so it
  cannot).

`--busy N` keeps N extra processes multiplying matrices meanwhile, as a training step keeps the
cores busy beside the exchange: then wall times say little, but the CPU column is what the wire
takes from the training, and it is not the same as on idle cores (waking a reader preempts a busy
thread; the kernel's socket paths run beside a compute's cache traffic).

It prints numbers and judges none.
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import statistics
import threading
import time

import numpy as np
import psutil

SOCKET_BUFFER = 8 * 1024 * 1024
CHUNK = 4 * 1024 * 1024
_SPAWN = multiprocessing.get_context("spawn")  # fresh interpreters: nothing of the caller's threads


def _tuned(sock: socket.socket) -> socket.socket:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _recv_into(sock: socket.socket, view: memoryview) -> None:
    while view.nbytes:
        got = sock.recv_into(view)
        if not got:
            raise ConnectionError("peer closed")
        view = view[got:]


def _pieces(size: int, chunk: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk, size)) for start in range(0, size, chunk)]


def _socket_peer(port_queue, size: int, chunk: int) -> None:
    listener = _tuned(socket.socket())
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port_queue.put(listener.getsockname()[1])
    conn, _ = listener.accept()
    _tuned(conn)
    grads, params = memoryview(bytearray(size)), memoryview(bytearray(size))
    pieces = _pieces(size, chunk or size)
    try:
        while True:
            for start, stop in pieces:
                _recv_into(conn, grads[start:stop])
                conn.sendall(params[start:stop])  # chunked: piece k goes back while k+1 arrives
    except ConnectionError:
        return


def _zmq_peer(port_queue, size: int, copy_out: bool) -> None:
    import zmq

    context = zmq.Context()
    sock = context.socket(zmq.PAIR)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    port_queue.put(port)
    grads, params = np.zeros(size, np.uint8), np.zeros(size, np.uint8)
    while True:
        message = sock.recv(copy=False)
        if len(message) == 0:
            return
        if copy_out:
            np.copyto(grads, np.frombuffer(message.buffer, np.uint8))
        sock.send(params, copy=False)


class SocketContender:
    def __init__(self, size: int, chunk: int) -> None:
        ports = _SPAWN.Queue()
        self.peer = _SPAWN.Process(target=_socket_peer, args=(ports, size, chunk), daemon=True)
        self.peer.start()
        self.sock = _tuned(socket.create_connection(("127.0.0.1", ports.get(timeout=60))))
        self.grads, self.params = memoryview(bytearray(size)), memoryview(bytearray(size))
        self.pieces = _pieces(size, chunk or size)
        self.chunked = bool(chunk)
        self._go = threading.Semaphore(0)
        if self.chunked:
            threading.Thread(target=self._sender, daemon=True).start()

    def _sender(self) -> None:
        while True:
            self._go.acquire()
            for start, stop in self.pieces:
                self.sock.sendall(self.grads[start:stop])

    def round_trip(self) -> None:
        if self.chunked:
            self._go.release()  # send on the thread, receive here: both directions at once
            for start, stop in self.pieces:
                _recv_into(self.sock, self.params[start:stop])
        else:
            self.sock.sendall(self.grads)
            _recv_into(self.sock, self.params)

    def close(self) -> None:
        self.sock.close()
        self.peer.join(10)


def _wire_peer(port_queue, size: int) -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from raytf.exchange.wire import REPLY, PeerGone, WireListener

    params = np.zeros(size // 4, np.float32)

    def on_peer(conn) -> None:
        grads = np.zeros(size // 4, np.float32)

        def reply(frame, start, stop):  # chunk k's answer goes back while k+1 arrives
            conn.send_chunk(REPLY, frame.seq, frame.version, frame.index, frame.count, start, params[start:stop])

        while True:
            try:
                conn.receive(grads, reply)
            except PeerGone:
                return

    listener = WireListener("127.0.0.1", b"wire-costs-secret", on_peer)
    port_queue.put(listener.address[1])
    threading.Event().wait()


class WireContender:
    """raytf.exchange.wire itself: handshake done once, frames in its chunks (CHUNK_BYTES), Duplex."""

    def __init__(self, size: int) -> None:
        from raytf.exchange.wire import Duplex, connect

        ports = _SPAWN.Queue()
        self.peer = _SPAWN.Process(target=_wire_peer, args=(ports, size), daemon=True)
        self.peer.start()
        self.link = Duplex(connect("127.0.0.1", ports.get(timeout=60), b"wire-costs-secret", peer_id=0))
        self.grads, self.params = np.zeros(size // 4, np.float32), np.zeros(size // 4, np.float32)

    def round_trip(self) -> None:
        self.link.exchange(0, 0, self.grads, self.params)

    def close(self) -> None:
        self.link.close()
        self.peer.kill()


class ZmqContender:
    def __init__(self, size: int, copy_out: bool) -> None:
        import zmq

        ports = _SPAWN.Queue()
        self.peer = _SPAWN.Process(target=_zmq_peer, args=(ports, size, copy_out), daemon=True)
        self.peer.start()
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.PAIR)
        self.sock.connect(f"tcp://127.0.0.1:{ports.get(timeout=60)}")
        self.grads, self.params = np.zeros(size, np.uint8), np.zeros(size, np.uint8)
        self.copy_out = copy_out

    def round_trip(self) -> None:
        self.sock.send(self.grads, copy=False)
        message = self.sock.recv(copy=False)
        if self.copy_out:
            np.copyto(self.params, np.frombuffer(message.buffer, np.uint8))

    def close(self) -> None:
        self.sock.send(b"")
        self.peer.join(10)
        self.sock.close(linger=0)
        self.context.term()


def _busy() -> None:
    matrix = np.random.default_rng(0).random((400, 400), np.float32)
    while True:
        matrix @ matrix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bytes", type=int, default=7_454_760)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--busy", type=int, default=0, metavar="N",
                        help="processes that keep the cores busy meanwhile (default 0)")
    args = parser.parse_args()

    contenders = {
        "socket, whole buffer": lambda: SocketContender(args.bytes, 0),
        "socket, 4 MB chunks, duplex": lambda: SocketContender(args.bytes, CHUNK),
        "socket, 1 MB chunks, duplex": lambda: SocketContender(args.bytes, 1024 * 1024),
    }
    if args.bytes % 4 == 0:
        from raytf.exchange.wire import CHUNK_BYTES

        label = f"raytf.exchange.wire ({CHUNK_BYTES // 2**20} MB chunks, Duplex)"
        contenders[label] = lambda: WireContender(args.bytes)
    try:
        import zmq  # noqa: F401

        contenders["pyzmq PAIR copy=False, into destination"] = lambda: ZmqContender(args.bytes, True)
        contenders["pyzmq PAIR copy=False, no destination copy"] = lambda: ZmqContender(args.bytes, False)
    except ImportError:
        print("pyzmq is not installed (pip install pyzmq): its rows are left out")
    made = {name: make() for name, make in contenders.items()}
    busy = [_SPAWN.Process(target=_busy, daemon=True) for _ in range(args.busy)]
    for process in busy:
        process.start()
    me = psutil.Process()
    wall: dict[str, list[float]] = {name: [] for name in made}
    cpu: dict[str, list[float]] = {name: [] for name in made}
    for contender in made.values():
        for _ in range(3):
            contender.round_trip()  # warm: page in both sides' buffers, grow the socket windows
    for _ in range(args.repeats):
        for name, contender in made.items():
            peer = psutil.Process(contender.peer.pid)
            cpu_before = sum(me.cpu_times()[:2]) + sum(peer.cpu_times()[:2])
            started = time.perf_counter()
            contender.round_trip()
            wall[name].append(time.perf_counter() - started)
            cpu[name].append(sum(me.cpu_times()[:2]) + sum(peer.cpu_times()[:2]) - cpu_before)
    for process in busy:
        process.kill()
    for contender in made.values():
        contender.close()

    beside = f", {args.busy} busy processes beside" if args.busy else ""
    print(f"{args.bytes:,} bytes out and back over 127.0.0.1, {args.repeats} interleaved repeats{beside}")
    print("| path | median ms | min ms | CPU ms per round trip (both processes, mean) | GB/s moved (2 x bytes / median) |")
    print("|---|---:|---:|---:|---:|")
    for name in made:
        median = statistics.median(wall[name])
        print(f"| {name} | {1000 * median:.2f} | {1000 * min(wall[name]):.2f} | "
              f"{1000 * statistics.fmean(cpu[name]):.1f} | {args.bytes / median / 1e9 * 2:.2f} |")
    aead_costs(args.bytes, args.repeats)


def aead_costs(size: int, repeats: int) -> None:
    """What encrypting the wire would add: AES-256-GCM (cryptography) over the buffer in 4 MB chunks."""
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
    except ImportError:
        print("cryptography is not installed: no encryption costs")
        return
    data = memoryview(np.random.default_rng(0).integers(0, 255, size, np.uint8))
    print(f"\nsealing and opening {size:,} bytes in 4 MB chunks, in this process, {repeats} repeats")
    print("| AEAD | seal median ms | open median ms | GB/s seal |")
    print("|---|---:|---:|---:|")
    for name, aead in (("AES-256-GCM", AESGCM(AESGCM.generate_key(256))),
                       ("ChaCha20-Poly1305", ChaCha20Poly1305(ChaCha20Poly1305.generate_key()))):
        seal, unseal = [], []
        for repeat in range(repeats):
            nonce = repeat.to_bytes(12, "little")
            started = time.perf_counter()
            sealed = [aead.encrypt(nonce, data[i:i + CHUNK], b"header") for i in range(0, size, CHUNK)]
            middle = time.perf_counter()
            for piece in sealed:
                aead.decrypt(nonce, piece, b"header")
            unseal.append(time.perf_counter() - middle)
            seal.append(middle - started)
        print(f"| {name} | {1000 * statistics.median(seal):.2f} | {1000 * statistics.median(unseal):.2f} | "
              f"{size / statistics.median(seal) / 1e9:.2f} |")


if __name__ == "__main__":
    main()
