"""A training step's push and answer over the cross-node wire (raytf.exchange.wire).

The doorbell (raytf.exchange.doorbell) rings a server on the worker's own node, where gradient,
parameters and rows already sit in shared slots. Across nodes there is no shared memory, so the
same exchange carries its bytes: per push, in order, on the pair's one connection:

    worker -> server   META   seq: steps done, version: base version; [loss, has loss, finite, carried]
                       CARRIED  (when `carried` > 0: a node's summed push, raytf.exchange.local_reduce)
                              per worker whose gradient the push sums: [worker, steps, finite, has loss, loss]
                       PUSH   the dense gradient (when finite and the shard has a dense part),
                              compressed by `distribution.compression.push` (int8 with error feedback)
                       ROWS   per sparse table: the row slot's counts, then the pushed ids and rows
                              and the wanted ids, only as many as the counts say (never compressed)
    server -> worker   META   seq: status, version: the version; [dropped, 0, 0, 0]
                       REPLY  the parameters (unless ROLLBACK), compressed by `compression.pull`
                              (int8: their change from the worker's buffer, raytf.exchange.codecs.PullMirror)
                       ROWS   per table, the rows asked for

Both ends receive into buffers that exist for the whole run: the server into the worker's gradient
buffer and row slot (raytf.exchange.transport keeps them, as it keeps the shared slots), the worker
into one of two parameter buffers (its step may still read the other) and its row slot. The server
serves each connection on the listener's thread for it, running the same `push` as a Ray call or
the doorbell, so every policy, the trace and the metrics behave the same.

Faults: a worker that dies resets or closes its connection (the server's thread ends; the driver
drops the worker as before); a server that dies does the same to its workers, whose `answer` (or
`ring`) raises the doorbell's `ServerGone`, handled like Ray's actor-died error.
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING, Callable

import numpy as np

from raytf.errors import ClusterError
from raytf.exchange import Reply, Status
from raytf.exchange.codecs import ErrorFeedback, PullMirror
from raytf.exchange.doorbell import ServerGone
from raytf.exchange.row_slots import RowSlot
from raytf.exchange.wire import (
    CARRIED,
    META,
    PUSH,
    REPLY,
    ROWS,
    Connection,
    PeerGone,
    WireProtocolError,
    WireTimeout,
    connect,
    send_status,
)
from raytf.runtime import aligned_zeros

if TYPE_CHECKING:
    from raytf.exchange.pipeline import Pipeline

CARRIED_FIELDS = 5  # per worker: index, steps done, finite, has loss, loss
_STATUSES = list(Status)


def _ids(array: np.ndarray) -> np.ndarray:
    """int64 ids as the float32 values the wire carries (their bytes, unchanged)."""
    return array.view(np.float32)


def _counts(slot: RowSlot) -> np.ndarray:
    return slot.counts.reshape(-1).view(np.float32)


class Parts:
    """A gradient handed over as its variables' arrays at their offsets of the flat buffer (views of
    the step's outputs, valid until the next step: the push is sent before it)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.parts: list[tuple[int, np.ndarray]] = []

    def set(self, parts, offsets) -> None:
        self.parts = [(offset, np.asarray(part).reshape(-1)) for part, offset in zip(parts, offsets)]


Serve = Callable[[int, int, int, "float | None", bool], Reply]  # worker, base version, steps, loss, finite
Carry = Callable[[int, int, np.ndarray], None]  # leader, base version, its push's CARRIED rows (its own first)
Buffers = Callable[[int], "tuple[np.ndarray, RowSlot | None] | None"]
Published = Callable[[int], "np.ndarray | None"]


