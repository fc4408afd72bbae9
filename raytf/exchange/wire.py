"""The direct data plane between a worker and a server on different nodes: one TCP connection per
(worker, server) pair, authenticated with the run's secret, carrying float32 buffers in chunks.

Why plain sockets and not a library: `examples/wire_costs.py` (five runs of 20-100 interleaved
repeats on a loaded 2-core machine) measured 7.45 MB out and back over loopback at 6.1-8.9 ms
(median; min 4.9-6.6) with `sendall(memoryview)` / `recv_into`, against 6.9-33.6 ms (min 5.2-6.8)
for pyzmq (`copy=False`) once the message is copied into the buffer the update reads, with less CPU
for the sockets. pyzmq wins only without that copy (5.7-10.2 ms), which raytf cannot use: ZeroMQ has
no receive-into-my-buffer, and the server's update and the worker's step read fixed buffers. A
per-chunk callback, deadlines and the handshake are also easier to get exactly right with the
socket in hand, and the standard library is no new dependency. This module on top of the sockets
costs what they cost (min 5.5 ms, median within the noise of the raw chunked duplex).

A connection's life:

1. **Handshake** (before any data, within `handshake_timeout`): the server sends a CHALLENGE frame
   (a fresh 32-byte nonce and whether it encrypts); the client answers with a HELLO frame (its own
   nonce, its peer id, and HMAC-SHA256(secret, both nonces, peer id, encrypt flag)); the server
   checks it with `hmac.compare_digest` and answers WELCOME, its own HMAC over the nonces the other
   way round, which the client checks in turn. The secret never travels. A stranger (wrong or no
   secret, garbage, a frame whose length is not the one its kind has) is refused before anything of
   it is read beyond one header, counted in `WireListener.refused` by reason, logged once per
   reason, and closed; other connections go on.
2. **Frames**: a fixed 52-byte header (`HEADER`: kind, codec, seq, version, chunk index and count,
   offset and number of values, payload length, scale) and the payload. A message is one buffer
   in chunks 0..count-1, in order, contiguous. The sender sends each chunk from the buffer's own
   memory (`sendmsg` of header and a view; no copy with codec `none`), the receiver reads each
   payload straight into the destination's slice (`recv_into`) and calls `on_chunk` after each one,
   so a server can apply chunk k while k+1 is still arriving and send chunk k's new parameters back
   while later chunks still come.
3. **Encryption** (`encrypt=True`): each payload is sealed with AES-256-GCM, a key per direction
   derived from the secret and both nonces, the frame counter as nonce and the header as associated
   data (so a frame cannot be altered, replayed or reordered unnoticed).
4. **Waiting**: every blocking read and write waits in slices of `poll_seconds`; between slices it
   asks `alive()` (e.g. whether Ray still shows the peer's actor) and checks the caller's deadline,
   so a dead peer is an exception (`PeerGone`) and never a hang. EOF and ECONNRESET are `PeerGone`
   at once; TCP keepalive catches a host that vanished without a reset.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from raytf.errors import ClusterError
from raytf.exchange.codecs import BY_ID, Codec, ErrorFeedback, make_codec

log = logging.getLogger(__name__)

MAGIC = b"RTFW"
PROTOCOL = 1
# magic, kind, codec, protocol, seq, version, chunk index, chunk count, offset (values), values,
# payload length (bytes on the wire), scale
HEADER = struct.Struct("<4sBBHQqIIQIIf")
CHALLENGE = struct.Struct("<32s?")  # server nonce, server encrypts
HELLO = struct.Struct("<32sq?32s")  # client nonce, peer id, client encrypts, proof
WELCOME = struct.Struct("<32s")  # the server's proof

# Frame kinds. Data kinds are the caller's; the handshake's are reserved.
KIND_CHALLENGE, KIND_HELLO, KIND_WELCOME = 250, 251, 252
PUSH, REPLY, ROWS = 1, 2, 3
META, CARRIED = 4, 5  # a push's and an answer's small first frame; whom a summed push carries (raytf.exchange.wire_link)

CHUNK_BYTES = 1024 * 1024  # 1 MB frames: a pipelined server (raytf.exchange.pipeline) starts on piece k once its megabyte is in
SOCKET_BUFFER = 8 * 1024 * 1024
MAX_CHUNK_BYTES = 64 * 1024 * 1024  # a frame claiming more is refused before it is read
TAG = 16  # AES-GCM's tag, after each sealed payload
SECRET_BYTES = 32


def new_secret() -> bytes:
    """A run's secret: made by the driver, handed to each actor through Ray's control plane."""
    return secrets.token_bytes(SECRET_BYTES)


class PeerGone(ConnectionError):
    """The other end closed, reset or stopped answering while its process is known dead."""


class WireTimeout(ClusterError, TimeoutError):
    """A wait on the wire outlasted its deadline while the peer was still alive."""


class WireRefused(ClusterError):
    """The handshake failed: the other end does not hold this run's secret, or is configured otherwise."""


