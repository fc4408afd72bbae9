"""Sync rounds on the wire, applied and answered piece by piece (BytePS's pipelining).

Without it a sync server receives every worker's whole gradient, then applies, then sends the
parameters back: on a link of its own the two directions take turns. Here the shard is in pieces
(`raytf.exchange.optimizers.PiecedOptimizer`); the wire's receive calls `arrived` after each chunk,
and as soon as every worker of the round has sent piece j, the pipeline's thread updates piece j
(the mean of their piece j) and streams its new values to every worker of the round, while their
later chunks still arrive: the receiving threads only read their sockets (the chunk that ends a push
updates what is still due on its own thread, so the round is served with all of it applied). Both
directions of the link and both the server's receive and update work at once. The round's status
frame follows its last piece, sent by whichever of the two threads is done last.

The round is still the exchange's (`raytf.exchange.Exchange` with the sync policy): each worker's
push goes through it when its bytes are in, as over the doorbell, and the policy completes the round
(version, staleness, checkpoint) with the dense part already applied (`applied_round`). The answer
is the parameters' pieces first, then the round's status and rows (the worker reads them in that
order, `raytf.exchange.wire_link.WireBell`).

Everything here runs under the exchange's lock and waits on its condition, so a piece update never
races a checkpoint, a stop or a removal. Faults:
* a worker removed mid-round (it died) is no longer waited for: the pieces not yet applied are the
  mean of the others' (the ones applied already had its part, as a backup-workers round would not);
* an abort (a rollback) or a stop in the middle of a round sends the pieces not applied as they are,
  so every answer is whole, and the exchange answers ROLLBACK or DONE as always;
* the exchange refuses to stop at the version a round is part-way through (`Exchange.partial_round`).
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import numpy as np

from raytf.exchange.codecs import PullMirror, make_codec
from raytf.exchange.optimizers import PiecedOptimizer
from raytf.exchange.wire import REPLY, Connection, PeerGone, WireProtocolError, WireTimeout, send_status

PIECE_VALUES = 1 << 18  # 1 MB pieces: a 7.45 MB gradient in 8, each SGD update (numpy) a fraction of a millisecond
COMPILED_PIECE_VALUES = 1 << 20  # 4 MB (BytePS's) for the other optimizers: a compiled call each


def piece_values(optimizer: str) -> int:
    return PIECE_VALUES if optimizer == "sgd" else COMPILED_PIECE_VALUES


class Pipeline:
    """The pipelined rounds of one server's wire workers."""

    def __init__(self, exchange, opt: PiecedOptimizer, gradient: Callable[[int], np.ndarray],
                 members: Callable[[], set[int] | None], pull_codec: str = "none") -> None:
        """`gradient(worker)`: the buffer its push is received into; `members()` (under the lock):
        the workers of the round being built, or None when it cannot be pipelined (one of them is
        not on the wire)."""
        self.exchange = exchange
        self.cond = exchange.cond  # the exchange's lock and condition
        self.opt = opt
        self._gradient = gradient
        self._members = members
        self.piece_values = max(b - a for a, b in opt.bounds)
        # pull int8: each worker's pieces are changes from its own buffer (its connection's PullMirror);
        # else a piece is encoded once for all of them, by the sender thread's codec.
        self._mirrored = pull_codec == "int8"
        self._codec = None if self._mirrored else make_codec(pull_codec, self.piece_values)
        self.seconds_apply = 0.0  # the piece updates' time, taken into the server's apply time
        self.pipelined: set[int] = set()  # workers whose last push went this way
        self._rounds = 0  # rounds answered
        self._closed = False
        # worker -> (connection, status, version, dropped): its answer's status frame, sent by the sender
        # thread right after the round's last piece (one wake-up less than the receiving thread sending it).
        self._statuses: dict[int, tuple[Connection, int, int, bool]] = {}
        self._new_round()
        threading.Thread(target=self._send, name="raytf-wire-pipeline", daemon=True).start()

    def _new_round(self) -> None:
        self._expected: set[int] | None = None  # the workers of the round in flight (None: none)
        self._base = -1  # the version it is computed on
        self._received: dict[int, int] = {}  # worker -> values of its gradient in
        # worker -> the finite gradients its buffer sums: 0 (none to apply), 1, or a node's leader's several
        self._summed: dict[int, int] = {}
        self._via: dict[int, int] = {}  # worker -> the leader whose push carries its gradient (raytf.exchange.local_reduce)
        self._conns: dict[int, Connection] = {}
        self._mirrors: dict[int, PullMirror | None] = {}
        self._applied = 0  # pieces updated
        self._sent = 0  # pieces sent to every worker of the round

    # -- the connections' threads ------------------------------------------------------------------

    def begin(self, worker: int, conn: Connection, finite: bool, base_version: int,
              mirror: PullMirror | None = None, summed: int = 1, carried=()) -> int | None:
        """A push of `worker` starts (its meta frame is in): the round it belongs to (to wait for
        with `wait_answered`), or None when this push goes the usual way (not part of a pipelined
        round: the round cannot be, or it came too late for it). `mirror`: its connection's, with
        pull int8. A node's leader's push sums `summed` finite gradients and carries the pushes of
        the workers `carried` (whose bytes are its bytes)."""
        with self.cond:
            ex = self.exchange
            if self._closed or self._halted():
                self.pipelined.discard(worker)
                return None  # the exchange answers it at once; pieces may be on their way to the others
            if self._expected is None and base_version == ex.version:
                members = self._members()
                if members is not None and worker in members:
                    self._expected, self._base = set(members), ex.version
            if self._expected is None or worker not in self._expected or worker in self._conns \
                    or base_version != self._base:
                self.pipelined.discard(worker)
                return None
            self.pipelined.add(worker)
            self._conns[worker] = conn
            self._mirrors[worker] = mirror
            self._summed[worker] = summed if finite else 0
            self._received[worker] = 0 if finite else self.opt.size
            for other in carried:
                if other in self._expected:
                    self._via[other] = worker
            self._advance()
            self.cond.notify_all()
            return self._rounds

    def arrived(self, worker: int, values: int, last: bool = False) -> None:
        """The first `values` of `worker`'s gradient are in (the wire's callback after each chunk).
        While the bytes stream in, the sender thread updates the pieces they complete, so that this
        (the receiving) thread goes straight back to the socket; on the `last` call it updates what
        is still due itself, so that the round's push is served with every piece it can apply applied."""
        with self.cond:
            if worker in self._received:
                self._received[worker] = values
                if last:
                    self._advance()
                elif self._piece_ready():
                    self.cond.notify_all()

    def wait_answered(self, round_: int) -> None:
        """Until every piece of `round_` went out (the answer's parameters) and the round is over."""
        with self.cond:
            self.cond.wait_for(lambda: self._rounds > round_ or self._closed)

    def answer_after(self, round_: int, worker: int, conn: Connection, status: int, version: int,
                     dropped: bool) -> bool:
        """Have the sender thread send `worker`'s status frame (META) as soon as `round_`'s last
        piece is out, so that the receiving thread goes back to its socket at once. False when the
        round is answered already (or the pipeline closed): the caller sends it."""
        with self.cond:
            if self._rounds > round_ or self._closed:
                return False
            self._statuses[worker] = (conn, status, version, dropped)
            return True

    # -- the driver's calls (through the server) ---------------------------------------------------

    def remove(self, worker: int) -> None:
        """`worker` died: the round in flight does not wait for the rest of its gradient."""
        with self.cond:
            self.pipelined.discard(worker)  # its restarted process's first answer is a pull's
            if self._expected is not None and worker in self._expected:
                # A leader's carried workers go with it (their bytes were its bytes); a carried worker's
                # gradient stays in its leader's sum.
                for gone in [worker, *(w for w, leader in self._via.items() if leader == worker)]:
                    self._expected.discard(gone)
                    self._received.pop(gone, None)
                    self._conns.pop(gone, None)
                    self._via.pop(gone, None)
                self._advance()
                self.cond.notify_all()

    def pulled(self, worker: int) -> None:
        """`worker` pulls (a Ray call, whose answer carries the parameters): not answered by pieces."""
        with self.cond:
            self.pipelined.discard(worker)

    def applied_round(self, workers: list[int]) -> bool:
        """Under the lock, as the exchange applies the round of `workers`' gradients: its dense part
        was applied piece by piece (a round whose every worker died half-way is not this one)."""
        return bool(self._expected) and self._applied == len(self.opt.bounds) and set(workers) <= self._expected

    def close(self) -> None:
        with self.cond:
            self._closed = True
            self.cond.notify_all()

    # -- inside ------------------------------------------------------------------------------------

    def _piece_ready(self) -> bool:
        """Whether the next piece is due for its update: every worker of the round has sent it (lock held)."""
        if self._expected is None or self._applied == len(self.opt.bounds) or self._halted():
            return False
        end = self.opt.bounds[self._applied][1]
        return all(self._received.get(self._via.get(w, w), -1) >= end for w in self._expected)

    def _advance(self) -> None:
        """Update every piece that every worker of the round has sent (lock held)."""
        while self._piece_ready():
            self._update_next()

    def _update_next(self) -> None:
        """Update the next piece, whose bytes every worker of the round has sent (lock held)."""
        pushers = [w for w in sorted(self._expected) if w not in self._via and self._summed.get(w)]
        grads = [self._gradient(w) for w in pushers]
        started = time.perf_counter()
        if grads:  # none finite: the version moves on with nothing applied, as without the pipeline
            self.opt.apply_piece(self._applied, grads, sum(self._summed[w] for w in pushers))
            self.exchange.partial_round = True
        self.seconds_apply += time.perf_counter() - started
        self._applied += 1
        self.cond.notify_all()

    def _halted(self) -> bool:
        return self.exchange.aborted or self.exchange.stopped

    def _send_due(self) -> bool:
        if self._closed:
            return True
        if self._expected is None:
            return False
        pieces = len(self.opt.bounds)
        if self._sent < pieces:  # applied ones; or all, as they are, once no more will be applied
            return self._sent < self._applied or self._halted() or self._piece_ready()
        # Answered: the round is over (or every worker of it died: nobody to answer, and it never completes).
        return self.exchange.version > self._base or self._halted() or not self._expected

    def _send(self) -> None:
        """The sender thread: each applied piece to every worker of the round, in order."""
        with self.cond:
            while True:
                self.cond.wait_for(self._send_due)
                if self._closed:
                    self._send_statuses()
                    return
                if self._sent == len(self.opt.bounds):
                    self._new_round()
                    self._rounds += 1
                    self.cond.notify_all()
                    self._send_statuses()  # after the new round is set up: a worker may push again at once
                    continue
                if self._sent == self._applied and not self._halted():
                    self._update_next()  # its bytes are in (`_send_due`): update it here, then send it
                    continue
                j, version = self._sent, self._base + 1
                conns = [(worker, conn, self._mirrors.get(worker)) for worker, conn in self._conns.items()]
                view = self.opt.piece_view(j)
                self.cond.release()  # a send may wait for the link: others' chunks go on meanwhile
                try:
                    failed = self._send_piece(j, view, conns, version)
                finally:
                    del view  # a view held over the next update would make it copy the buffer
                    self.cond.acquire()
                for worker in failed:
                    self._conns.pop(worker, None)
                self._sent += 1
                self.cond.notify_all()

    def _send_statuses(self) -> None:
        """The status frames `answer_after` left for this thread (lock held; released while sending)."""
        statuses, self._statuses = self._statuses, {}
        if not statuses:
            return
        self.cond.release()
        try:
            for conn, status, version, dropped in statuses.values():
                try:
                    send_status(conn, status, version, dropped)
                except (PeerGone, WireTimeout, WireProtocolError):
                    pass  # it died: its receiving thread ends, the driver removes it
        finally:
            self.cond.acquire()

    def _send_piece(self, j: int, view: np.ndarray, conns: list, version: int) -> list[int]:
        """Piece `j` to every worker: encoded once (the pull codec), sent to each; with pull int8,
        encoded for each worker's buffer."""
        start = self.opt.bounds[j][0]
        if not self._mirrored:
            payload, scale = self._codec.encode(view)
            codec_id = self._codec.id
        failed = []
        for worker, conn, mirror in conns:
            if self._mirrored:
                codec_id, payload, scale = mirror.encode(start, view)
            try:
                conn.send_encoded(REPLY, 0, version, j, len(self.opt.bounds), start, view.size, codec_id,
                                  payload, scale)
            except (PeerGone, WireTimeout, WireProtocolError):
                failed.append(worker)  # it died: its connection's thread ends, the driver removes it
        return failed