def serve_connection(conn: Connection, buffers: Buffers, serve: Serve, published: Published,
                     pull_codec: str = "none", pipeline: "Pipeline | None" = None, carry: Carry | None = None) -> None:
    """The server's end of one worker's connection, until it closes: receive a push into the
    worker's buffers, `serve` it (the exchange's push, which may wait at a barrier), send the answer:
    the parameters `published(worker)` gives (taken once; dropped once sent) and the rows asked for.
    `buffers(worker)` gives the worker's (gradient, row slot), or None if this server does not
    expect it on the wire (then the connection is closed). With a `pipeline` (sync rounds of wire
    workers, raytf.exchange.pipeline), a push it takes has its gradient applied piece by piece as
    it arrives and the parameters sent by the pipeline's thread before the status. A push that
    sums several workers' gradients (a node's leader, raytf.exchange.local_reduce) says whom it
    carries: `carry` registers the others' pushes before the leader's own is served."""
    worker = conn.peer_id
    found = buffers(worker)
    if found is None:
        conn.close()  # authenticated, but not a worker this server has a wire link to (a stale process)
        return
    grad, slot = found
    meta = np.zeros(4, np.float32)
    counts = _counts(slot) if slot is not None else None
    # pull int8: the worker's two parameter buffers as this end knows them (the gradient buffer has
    # the parameters' size); the pipeline's pieces may be larger than the wire's chunks.
    mirror = PullMirror(grad.size, max(conn.chunk_values, pipeline.piece_values if pipeline else 0)) \
        if pull_codec == "int8" else None
    try:
        while True:
            message = conn.receive(meta, kinds=(META,))
            loss, has_loss, finite = float(meta[0]), bool(meta[1]), bool(meta[2])
            carried = None
            if meta[3] > 0:
                carried = np.zeros((int(meta[3]), CARRIED_FIELDS), np.float32)
                conn.receive(carried.reshape(-1), kinds=(CARRIED,))
            # The buffer holds a gradient if any worker of the push had a finite one: its own is row 0.
            summed = int(carried[:, 2].sum()) if carried is not None else int(finite)
            round_ = pipeline.begin(worker, conn, summed > 0 and grad.size > 0, message.version, mirror,
                                    summed=summed, carried=() if carried is None else carried[1:, 0].astype(int)) \
                if pipeline else None
            if summed and grad.size:
                if round_ is None:
                    conn.receive(grad, kinds=(PUSH,))
                else:
                    conn.receive(grad, lambda frame, start, stop: pipeline.arrived(worker, stop), kinds=(PUSH,))
                    pipeline.arrived(worker, grad.size, last=True)  # the padding after the last variable never travels
            if slot is not None:
                conn.receive(counts, kinds=(ROWS,))
                for k, (pushed, wanted) in enumerate(slot.counts):
                    if pushed:
                        conn.receive(_ids(slot.pushed_ids[k][:pushed]), kinds=(ROWS,))
                        conn.receive(slot.pushed_rows[k][:pushed].reshape(-1), kinds=(ROWS,))
                    if wanted:
                        conn.receive(_ids(slot.wanted_ids[k][:wanted]), kinds=(ROWS,))
            if carried is not None and carry is not None:
                carry(worker, message.version, carried)
            reply = serve(worker, message.version, message.seq, loss if has_loss else None, finite)
            status = _STATUSES.index(reply.status)
            if round_ is not None and slot is None and mirror is None \
                    and pipeline.answer_after(round_, worker, conn, status, reply.version, reply.dropped):
                continue  # the pipeline's thread sends the status after the last piece; nothing follows it
            if round_ is not None:
                pipeline.wait_answered(round_)  # its parameters are out, piece by piece
            send_status(conn, status, reply.version, reply.dropped, meta)
            if reply.status is Status.ROLLBACK:
                if mirror is not None:
                    mirror.forget()
                continue
            params = published(worker) if round_ is None else None
            if params is not None and params.size:
                _send_params(conn, message.seq, reply.version, params, pull_codec, mirror)
            del params  # a live view of the parameters would make the next update copy them first
            if mirror is not None:
                mirror.answered()
            if slot is not None:
                for k, wanted in enumerate(slot.counts[:, 1]):
                    if wanted:
                        conn.send(ROWS, message.seq, reply.version, slot.sent_rows[k][:wanted].reshape(-1))
    except (PeerGone, WireTimeout, WireProtocolError):
        return  # the worker died or hung up (the listener closes the connection)