class WireProtocolError(ClusterError):
    """An authenticated peer sent a frame this end cannot accept (a bug or a version mismatch)."""


@dataclass(frozen=True)
class Frame:
    kind: int
    codec: int
    seq: int
    version: int
    index: int
    count: int
    offset: int
    values: int
    length: int
    scale: float


@dataclass(frozen=True)
class Message:
    """What `Connection.receive` got: one buffer, all its chunks in `into`."""

    kind: int
    seq: int
    version: int
    chunks: int
    wire_bytes: int  # payload bytes received (after compression, with tags)


def _always_alive() -> bool:
    return True


def _tune(sock: socket.socket, poll_seconds: float) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # A host that vanished sends no reset: keepalive probes find it within ~10 s of silence.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 1), ("TCP_KEEPCNT", 5)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
    # Python's timeout mode (a poll() before each call, partial reads looped in Python) stays: with
    # busy cores it measured cheaper than blocking calls under the kernel's own timeouts, with or
    # without MSG_WAITALL, than SO_RCVLOWAT around each payload and than one frame per buffer (CPU
    # per 7.45 MB push and reply, 2026-12-05: worker 1.65-1.90 ms, server 1.60-1.80, against
    # 1.95-2.30 and 1.65-2.00; `examples/wire_costs.py --busy 2` measures the like).
    sock.settimeout(poll_seconds)


def _derive(secret: bytes, label: bytes, *parts: bytes) -> bytes:
    return hmac.new(secret, label + b"".join(parts), hashlib.sha256).digest()


def _aead(key: bytes):
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


class _Waiter:
    """Blocking socket I/O in slices, asking between slices whether to go on."""

    def __init__(self, sock: socket.socket, peer: str, alive: Callable[[], bool]) -> None:
        self.sock, self.peer, self.alive = sock, peer, alive

    def _still(self, deadline: float | None, what: str) -> None:
        if not self.alive():
            raise PeerGone(f"{self.peer} is gone (its process is no longer alive) while {what}")
        if deadline is not None and time.monotonic() >= deadline:
            raise WireTimeout(f"{what} from/to {self.peer} took longer than its deadline; the peer is alive "
                              "but sends or reads nothing.",
                              "Look at the peer's log for a stuck step; raise the exchange's timeout if it is just slow.")

    def recv_into(self, view: memoryview, deadline: float | None, what: str) -> None:
        while view.nbytes:
            try:
                got = self.sock.recv_into(view)
            except TimeoutError:
                self._still(deadline, what)
                continue
            except OSError as err:
                raise PeerGone(f"{self.peer}: {err.strerror or err} while {what}") from None
            if not got:
                raise PeerGone(f"{self.peer} closed the connection while {what}")
            view = view[got:]

    def send(self, parts: list[memoryview], deadline: float | None, what: str) -> None:
        """Send `parts` in order, as one `sendmsg` where the kernel takes them (no concatenation copy)."""
        parts = [part for part in parts if part.nbytes]
        while parts:
            try:
                sent = self.sock.sendmsg(parts)
            except TimeoutError:
                self._still(deadline, what)
                continue
            except OSError as err:
                raise PeerGone(f"{self.peer}: {err.strerror or err} while {what}") from None
            while sent and parts:
                if sent >= parts[0].nbytes:
                    sent -= parts[0].nbytes
                    parts.pop(0)
                else:
                    parts[0] = parts[0][sent:]
                    sent = 0


