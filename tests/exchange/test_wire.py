"""The direct data plane (raytf.exchange.wire) over 127.0.0.1, in one process with threads: chunked,
pipelined transfers land in order and exact; strangers are refused, counted and logged once while
a good connection keeps training; a peer that dies or goes silent is an exception, never a hang."""

from __future__ import annotations

import logging
import socket
import threading
import time

import numpy as np
import pytest

from raytf.exchange.codecs import ErrorFeedback
from raytf.exchange.wire import (
    HEADER,
    HELLO,
    KIND_HELLO,
    MAGIC,
    PROTOCOL,
    PUSH,
    REPLY,
    Duplex,
    PeerGone,
    WireListener,
    WireProtocolError,
    WireRefused,
    WireTimeout,
    connect,
)

SECRET = b"s" * 32
CHUNK = 64 * 1024  # small chunks, so a modest buffer has many
DEADLINE = 60.0  # seconds, far beyond any wait here: a test that reaches it has hung


def soon() -> float:
    """The wire's deadlines are points on the monotonic clock."""
    return time.monotonic() + DEADLINE


class ApplyServer:
    """A stand-in for the server actor: per worker, params -= gradient chunk by chunk, and each
    chunk's new parameters streamed back as soon as it is applied."""

    def __init__(self, size: int, *, pull_codec: str = "none", encrypt: bool = False,
                 handshake_timeout: float = 5.0, chunk_bytes: int = CHUNK) -> None:
        self.size, self.pull_codec = size, pull_codec
        self.params = np.arange(size, dtype=np.float32)
        self.received: list[np.ndarray] = []
        self.order: list[tuple[int, int, int]] = []
        self.errors: list[Exception] = []
        self.failed = threading.Event()  # set once a connection ended with a protocol error
        self.listener = WireListener("127.0.0.1", SECRET, self._serve, encrypt=encrypt, poll_seconds=0.05,
                                     handshake_timeout=handshake_timeout, chunk_bytes=chunk_bytes)
        self.port = self.listener.address[1]

    def _serve(self, conn) -> None:
        grads = np.zeros(self.size, np.float32)
        params = self.params.copy()

        def apply(frame, start, stop):
            self.order.append((frame.index, start, stop))
            params[start:stop] -= grads[start:stop]
            if frame.index + 1 == frame.count:
                self.received.append(grads.copy())  # before the last reply chunk: the worker may look next
            conn.send_chunk(REPLY, frame.seq, frame.version + 1, frame.index, frame.count, start,
                            params[start:stop], self.pull_codec)

        while True:
            try:
                conn.receive(grads, apply, deadline=None)
            except PeerGone:
                return
            except WireProtocolError as err:
                self.errors.append(err)
                self.failed.set()
                return

    def close(self) -> None:
        self.listener.close()


def _worker(port: int, **kwargs) -> Duplex:
    return Duplex(connect("127.0.0.1", port, SECRET, peer_id=7, poll_seconds=0.05, chunk_bytes=CHUNK, **kwargs))


