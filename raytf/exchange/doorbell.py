"""The doorbell: a push and its answer between a worker and a server on one node, without a Ray call.

Over shared memory the gradient and the parameters already sit in the slots (raytf.exchange.transport);
all a step still needs is to say "my gradient is in" and to hear "your parameters are in". A Ray
actor call for that costs about a millisecond each way plus the scheduling of its threads. The
doorbell is one AF_UNIX stream socket per server, in the run's private directory (0700, socket
0600, and the peer's uid checked with SO_PEERCRED): a worker writes a 26-byte push frame and
blocks in `recv` (the GIL released) until the 18-byte reply frame comes. Behind the socket the
server runs the very same `push` as the Ray call does, so every policy, the trace and the metrics
behave the same.

Ray stays the control plane: set-up, pulls, restarts, stop and rollback go through actor calls.
Faults: a worker that dies closes its socket (the server's thread sees EOF and ends; the driver
drops the worker from the barrier as before); a server that dies closes its end, and the worker's
`answer` raises `ServerGone`, which it handles like Ray's actor-died error.
"""

from __future__ import annotations

import math
import os
import socket
import struct
import threading
from typing import Callable

from raytf.exchange import Reply, Status

PUSH = struct.Struct("<qqd??")  # base version, steps done, loss (NaN: none), has loss, finite
REPLY = struct.Struct("<bqq?")  # status, version, buffer of the slot to read, dropped
HELLO = struct.Struct("<q")  # the worker's index, sent once after connecting
_STATUSES = list(Status)
_PEERCRED = struct.Struct("3i")  # pid, uid, gid
MAX_PATH = 100  # sun_path holds 108 bytes; a longer path gets no doorbell (Ray calls instead)


class ServerGone(ConnectionError):
    """The server's end of the doorbell closed: its process died (or the run is being torn down)."""


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    """`size` bytes, or b"" when the peer closed the connection first."""
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return b""
        data += chunk
    return data


# worker, base version, steps, loss, finite -> the answer, or None when it comes later (`Doorbell.answer`)
Serve = Callable[[int, int, int, "float | None", bool], "Reply | None"]


def _reply_frame(reply: Reply) -> bytes:
    half = reply.payload if isinstance(reply.payload, int) else 0
    return REPLY.pack(_STATUSES.index(reply.status), reply.version, half, reply.dropped)


class Doorbell:
    """The server's end: accepts its node's workers and answers their pushes, one thread each."""

    def __init__(self, path: str, serve: Serve, on_gone: Callable[[int], None] | None = None) -> None:
        """`on_gone(worker)`: called when a worker's connection ends (it closed it, or died)."""
        self.path = path
        self._serve = serve
        self._on_gone = on_gone
        self._conns: set[socket.socket] = set()
        self._by_worker: dict[int, socket.socket] = {}  # for `answer`
        self._lock = threading.Lock()
        self._closed = False
        try:
            os.unlink(path)  # left by a process of this server that died
        except FileNotFoundError:
            pass
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # created 0600, whatever the umask was
        try:
            self._listener.bind(path)
        finally:
            os.umask(old_umask)
        self._listener.listen(64)
        threading.Thread(target=self._accept, name="raytf-doorbell", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            _, uid, _ = _PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
            hello = _recv_exact(conn, HELLO.size) if uid == os.getuid() else b""
            if not hello:
                conn.close()  # another user's process (the directory is 0700, so this is defence in depth)
                continue
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                self._conns.add(conn)
                (worker,) = HELLO.unpack(hello)
                self._by_worker[worker] = conn
            threading.Thread(target=self._answer, args=(conn, worker), name=f"raytf-doorbell-{worker}",
                             daemon=True).start()

    def _answer(self, conn: socket.socket, worker: int) -> None:
        try:
            while True:
                frame = _recv_exact(conn, PUSH.size)
                if not frame:
                    return  # the worker closed it, or its process died
                base, steps, loss, has_loss, finite = PUSH.unpack(frame)
                reply = self._serve(worker, base, steps, loss if has_loss else None, finite)
                if reply is not None:  # else another thread answers it (`answer`)
                    conn.sendall(_reply_frame(reply))
        except OSError:
            return  # the worker died while its push was being answered
        finally:
            with self._lock:
                self._conns.discard(conn)
                if self._by_worker.get(worker) is conn:
                    del self._by_worker[worker]
            conn.close()
            if self._on_gone is not None:
                self._on_gone(worker)

    def answer(self, worker: int, reply: Reply) -> None:
        """Answer `worker`'s push from this thread, where `serve` returned None for it: a wake-up
        less than handing the answer to the worker's doorbell thread first. A worker that is gone
        meanwhile is skipped (its thread sees the connection end)."""
        with self._lock:
            conn = self._by_worker.get(worker)
        if conn is not None:
            try:
                conn.sendall(_reply_frame(reply))
            except OSError:
                pass

    def connected(self) -> int:
        """How many workers are connected now."""
        with self._lock:
            return len(self._conns)

    def close(self) -> None:
        """Stop accepting and hang up on every worker (their `answer` raises ServerGone)."""
        with self._lock:
            self._closed = True
            conns, self._conns = list(self._conns), set()
        for conn in [self._listener, *conns]:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class Bell:
    """A worker's end of one server's doorbell."""

    def __init__(self, path: str, worker: int) -> None:
        self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._conn.connect(path)
            self._conn.sendall(HELLO.pack(worker))
        except OSError:
            self._conn.close()
            raise

    def ring(self, base_version: int, steps_done: int, loss: float | None, finite: bool) -> None:
        """Say the gradient is in the slot (computed on `base_version`)."""
        try:
            self._conn.sendall(PUSH.pack(base_version, steps_done, math.nan if loss is None else loss,
                                         loss is not None, finite))
        except OSError as err:
            raise ServerGone(str(err)) from None

    def answer(self) -> Reply:
        """Wait for the server's answer to the last ring."""
        try:
            frame = _recv_exact(self._conn, REPLY.size)
        except OSError as err:
            raise ServerGone(str(err)) from None
        if not frame:
            raise ServerGone("the server closed the doorbell")
        status, version, half, dropped = REPLY.unpack(frame)
        return Reply(_STATUSES[status], version, half, dropped)

    def close(self) -> None:
        self._conn.close()