def _flat_bytes(array: np.ndarray) -> memoryview:
    return memoryview(array).cast("B")


class Connection:
    """One authenticated, framed connection. Sends may come from several threads (a lock keeps
    frames whole); receiving is one thread's."""

    def __init__(self, sock: socket.socket, peer: str, peer_id: int, *, keys: tuple[bytes, bytes] | None,
                 alive: Callable[[], bool] = _always_alive, chunk_bytes: int = CHUNK_BYTES,
                 max_chunk_bytes: int = MAX_CHUNK_BYTES) -> None:
        self.sock, self.peer, self.peer_id = sock, peer, peer_id
        self.chunk_values = max(1, chunk_bytes // 4)
        self.max_chunk_bytes = max_chunk_bytes
        self._io = _Waiter(sock, peer, alive)
        self._send_lock = threading.Lock()
        self._encoders: dict[str, Codec] = {}
        self._decoders: dict[int, Codec] = {}
        self._scratch: np.ndarray | None = None  # compressed or sealed payloads land here
        self._header = bytearray(HEADER.size)
        self._seal = self._open = None
        self._sent_frames = self._received_frames = 0  # the AEAD nonces, one counter per direction
        if keys is not None:
            self._seal, self._open = _aead(keys[0]), _aead(keys[1])
        self.bytes_sent = self.bytes_received = 0

    @property
    def encrypted(self) -> bool:
        return self._seal is not None

    # -- sending ---------------------------------------------------------------------------------

    def _encoder(self, name: str) -> Codec:
        if name not in self._encoders:
            self._encoders[name] = make_codec(name, self.chunk_values)
        return self._encoders[name]

    def send_chunk(self, kind: int, seq: int, version: int, index: int, count: int, offset: int,
                   chunk: np.ndarray, codec: str = "none", residual: np.ndarray | None = None,
                   deadline: float | None = None) -> int:
        """Send one chunk of a message (values `offset`.. of the buffer); returns payload bytes sent.
        A server streams its reply this way, chunk k as soon as chunk k is applied."""
        with self._send_lock:
            encoder = self._encoder(codec)
            payload, scale = encoder.encode(chunk, residual)
            return self._send_frame(kind, seq, version, index, count, offset, chunk.size, encoder.id, payload, scale,
                                    deadline)

    def send_encoded(self, kind: int, seq: int, version: int, index: int, count: int, offset: int, values: int,
                     codec_id: int, payload: memoryview, scale: float, deadline: float | None = None) -> int:
        """`send_chunk` of a chunk encoded already (by the caller's codec, `codec_id`): a server
        sending the same parameters to several workers encodes them once."""
        with self._send_lock:
            return self._send_frame(kind, seq, version, index, count, offset, values, codec_id, payload, scale, deadline)

    def _send_frame(self, kind: int, seq: int, version: int, index: int, count: int, offset: int, values: int,
                    codec_id: int, payload: memoryview, scale: float, deadline: float | None) -> int:
        length = payload.nbytes + (TAG if self._seal else 0)
        header = HEADER.pack(MAGIC, kind, codec_id, PROTOCOL, seq, version, index, count, offset, values, length, scale)
        if self._seal is not None:
            nonce = self._sent_frames.to_bytes(12, "little")
            self._sent_frames += 1
            payload = memoryview(self._seal.encrypt(nonce, payload, header))
        self._io.send([memoryview(header), payload], deadline, f"sending chunk {index + 1}/{count}")
        self.bytes_sent += HEADER.size + length
        return length

    def send(self, kind: int, seq: int, version: int, buffer: np.ndarray, codec: str = "none",
             feedback: ErrorFeedback | None = None, deadline: float | None = None) -> int:
        """Send all of `buffer` (float32, 1-D) as one message in chunks; returns payload bytes sent."""
        return self.send_parts(kind, seq, version, [(0, buffer)], codec, feedback, deadline)

    def send_parts(self, kind: int, seq: int, version: int, parts: list[tuple[int, np.ndarray]],
                   codec: str = "none", feedback: ErrorFeedback | None = None, deadline: float | None = None,
                   before: Callable[[int, int, int], None] | None = None) -> int:
        """Send `parts` ((offset, float32 array) in increasing, non-overlapping order) as one message
        of a buffer whose other values the receiver keeps as they are: a worker sends each variable's
        gradient from the step's own output, with no copy into a flat buffer first (the padding
        between variables is zero on the receiver and never travels). `before(part, start, stop)`
        runs before each chunk (values start..stop of part number `part`) is sent: a node's leader
        adds the chunk up while the one before it is on its way. Returns payload bytes sent."""
        pieces = []
        for number, (offset, part) in enumerate(parts):
            part = part.reshape(-1)
            for start in range(0, max(part.size, 1), self.chunk_values):
                pieces.append((number, start, offset + start, part[start:start + self.chunk_values]))
        sent = 0
        for index, (number, start, offset, chunk) in enumerate(pieces):
            if before is not None:
                before(number, start, start + chunk.size)
            residual = feedback.residual(offset, offset + chunk.size) if feedback is not None else None
            sent += self.send_chunk(kind, seq, version, index, len(pieces), offset, chunk, codec, residual, deadline)
        return sent

    # -- receiving -------------------------------------------------------------------------------

    def _read_header(self, deadline: float | None, what: str) -> Frame:
        self._io.recv_into(memoryview(self._header), deadline, what)
        magic, kind, codec, protocol, *rest = HEADER.unpack(self._header)
        if magic != MAGIC or protocol != PROTOCOL:
            raise WireProtocolError(f"{self.peer} sent a frame that is not raytf's wire protocol {PROTOCOL} "
                                    f"(magic {magic!r}, protocol {protocol}).",
                                    "Run the same raytf version on every node.")
        return Frame(kind, codec, *rest)

    def _refuse(self, frame: Frame, why: str) -> WireProtocolError:
        self.close()
        return WireProtocolError(f"{self.peer} sent chunk {frame.index}/{frame.count} (seq {frame.seq}) that "
                                 f"cannot be accepted: {why}. The connection is closed.",
                                 "Run the same raytf version and model on both ends; this is a bug otherwise.")

    def receive(self, into: np.ndarray | dict[int, np.ndarray], on_chunk: Callable[[Frame, int, int], None] | None = None,
                deadline: float | None = None, kinds: tuple[int, ...] = (PUSH, REPLY)) -> Message:
        """Receive one message into `into` (float32, 1-D, the buffer the sender's offsets are of):
        every chunk lands in its slice, in increasing order (a sender of parts may leave gaps, which
        keep their values), and `on_chunk(frame, start, stop)` runs after each, in order. `into` may
        map kinds to buffers: the message's kind picks one (and its keys are the kinds accepted)."""
        by_kind = into if isinstance(into, dict) else None
        if by_kind is not None:
            kinds = tuple(by_kind)
        offset = index = wire_bytes = wanted = 0
        first: Frame | None = None
        while True:
            frame = self._read_header(deadline, f"waiting for chunk {index + 1}")
            if frame.kind not in kinds:
                raise self._refuse(frame, f"kind {frame.kind}, expected one of {kinds}")
            if first is None:
                first = frame
                if by_kind is not None:
                    into = by_kind[frame.kind]
                wanted, destination = into.size, _flat_bytes(into)
            if (frame.seq, frame.count, frame.kind) != (first.seq, first.count, first.kind) or frame.index != index:
                raise self._refuse(frame, f"out of order (expected chunk {index} of seq {first.seq})")
            if frame.offset < offset or frame.offset + frame.values > wanted:
                raise self._refuse(frame, f"values {frame.offset}..{frame.offset + frame.values} do not follow "
                                   f"{offset} within a buffer of {wanted}")
            offset = frame.offset  # parts of a buffer may leave gaps (raytf.exchange.sharding's padding)
            codec = BY_ID.get(frame.codec)
            if codec is None:
                raise self._refuse(frame, f"unknown codec id {frame.codec}")
            plain = frame.values * codec.bytes_per_value
            if frame.length != plain + (TAG if self._open else 0) or frame.length > self.max_chunk_bytes:
                raise self._refuse(frame, f"a payload length of {frame.length} bytes for {frame.values} values "
                                   f"with codec {codec.name}")
            target = into[offset:offset + frame.values]
            self._receive_payload(frame, codec, target, destination[4 * offset:4 * (offset + frame.values)],
                                  deadline)
            wire_bytes += frame.length
            self.bytes_received += HEADER.size + frame.length
            if on_chunk is not None:
                on_chunk(frame, offset, offset + frame.values)
            offset += frame.values
            index += 1
            if index == frame.count:
                return Message(first.kind, first.seq, first.version, frame.count, wire_bytes)

    def _scratch_bytes(self, size: int) -> np.ndarray:
        if self._scratch is None or self._scratch.size < size:
            self._scratch = np.empty(max(size, 4 * self.chunk_values + TAG), np.uint8)
        return self._scratch[:size]

    def _receive_payload(self, frame: Frame, codec: type[Codec], target: np.ndarray, target_bytes: memoryview,
                         deadline: float | None) -> None:
        what = f"receiving chunk {frame.index + 1}/{frame.count}"
        if codec.id == 0 and self._open is None:
            self._io.recv_into(target_bytes, deadline, what)  # straight into the destination: no copy
            return
        header = bytes(self._header)  # before the payload's read: the AEAD's associated data
        payload = self._scratch_bytes(frame.length)
        self._io.recv_into(memoryview(payload), deadline, what)
        if self._open is not None:
            nonce = self._received_frames.to_bytes(12, "little")
            self._received_frames += 1
            payload = self._unseal(frame, header, nonce, payload, target_bytes if codec.id == 0 else None)
            if payload is None:
                return  # decrypted straight into the destination
        if frame.codec not in self._decoders:
            self._decoders[frame.codec] = codec(self.chunk_values)
        self._decoders[frame.codec].decode(payload, frame.scale, target)

    def _unseal(self, frame: Frame, header: bytes, nonce: bytes, sealed: np.ndarray,
                into: memoryview | None) -> np.ndarray | None:
        from cryptography.exceptions import InvalidTag

        try:
            if into is not None and hasattr(self._open, "decrypt_into"):
                self._open.decrypt_into(nonce, memoryview(sealed), header, into)
                return None
            plain = self._open.decrypt(nonce, memoryview(sealed), header)
        except InvalidTag:
            raise self._refuse(frame, "its seal does not verify (altered, replayed or another key)") from None
        if into is not None:
            into[:] = plain
            return None
        return np.frombuffer(plain, np.uint8)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed or reset
        self.sock.close()


def send_status(conn: Connection, status: int, version: int, dropped: bool, buffer: np.ndarray | None = None) -> None:
    """An answer's status frame (META; `status`, the index of its Status, goes as the frame's `seq`;
    [dropped, 0, 0, 0] as 4 float32 values), written by the connection's thread or a pipeline's.
    `buffer`: 4 float32 values to lay it in (the connection's own, reused)."""
    buffer = np.zeros(4, np.float32) if buffer is None else buffer
    buffer[:] = (dropped, 0, 0, 0)
    conn.send(META, status, version, buffer)


# -- the handshake -------------------------------------------------------------------------------

def _client_proof(secret: bytes, server_nonce: bytes, client_nonce: bytes, peer_id: int, encrypt: bool) -> bytes:
    return _derive(secret, b"raytf-wire-client", server_nonce, client_nonce, struct.pack("<q?", peer_id, encrypt))


def _server_proof(secret: bytes, server_nonce: bytes, client_nonce: bytes, peer_id: int, encrypt: bool) -> bytes:
    return _derive(secret, b"raytf-wire-server", client_nonce, server_nonce, struct.pack("<q?", peer_id, encrypt))


def _session_keys(secret: bytes, server_nonce: bytes, client_nonce: bytes) -> tuple[bytes, bytes]:
    """(client -> server, server -> client) keys: fresh per connection, one per direction."""
    return (_derive(secret, b"raytf-wire-c2s", server_nonce, client_nonce),
            _derive(secret, b"raytf-wire-s2c", server_nonce, client_nonce))


def _control(kind: int, payload: bytes) -> list[memoryview]:
    header = HEADER.pack(MAGIC, kind, 0, PROTOCOL, 0, 0, 0, 1, 0, 0, len(payload), 0.0)
    return [memoryview(header), memoryview(payload)]


def _read_control(io: _Waiter, kind: int, size: int, deadline: float) -> tuple[bytes | None, str]:
    """A handshake frame's payload, or None and the reason it is refused (one header read at most
    before a lying length is noticed: nothing of what it claims is read or allocated)."""
    header = bytearray(HEADER.size)
    io.recv_into(memoryview(header), deadline, "the handshake")
    magic, got_kind, _, protocol, *_, length, _ = HEADER.unpack(header)
    if magic != MAGIC or protocol != PROTOCOL or got_kind != kind:
        return None, "garbage"
    if length != size:
        return None, "lying_length"
    payload = bytearray(size)
    io.recv_into(memoryview(payload), deadline, "the handshake")
    return bytes(payload), ""


def connect(host: str, port: int, secret: bytes, peer_id: int, *, encrypt: bool = False,
            timeout: float = 10.0, alive: Callable[[], bool] = _always_alive, poll_seconds: float = 0.5,
            chunk_bytes: int = CHUNK_BYTES) -> Connection:
    """The worker's end: connect to a server's listener and prove the run's secret."""
    peer = f"server at {host}:{port}"
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as err:
        raise PeerGone(f"cannot connect to the {peer}: {err.strerror or err}") from None
    _tune(sock, poll_seconds)
    io = _Waiter(sock, peer, alive)
    try:
        challenge, _ = _read_control(io, KIND_CHALLENGE, CHALLENGE.size, deadline)
        if challenge is None:
            raise WireRefused(f"the {peer} does not speak raytf's wire protocol {PROTOCOL}.",
                              "Check the address the server announced, and run the same raytf version everywhere.")
        server_nonce, server_encrypts = CHALLENGE.unpack(challenge)
        if server_encrypts != encrypt:
            raise WireRefused(f"the {peer} {'encrypts' if server_encrypts else 'does not encrypt'} and this worker "
                              f"{'does' if encrypt else 'does not'}.",
                              "Give every actor of the run the same distribution.encrypt.")
        client_nonce = secrets.token_bytes(32)
        proof = _client_proof(secret, server_nonce, client_nonce, peer_id, encrypt)
        io.send(_control(KIND_HELLO, HELLO.pack(client_nonce, peer_id, encrypt, proof)), deadline, "the handshake")
        welcome, _ = _read_control(io, KIND_WELCOME, WELCOME.size, deadline)
    except PeerGone as err:
        sock.close()
        raise WireRefused(f"the {peer} hung up during the handshake ({err}): it does not hold this run's secret, "
                          "or it is not this run's server.",
                          "Use the secret and address the driver handed out for this run.") from None
    except (WireTimeout, WireRefused):
        sock.close()
        raise
    expected = _server_proof(secret, server_nonce, client_nonce, peer_id, encrypt)
    if welcome is None or not hmac.compare_digest(WELCOME.unpack(welcome)[0], expected):
        sock.close()
        raise WireRefused(f"the {peer} could not prove it holds this run's secret.",
                          "Something else listens at that address: check the address the server announced.")
    keys = _session_keys(secret, server_nonce, client_nonce) if encrypt else None
    return Connection(sock, peer, peer_id, keys=keys, alive=alive, chunk_bytes=chunk_bytes)


REFUSALS = ("wrong_secret", "no_secret", "garbage", "lying_length", "busy")


class WireListener:
    """The server's end: listens on `host` (the node's Ray address; port 0 picks one), authenticates
    each connection in its own thread and hands it to `on_peer(connection)` in that thread."""

    def __init__(self, host: str, secret: bytes, on_peer: Callable[[Connection], None], *, port: int = 0,
                 encrypt: bool = False, handshake_timeout: float = 5.0, poll_seconds: float = 0.5,
                 chunk_bytes: int = CHUNK_BYTES, max_handshakes: int = 32) -> None:
        self._secret, self._on_peer, self._encrypt = secret, on_peer, encrypt
        self._handshake_timeout, self._poll, self._chunk_bytes = handshake_timeout, poll_seconds, chunk_bytes
        self._handshakes = threading.BoundedSemaphore(max_handshakes)  # strangers cannot pile up threads
        self._changed = threading.Condition()
        self._refused = dict.fromkeys(REFUSALS, 0)
        self._logged: set[str] = set()
        self._accepted = 0
        self._conns: set[Connection] = set()
        self._closed = False
        self._listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port))
        self._listener.listen(64)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        threading.Thread(target=self._accept, name="raytf-wire-accept", daemon=True).start()

    @property
    def refused(self) -> dict[str, int]:
        with self._changed:
            return dict(self._refused)

    @property
    def accepted(self) -> int:
        with self._changed:
            return self._accepted

    def wait_for(self, predicate: Callable[[WireListener], bool], timeout: float) -> bool:
        """Block until `predicate(self)` holds (re-checked whenever a connection is accepted or refused)."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout)

    def _accept(self) -> None:
        while True:
            try:
                sock, address = self._listener.accept()
            except OSError:
                return  # closed
            if not self._handshakes.acquire(blocking=False):
                sock.close()
                self._count("busy", address)
                continue
            threading.Thread(target=self._handshake, args=(sock, address), name="raytf-wire-handshake",
                             daemon=True).start()

    def _count(self, reason: str, address) -> None:
        with self._changed:
            self._refused[reason] += 1
            first = reason not in self._logged
            self._logged.add(reason)
            self._changed.notify_all()
        if first:
            log.warning("raytf wire %s:%s: refused a connection from %s:%s (%s) before reading any data; training "
                        "goes on. Further refusals are counted, not logged.", self.address[0], self.address[1],
                        address[0], address[1], reason.replace("_", " "))

    def _handshake(self, sock: socket.socket, address) -> None:
        try:
            conn = self._authenticate(sock, address)
        finally:
            self._handshakes.release()
        if conn is None:
            return
        with self._changed:
            if self._closed:
                conn.close()
                return
            self._conns.add(conn)
            self._accepted += 1
            self._changed.notify_all()
        try:
            self._on_peer(conn)
        finally:
            with self._changed:
                self._conns.discard(conn)
            conn.close()

    def _authenticate(self, sock: socket.socket, address) -> Connection | None:
        peer = f"peer at {address[0]}:{address[1]}"
        _tune(sock, self._poll)
        io = _Waiter(sock, peer, _always_alive)
        deadline = time.monotonic() + self._handshake_timeout
        server_nonce = secrets.token_bytes(32)
        reason = "no_secret"  # what it is if the peer hangs up or stays silent before its proof is in
        try:
            io.send(_control(KIND_CHALLENGE, CHALLENGE.pack(server_nonce, self._encrypt)), deadline, "the handshake")
            hello, why = _read_control(io, KIND_HELLO, HELLO.size, deadline)
            reason = why or reason
            if hello is not None:
                client_nonce, peer_id, encrypt, proof = HELLO.unpack(hello)
                expected = _client_proof(self._secret, server_nonce, client_nonce, peer_id, encrypt)
                if not hmac.compare_digest(proof, expected) or encrypt != self._encrypt:
                    reason = "wrong_secret"
                else:
                    io.send(_control(KIND_WELCOME, WELCOME.pack(
                        _server_proof(self._secret, server_nonce, client_nonce, peer_id, encrypt))),
                        deadline, "the handshake")
                    keys = _session_keys(self._secret, server_nonce, client_nonce) if encrypt else None
                    # The server seals with the server->client key and opens with the other.
                    return Connection(sock, f"worker {peer_id} at {address[0]}:{address[1]}", peer_id,
                                      keys=(keys[1], keys[0]) if keys else None, chunk_bytes=self._chunk_bytes)
        except (PeerGone, WireTimeout):
            pass  # hung up or silent: `reason` says where
        sock.close()
        self._count(reason, address)
        return None

    def close(self) -> None:
        """Stop accepting and hang up on every peer (their waits raise PeerGone)."""
        with self._changed:
            self._closed = True
            conns, self._conns = list(self._conns), set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        for conn in conns:
            conn.close()


class Duplex:
    """The worker's end of a push and its reply: the gradient goes out on a sender thread while the
    caller receives the reply, so a server that streams chunk k back while k+1 arrives never waits
    on a worker that is still busy sending (and neither side's socket buffer must hold a whole
    message)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._job: tuple | None = None
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        threading.Thread(target=self._sender, name=f"raytf-wire-send-{conn.peer_id}", daemon=True).start()

    def _sender(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._job is not None or self._closed)
                if self._closed:
                    return
                job = self._job
            sent = False
            try:
                self.conn.send(*job)
                sent = True
            except (PeerGone, WireTimeout, OSError) as err:
                with self._cond:
                    self._error = err
            finally:
                if not sent:
                    self.conn.close()  # the receiving side sees it at once instead of at its deadline
                with self._cond:
                    self._job, self._busy = None, False
                    self._cond.notify_all()

    def exchange(self, seq: int, version: int, gradient: np.ndarray, into: np.ndarray, *, push_codec: str = "none",
                 feedback: ErrorFeedback | None = None, on_chunk: Callable[[Frame, int, int], None] | None = None,
                 deadline: float | None = None) -> Message:
        """Push `gradient` (sent from its own memory) and receive the reply into `into`."""
        for name, array in (("gradient", gradient), ("into", into)):
            if array.dtype != np.float32 or array.ndim != 1 or not array.flags.c_contiguous:
                raise TypeError(f"{name} must be a contiguous 1-D float32 buffer, not {array.dtype} {array.shape}")
        self.conn._encoder(push_codec)  # an unknown codec is a ConfigError here, not a dead sender thread
        with self._cond:
            if self._busy:
                raise RuntimeError("Duplex.exchange called again before the last one returned")
            self._busy, self._error = True, None
            self._job = (PUSH, seq, version, gradient, push_codec, feedback, deadline)
            self._cond.notify_all()
        try:
            reply = self.conn.receive(into, on_chunk, deadline, kinds=(REPLY,))
        except (PeerGone, WireTimeout, WireProtocolError):
            self.conn.close()  # unusable now: a half-sent or half-read message cannot be resumed
            with self._cond:
                self._cond.wait_for(lambda: not self._busy)
                if isinstance(self._error, PeerGone):
                    raise self._error from None  # the send saw it first: its message says more
            raise
        with self._cond:
            self._cond.wait_for(lambda: not self._busy)  # the push is out when its reply is complete
            if self._error is not None:
                raise self._error
        return reply

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self.conn.close()


__all__ = ["CHUNK_BYTES", "PUSH", "REPLY", "ROWS", "Connection", "Duplex", "Frame", "Message", "PeerGone",
           "WireListener", "WireProtocolError", "WireRefused", "WireTimeout", "connect", "new_secret"]