def _send_params(conn: Connection, seq: int, version: int, params: np.ndarray, codec: str,
                 mirror: PullMirror | None) -> None:
    if mirror is None:
        conn.send(REPLY, seq, version, params, codec=codec)
        return
    step = conn.chunk_values
    count = -(-params.size // step)
    for index, start in enumerate(range(0, params.size, step)):
        chunk = params[start:start + step]
        codec_id, payload, scale = mirror.encode(start, chunk)
        conn.send_encoded(REPLY, seq, version, index, count, start, chunk.size, codec_id, payload, scale)


def open_bell(address: tuple[str, int], secret: bytes, worker: int, gradient: "Parts", size: int,
              rows: RowSlot | None, *, encrypt: bool = False, push_codec: str = "none", where: str = "",
              params: np.ndarray | None = None) -> "WireBell":
    """Connect worker `worker` to a server's wire at `address`; a server it cannot reach is a
    ClusterError that says what to allow (or to do without the wire)."""
    try:
        conn = connect(address[0], address[1], secret, worker, encrypt=encrypt)
    except PeerGone as err:
        raise ClusterError(
            f"worker {worker}{f' on {where}' if where else ''} cannot reach its parameter server's wire: {err}.",
            "Allow TCP between the cluster's nodes (pods) on any port, as Ray's own workers need it (a "
            "NetworkPolicy, a firewall); or set distribution.transport: object_store to go through Ray's "
            "object store instead.") from None
    return WireBell(conn, gradient, size, rows, push_codec, params)


class WireBell:
    """A worker's end of one server's wire: rung like a doorbell (`ring`, then `answer`), with the
    gradient sent from the step's own outputs (the parts the link was handed: `Parts`) and the rows
    from the link's row slot.

    The answer is received by a thread of its own from the moment the push is out: where the
    worker computes its next step meanwhile (async, ssp), the parameters arrive during that step
    instead of after it (the kernel's socket buffer holds only part of them, so the server's send
    would otherwise wait for the worker's `answer`)."""

    def __init__(self, conn: Connection, gradient: "Parts", size: int, rows: RowSlot | None,
                 push_codec: str = "none", params: np.ndarray | None = None) -> None:
        """`params`: the buffers (shape (n, size)) the answers land in, in turn, when they are not this
        process's own (a node's leader: the slot its node's workers read, raytf.exchange.local_reduce)."""
        self.conn = conn
        self._gradient = gradient
        self._rows = rows
        self._push_codec = push_codec
        # What int8 leaves out of a gradient is added to the next one (bf16 rounds to nearest: none kept).
        self.feedback = ErrorFeedback(size) if push_codec == "int8" else None
        # The step may read one while the other fills.
        self._params = list(params) if params is not None else [aligned_zeros(size), aligned_zeros(size)]
        self._next = 0
        self.half = 0  # which of the two the last answer's parameters are in
        self._sent_meta = np.zeros(4, np.float32)
        self._received_meta = np.zeros(4, np.float32)
        self._cond = threading.Condition()
        self._waiting = False  # a push is out and its answer not received yet
        self._answer: Reply | BaseException | None = None
        self._closed = False
        # Called on the receiving thread with each answer received whole, before `answer` returns it:
        # a node's leader relays it to its members from here (raytf.exchange.local_reduce).
        self.on_answer: Callable[[Reply], None] | None = None
        threading.Thread(target=self._receiver, name=f"raytf-wire-answer-{conn.peer_id}", daemon=True).start()

    @property
    def gradient(self) -> Parts:
        """The parts of the step's gradient this end was handed (views of the step's outputs)."""
        return self._gradient

    def ring(self, base_version: int, steps_done: int, loss: float | None, finite: bool,
             carried: np.ndarray | None = None, parts: list | None = None, before=None) -> None:
        """Send the push: the gradient is in the parts handed over, the rows in the row slot. A node's
        leader sends the `parts` of its node's sum instead (made chunk by chunk by `before`, see
        `Connection.send_parts`), with the `carried` rows of whom it sums (raytf.exchange.local_reduce:
        its own first)."""
        self._sent_meta[:] = (math.nan if loss is None else loss, loss is not None, finite,
                              0 if carried is None else len(carried))
        has_gradient = finite if carried is None else bool(carried[:, 2].any())
        try:
            self.conn.send(META, steps_done, base_version, self._sent_meta)
            if carried is not None:
                self.conn.send(CARRIED, steps_done, base_version, carried.reshape(-1))
            if has_gradient and self._gradient.size:
                self.conn.send_parts(PUSH, steps_done, base_version, parts or self._gradient.parts,
                                     codec=self._push_codec, feedback=self.feedback, before=before)
            slot = self._rows
            if slot is not None:
                self.conn.send(ROWS, steps_done, base_version, _counts(slot))
                for k, (pushed, wanted) in enumerate(slot.counts):
                    if pushed:
                        self.conn.send(ROWS, steps_done, base_version, _ids(slot.pushed_ids[k][:pushed]))
                        self.conn.send(ROWS, steps_done, base_version, slot.pushed_rows[k][:pushed].reshape(-1))
                    if wanted:
                        self.conn.send(ROWS, steps_done, base_version, _ids(slot.wanted_ids[k][:wanted]))
        except (PeerGone, WireTimeout, WireProtocolError) as err:
            raise ServerGone(str(err)) from None
        with self._cond:
            self._waiting, self._answer = True, None
            self._cond.notify_all()

    def answer(self) -> Reply:
        """Wait for the answer to the last ring: the parameters land in a buffer of this end (the
        reply's payload), the rows in the row slot (read with `rows_sent`)."""
        with self._cond:
            self._cond.wait_for(lambda: self._answer is not None)
            answer, self._answer = self._answer, None
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def _receiver(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._waiting or self._closed)
                if self._closed:
                    return
            try:
                answer: Reply | BaseException = self._receive()
            except (PeerGone, WireTimeout, WireProtocolError) as err:
                answer = ServerGone(str(err))
            if self.on_answer is not None and isinstance(answer, Reply):
                self.on_answer(answer)
            with self._cond:
                self._waiting, self._answer = False, answer
                self._cond.notify_all()

    def _receive(self) -> Reply:
        params = self._params[self._next]
        message = self.conn.receive({META: self._received_meta, REPLY: params})
        received = message.kind == REPLY  # a pipelined round's answer: the parameters come first
        if received:
            message = self.conn.receive(self._received_meta, kinds=(META,))
        status = _STATUSES[message.seq]
        dropped = bool(self._received_meta[0])
        if status is Status.ROLLBACK:
            return Reply(status, message.version, None, dropped)
        if params.size and not received:
            self.conn.receive(params, kinds=(REPLY,))
        self.half, self._next = self._next, (self._next + 1) % len(self._params)
        slot = self._rows
        if slot is not None:
            for k, wanted in enumerate(slot.counts[:, 1]):
                if wanted:
                    self.conn.receive(slot.sent_rows[k][:wanted].reshape(-1), kinds=(ROWS,))
        return Reply(status, message.version, params, dropped)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self.conn.close()