def test_a_chunked_pipelined_push_and_reply_land_in_order_and_exact():
    size = 1_000_003  # 16 chunks of 64 KB and an odd tail
    server = ApplyServer(size)
    worker = _worker(server.port)
    gradient = np.random.default_rng(0).standard_normal(size).astype(np.float32)
    into = np.full(size, np.nan, np.float32)
    order = []
    reply = worker.exchange(5, 41, gradient, into, on_chunk=lambda f, a, b: order.append((f.index, a, b)),
                            deadline=soon())
    worker.close()
    server.close()
    chunks = -(-size // (CHUNK // 4))
    expected = [(k, k * CHUNK // 4, min((k + 1) * CHUNK // 4, size)) for k in range(chunks)]
    assert order == expected and server.order == expected
    assert (reply.kind, reply.seq, reply.version, reply.chunks) == (REPLY, 5, 42, chunks)
    assert server.received[0].tobytes() == gradient.tobytes()  # bit-exact both ways with codec none
    assert into.tobytes() == (np.arange(size, dtype=np.float32) - gradient).tobytes()


def test_the_reply_to_chunk_k_comes_back_before_chunk_k_plus_1_is_sent():
    """Lockstep: the worker sends chunk k+1 only once chunk k's reply is in. Without streaming this
    would wait until the deadline."""
    size, per_chunk = 10 * CHUNK // 4, CHUNK // 4
    server = ApplyServer(size)
    conn = connect("127.0.0.1", server.port, SECRET, peer_id=1, chunk_bytes=CHUNK)
    gradient = np.ones(size, np.float32)
    into = np.zeros(size, np.float32)

    def next_chunk(frame, start, stop):
        if frame.index + 1 < frame.count:
            k = frame.index + 1
            conn.send_chunk(PUSH, 0, 0, k, 10, k * per_chunk, gradient[k * per_chunk:(k + 1) * per_chunk])

    conn.send_chunk(PUSH, 0, 0, 0, 10, 0, gradient[:per_chunk])
    conn.receive(into, next_chunk, deadline=soon(), kinds=(REPLY,))
    conn.close()
    server.close()
    assert np.array_equal(into, np.arange(size, dtype=np.float32) - 1)


@pytest.mark.parametrize("encrypt", [False, True])
def test_compressed_push_and_pull_stay_within_their_bounds(encrypt):
    pytest.importorskip("cryptography") if encrypt else None
    size = 300_001
    server = ApplyServer(size, pull_codec="bf16", encrypt=encrypt)
    worker = _worker(server.port, encrypt=encrypt)
    assert worker.conn.encrypted == encrypt
    gradient = np.random.default_rng(1).standard_normal(size).astype(np.float32)
    feedback = ErrorFeedback(size)
    into = np.zeros(size, np.float32)
    worker.exchange(0, 0, gradient, into, push_codec="int8", feedback=feedback, deadline=soon())
    worker.close()
    server.close()
    got = server.received[0]
    assert np.allclose(got + feedback.values, gradient, atol=1e-6)  # what int8 left out is held back
    expected = np.arange(size, dtype=np.float32) - got
    assert np.all(np.abs(into - expected) <= np.abs(expected) * 2.0 ** -8)
    assert worker.conn.bytes_sent < size * 4 / 3  # int8: a quarter, plus headers (and tags)


def test_encrypted_none_is_exact():
    size = 200_000
    server = ApplyServer(size, encrypt=True)
    worker = _worker(server.port, encrypt=True)
    gradient = np.random.default_rng(2).standard_normal(size).astype(np.float32)
    into = np.zeros(size, np.float32)
    worker.exchange(0, 0, gradient, into, deadline=soon())
    worker.close()
    server.close()
    assert server.received[0].tobytes() == gradient.tobytes()
    assert into.tobytes() == (np.arange(size, dtype=np.float32) - gradient).tobytes()


def test_an_encryption_mismatch_is_refused_with_the_fix():
    server = ApplyServer(10, encrypt=True)
    with pytest.raises(WireRefused, match="distribution.encrypt"):
        connect("127.0.0.1", server.port, SECRET, peer_id=0)
    server.close()


def _raw(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
    sock.recv(HEADER.size + 33)  # the challenge (small: one read takes it)
    return sock


def _send_and_wait_closed(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data)
    try:
        while sock.recv(4096):  # the server hangs up: EOF, or a reset where unread bytes were left
            pass
    except ConnectionResetError:
        pass
    sock.close()


def test_strangers_are_refused_counted_and_logged_once_while_training_goes_on(caplog):
    size = 50_000
    server = ApplyServer(size, handshake_timeout=0.5)
    worker = _worker(server.port)
    stop = threading.Event()
    trained: list[int] = []
    failures: list[BaseException] = []

    def train():
        gradient = np.ones(size, np.float32)
        into = np.zeros(size, np.float32)
        try:
            while not stop.is_set():
                worker.exchange(len(trained), 0, gradient, into, deadline=soon())
                trained.append(1)
        except (PeerGone, WireTimeout, WireProtocolError) as err:
            failures.append(err)

    trainer = threading.Thread(target=train)
    trainer.start()
    listener = server.listener
    caplog.set_level(logging.WARNING, logger="raytf.exchange.wire")

    def refused(reason: str, count: int = 1) -> None:
        assert listener.wait_for(lambda l: l.refused[reason] >= count, DEADLINE), listener.refused

    for attempt in (1, 2):  # twice each: counted twice, logged once
        with pytest.raises(WireRefused, match="secret"):
            connect("127.0.0.1", server.port, b"w" * 32, peer_id=0, timeout=DEADLINE)
        refused("wrong_secret", attempt)
        socket.create_connection(("127.0.0.1", server.port)).close()  # connects, says nothing, leaves
        refused("no_secret", 2 * attempt - 1)
        silent = _raw(server.port)  # connects and stays silent: refused at the handshake's deadline
        refused("no_secret", 2 * attempt)
        silent.close()
        _send_and_wait_closed(_raw(server.port), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\0" * 64)
        refused("garbage", attempt)
        lying = HEADER.pack(MAGIC, KIND_HELLO, 0, PROTOCOL, 0, 0, 0, 1, 0, 0, 2 ** 31, 0.0)
        _send_and_wait_closed(_raw(server.port), lying)  # claims 2 GB: refused without reading them
        refused("lying_length", attempt)
    stop.set()
    trainer.join(DEADLINE)
    assert failures == [] and len(trained) >= 1
    assert listener.refused == {"wrong_secret": 2, "no_secret": 4, "garbage": 2, "lying_length": 2, "busy": 0}
    # This listener's own (an earlier test's listener may still refuse a silent peer at its deadline).
    mine = f"raytf wire 127.0.0.1:{server.port}: refused a connection"
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith(mine)]
    assert len(warnings) == 4, warnings  # one per reason
    # A good worker still gets in afterwards.
    late = _worker(server.port)
    into = np.zeros(size, np.float32)
    late.exchange(0, 0, np.zeros(size, np.float32), into, deadline=soon())
    late.close()
    worker.close()
    server.close()
    assert listener.accepted == 2


def test_an_authenticated_peer_with_a_lying_length_is_cut_off():
    size = 1000
    server = ApplyServer(size)
    conn = connect("127.0.0.1", server.port, SECRET, peer_id=3)
    conn.sock.sendall(HEADER.pack(MAGIC, PUSH, 0, PROTOCOL, 0, 0, 0, 1, 0, size, 999_999, 0.0))
    with pytest.raises(PeerGone):
        conn.receive(np.zeros(size, np.float32), deadline=soon())  # the server hung up on it
    conn.close()
    assert server.failed.wait(DEADLINE)
    server.close()
    assert len(server.errors) == 1 and "payload length of 999999 bytes" in str(server.errors[0])


@pytest.mark.parametrize("where", ["between chunks", "inside a chunk"])
def test_a_peer_that_closes_mid_transfer_raises_peer_gone(where):
    """The worker sends part of a push and closes: the server's receive ends with PeerGone naming
    where it stood."""
    size = 10 * CHUNK // 4
    gone = threading.Event()
    errors: list[BaseException] = []

    def serve(conn):
        try:
            conn.receive(np.zeros(size, np.float32), deadline=soon())
        except PeerGone as err:
            errors.append(err)
        gone.set()

    listener = WireListener("127.0.0.1", SECRET, serve, chunk_bytes=CHUNK, poll_seconds=0.05)
    conn = connect("127.0.0.1", listener.address[1], SECRET, peer_id=2, chunk_bytes=CHUNK)
    conn.send_chunk(PUSH, 0, 0, 0, 10, 0, np.ones(CHUNK // 4, np.float32))
    if where == "inside a chunk":
        conn.sock.sendall(HEADER.pack(MAGIC, PUSH, 0, PROTOCOL, 0, 0, 1, 10, CHUNK // 4, CHUNK // 4, CHUNK, 0.0)
                          + b"\0" * (CHUNK // 2))
    conn.close()
    assert gone.wait(DEADLINE)
    expected = "waiting for chunk 2" if where == "between chunks" else "receiving chunk 2/10"
    assert len(errors) == 1 and f"closed the connection while {expected}" in str(errors[0])
    listener.close()


def test_a_silent_peer_is_a_timeout_while_alive_and_peer_gone_once_dead():
    release = threading.Event()
    listener = WireListener("127.0.0.1", SECRET, lambda conn: release.wait(DEADLINE), poll_seconds=0.05)
    port = listener.address[1]
    conn = connect("127.0.0.1", port, SECRET, peer_id=0, poll_seconds=0.05)
    with pytest.raises(WireTimeout, match="deadline"):
        conn.receive(np.zeros(10, np.float32), deadline=time.monotonic() + 0.2)
    dead = threading.Event()
    dead.set()
    other = connect("127.0.0.1", port, SECRET, peer_id=1, poll_seconds=0.05, alive=lambda: not dead.is_set())
    with pytest.raises(PeerGone, match="no longer alive"):
        other.receive(np.zeros(10, np.float32), deadline=None)  # no deadline at all: liveness ends it
    release.set()
    conn.close()
    other.close()
    listener.close()


class FlippingProxy:
    """A man in the middle on loopback: pumps bytes both ways and flips one byte of what the worker
    sends, `at` bytes into the stream (past the handshake: inside the first data payload)."""

    def __init__(self, port: int, at: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._target, self._at = port, at
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        client, _ = self.listener.accept()
        server = socket.create_connection(("127.0.0.1", self._target))
        threading.Thread(target=self._pump, args=(server, client, None), daemon=True).start()
        self._pump(client, server, self._at)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, flip_at: int | None) -> None:
        seen = 0
        try:
            while data := source.recv(65536):
                if flip_at is not None and seen <= flip_at < seen + len(data):
                    data = bytearray(data)
                    data[flip_at - seen] ^= 0x01
                seen += len(data)
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.mark.parametrize("encrypt", [True, False])
def test_a_byte_altered_on_the_way_is_caught_only_when_encrypted(encrypt):
    size = 1000
    server = ApplyServer(size, encrypt=encrypt)
    handshake = HEADER.size + HELLO.size  # the worker's HELLO frame
    proxy = FlippingProxy(server.port, at=handshake + HEADER.size + 100)
    worker = Duplex(connect("127.0.0.1", proxy.port, SECRET, peer_id=4, encrypt=encrypt))
    gradient = np.ones(size, np.float32)
    into = np.zeros(size, np.float32)
    if encrypt:
        with pytest.raises(PeerGone):  # the server refuses the frame and hangs up
            worker.exchange(0, 0, gradient, into, deadline=soon())
        assert server.failed.wait(DEADLINE)
        assert len(server.errors) == 1 and "seal does not verify" in str(server.errors[0])
    else:
        # Documented in docs/security.md: without encryption, integrity after the handshake is TCP's.
        worker.exchange(0, 0, gradient, into, deadline=soon())
        assert not np.array_equal(server.received[0], gradient)
    worker.close()
    server.close()


def test_a_bad_exchange_call_is_refused_up_front_and_the_link_stays_usable():
    from raytf.errors import ConfigError

    size = 1000
    server = ApplyServer(size)
    worker = _worker(server.port)
    into = np.zeros(size, np.float32)
    with pytest.raises(ConfigError, match="none, bf16, int8"):
        worker.exchange(0, 0, np.ones(size, np.float32), into, push_codec="zstd", deadline=soon())
    with pytest.raises(TypeError, match="float32"):
        worker.exchange(0, 0, np.ones(size), into, deadline=soon())
    worker.exchange(0, 0, np.ones(size, np.float32), into, deadline=soon())
    assert np.array_equal(into, np.arange(size, dtype=np.float32) - 1)
    worker.close()
    server.close()
