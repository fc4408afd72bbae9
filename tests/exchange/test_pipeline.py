"""Sync rounds on the wire applied and answered piece by piece (raytf.exchange.pipeline), in one
process with threads over real wire connections: the sync exchange, a pieced SGD shard, the
connection's server end and WireBells. Worker 1 is driven frame by frame where a test needs a
round caught half-way: piece 0 is applied and sent while its later chunks are still to come; a
worker removed half-way leaves the rest of the round to the others; an abort or a stop half-way
answers every worker whole."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from raytf.config import OptimizerConfig
from raytf.exchange import Exchange, Push, Reply, Status, make_policy
from raytf.exchange.optimizers import FlatOptimizer, PiecedOptimizer
from raytf.exchange.pipeline import Pipeline
from raytf.exchange.wire import PUSH, REPLY, WireListener, connect
from raytf.exchange.wire_link import META, Parts, WireBell, serve_connection
from raytf.runtime import aligned_zeros

SECRET = b"p" * 32
PIECE = 16_384  # values: 64 KB pieces, as the chunks
SIZE = 5 * PIECE
RATE = 0.5
DEADLINE = 30.0


class Server:
    """One shard of 5 pieces for workers 0 and 1, pipelined."""

    def __init__(self, initial: np.ndarray, pull_codec: str = "none") -> None:
        self.pull_codec = pull_codec
        self.opt = PiecedOptimizer(OptimizerConfig(name="sgd", learning_rate=RATE), initial, piece=PIECE)
        self.grads = {w: aligned_zeros(SIZE) for w in (0, 1)}
        self.whole_updates = 0  # rounds applied as a whole (not piece by piece)
        self.exchange = Exchange(make_policy("sync", 2), self, workers=2, target=100)
        self.all_wire = True  # False: as if a worker were on shared memory (rounds are not pipelined)
        self.pipeline = Pipeline(self.exchange, self.opt, lambda w: self.grads[w],
                                 lambda: self.exchange.policy.required(self.exchange) if self.all_wire else None,
                                 pull_codec)
        self.listener = WireListener("127.0.0.1", SECRET, self._serve, chunk_bytes=4 * PIECE)

    # the exchange's backend
    def apply(self, grads) -> None:
        workers = [w for w, g in self.grads.items() if any(g is x for x in grads)]
        if not self.pipeline.applied_round(workers):
            self.whole_updates += 1
            self.opt.apply_mean(grads)

    def publish(self, version, worker) -> None:
        pass  # every worker here is answered by the pipeline

    def checkpoint(self, version) -> None:
        pass

    def _serve(self, conn) -> None:
        serve_connection(conn, lambda w: (self.grads[w], None), self._push, lambda w: self.opt.params_view(),
                         self.pull_codec, self.pipeline)

    def _push(self, worker, base, steps, loss, finite) -> Reply:
        outcome = self.exchange.push(Push(worker, base, steps, loss, finite), self.grads[worker] if finite else None)
        return Reply(outcome.status, outcome.version, 0, outcome.dropped)

    def remove(self, worker: int) -> None:  # as ParameterServer.remove_worker
        self.pipeline.remove(worker)
        self.exchange.remove(worker)

    def wait(self, predicate) -> None:
        with self.pipeline.cond:
            assert self.pipeline.cond.wait_for(predicate, DEADLINE)


def worker_bell(server: Server, worker: int, gradient: np.ndarray) -> WireBell:
    parts = Parts(SIZE)
    parts.set([gradient], (0,))
    conn = connect(*server.listener.address, SECRET, worker, chunk_bytes=4 * PIECE)
    return WireBell(conn, parts, SIZE, None)


class ByHand:
    """A worker (1 unless said) sending its push one chunk at a time (4 values of meta, then chunks of a piece)."""

    def __init__(self, server: Server, gradient: np.ndarray, worker: int = 1) -> None:
        self.conn = connect(*server.listener.address, SECRET, worker, chunk_bytes=4 * PIECE)
        self.gradient = gradient

    def start(self, base_version: int = 0) -> None:
        self.conn.send(META, 1, base_version, np.array([0.5, 1, 1, 0], np.float32))

    def chunks(self, first: int, stop: int) -> None:
        for j in range(first, stop):
            self.conn.send_chunk(PUSH, 1, 0, j, SIZE // PIECE, j * PIECE, self.gradient[j * PIECE:(j + 1) * PIECE])

    def answer(self) -> tuple[Status, np.ndarray | None]:
        """The status and, where the answer starts with them (a pipelined round's), the parameters."""
        params, meta = aligned_zeros(SIZE), np.zeros(4, np.float32)
        message = self.conn.receive({META: meta, REPLY: params})
        if message.kind != REPLY:
            return list(Status)[message.seq], None
        message = self.conn.receive(meta, kinds=(META,))
        return list(Status)[message.seq], params


def answer_in_thread(bell: WireBell) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.append(bell.answer()), daemon=True)
    thread.start()
    return thread, out


def whole_update(initial: np.ndarray, grads: list[np.ndarray]) -> np.ndarray:
    """The same round by the whole-shard numpy SGD update."""
    reference = FlatOptimizer(OptimizerConfig(name="sgd", learning_rate=RATE), initial.copy())
    reference.apply_mean(grads)
    return reference.params_view()


@pytest.fixture
def setup():
    rng = np.random.default_rng(7)
    initial = rng.standard_normal(SIZE, dtype=np.float32)
    grads = [rng.standard_normal(SIZE, dtype=np.float32) for _ in range(2)]
    server = Server(initial)
    yield server, initial, grads
    server.pipeline.close()
    server.listener.close()


def test_piece_zero_is_applied_and_sent_before_the_rest_of_the_round_arrives(setup):
    server, initial, grads = setup
    bell = worker_bell(server, 0, grads[0])
    by_hand = ByHand(server, grads[1])
    bell.ring(0, 1, 0.5, True)  # worker 0's whole gradient
    by_hand.start()
    by_hand.chunks(0, 1)  # worker 1's first piece only
    server.wait(lambda: server.pipeline._sent >= 1)
    assert server.pipeline._applied == 1, "only the piece both workers have sent is applied"
    assert server.exchange.partial_round
    assert server.exchange.set_target(0) is False, "no stop at a version part of whose next round is applied"
    by_hand.chunks(1, SIZE // PIECE)
    status, params = by_hand.answer()
    reply = bell.answer()
    expected = whole_update(initial, grads)
    assert status is Status.OK and reply.status is Status.OK and reply.version == 1
    assert params is not None, "a pipelined answer starts with the parameters"
    np.testing.assert_array_equal(params, expected)  # exactly the whole update, piece by piece
    np.testing.assert_array_equal(reply.payload, expected)
    np.testing.assert_array_equal(server.opt.params_view(), expected)
    assert server.whole_updates == 0 and server.exchange.version == 1 and not server.exchange.partial_round


def test_the_pipelines_thread_updates_the_pieces_as_they_stream_in_and_the_status_comes_last(setup):
    """While a push's chunks arrive, the pieces they complete are updated on the pipeline's thread,
    so the connection's thread goes straight back to its socket; the chunk that ends the push leaves
    nothing due when the round is served (no whole update follows). The status frame follows the
    last piece on every connection (the pipeline's thread sends it when the round is served before
    its last piece is out, else the connection's thread)."""
    server, initial, grads = setup
    pieces = SIZE // PIECE
    applied_on, sent = [], {}
    apply_piece = server.opt.apply_piece

    def recording_apply(j, *args):
        applied_on.append((j, threading.current_thread().name))
        apply_piece(j, *args)

    server.opt.apply_piece = recording_apply
    bell = worker_bell(server, 0, grads[0])
    by_hand = ByHand(server, grads[1])
    bell.ring(0, 1, 0.5, True)
    deadline = time.monotonic() + DEADLINE
    while server.exchange._pushes < 1:  # worker 0's push is in (at the barrier; a chunk wakes nobody): nothing due yet
        assert time.monotonic() < deadline, "worker 0's push never reached the exchange"
        time.sleep(0.01)
    by_hand.start()
    server.wait(lambda: len(server.pipeline._conns) == 2)
    for worker, conn in server.pipeline._conns.items():  # the server's ends: what each sends, in order
        kinds = sent.setdefault(worker, [])
        for name in ("send", "send_encoded"):
            method = getattr(conn, name)
            setattr(conn, name, lambda kind, *a, _method=method, _kinds=kinds, **k: (_kinds.append(kind),
                                                                                       _method(kind, *a, **k))[1])
    by_hand.chunks(0, pieces - 1)
    server.wait(lambda: server.pipeline._sent >= pieces - 1)
    assert applied_on == [(j, "raytf-wire-pipeline") for j in range(pieces - 1)]
    by_hand.chunks(pieces - 1, pieces)
    status, params = by_hand.answer()
    reply = bell.answer()
    assert [j for j, _ in applied_on] == list(range(pieces)) and server.whole_updates == 0
    np.testing.assert_array_equal(params, whole_update(initial, grads))
    assert status is Status.OK and reply.status is Status.OK
    assert sent == {0: [REPLY] * pieces + [META], 1: [REPLY] * pieces + [META]}


def test_rounds_follow_each_other_and_a_stop_set_ahead_ends_them(setup):
    server, initial, grads = setup
    bells = [worker_bell(server, w, grads[w]) for w in (0, 1)]
    expected = initial
    for step in range(3):
        for w, bell in enumerate(bells):
            bell.ring(step, step + 1, None, True)
        replies = [bell.answer() for bell in bells]
        expected = whole_update(expected, grads)
        for reply in replies:
            np.testing.assert_array_equal(reply.payload, expected)
    assert server.exchange.set_target(4)
    for bell in bells:
        bell.ring(3, 4, None, True)
    assert [bell.answer().status for bell in bells] == [Status.DONE, Status.DONE]
    assert server.whole_updates == 0 and server.exchange.version == 4


def test_int8_pulls_of_pipelined_rounds_are_exact_first_then_changes_whose_error_does_not_grow():
    """Each worker buffer's first answer is the parameters exactly; later ones are int8 changes from
    what that buffer holds, within half a chunk's scale of the parameters every round (the server's
    copy of the buffer keeps the error, so it never adds up)."""
    rng = np.random.default_rng(3)
    initial = rng.standard_normal(SIZE, dtype=np.float32)
    server = Server(initial, pull_codec="int8")
    grads = [aligned_zeros(SIZE) for _ in range(2)]
    bells = [worker_bell(server, w, grads[w]) for w in (0, 1)]
    expected = initial
    try:
        for step in range(8):
            for w, bell in enumerate(bells):
                grads[w][:] = rng.standard_normal(SIZE, dtype=np.float32) * 0.01
                bell.ring(step, step + 1, None, True)
            replies = [bell.answer() for bell in bells]
            expected = whole_update(expected, grads)
            for reply in replies:
                if step < 2:
                    np.testing.assert_array_equal(reply.payload, expected)
                else:
                    error = np.abs(reply.payload - expected)
                    # A change over two rounds of 0.5 * 0.01 * N(0, 1) means is at most ~0.05: its scale /
                    # 2 is ~2e-4. Errors that added up over rounds would pass that.
                    assert 0 < error.max() < 4e-4
        assert server.whole_updates == 0
    finally:
        server.pipeline.close()
        server.listener.close()


def test_a_worker_removed_half_way_leaves_the_rest_of_the_round_to_the_others(setup):
    server, initial, grads = setup
    bell = worker_bell(server, 0, grads[0])
    by_hand = ByHand(server, grads[1])
    bell.ring(0, 1, 0.5, True)
    by_hand.start()
    by_hand.chunks(0, 1)
    server.wait(lambda: server.pipeline._applied >= 1)
    by_hand.conn.close()  # it died
    server.remove(1)
    reply = bell.answer()
    assert reply.status is Status.OK and reply.version == 1
    both, alone = whole_update(initial, grads), whole_update(initial, grads[:1])
    np.testing.assert_array_equal(reply.payload[:PIECE], both[:PIECE])  # applied before it died
    np.testing.assert_array_equal(reply.payload[PIECE:], alone[PIECE:])
    # Its restarted process is admitted to the next round and connects anew: pipelined with the other.
    assert server.exchange.admit(1, server.exchange.version + 1)
    rejoined = worker_bell(server, 1, grads[1])
    bell.ring(1, 2, None, True)
    rejoined.ring(1, 1, None, True)
    replies = [bell.answer(), rejoined.answer()]
    expected = whole_update(reply.payload, grads)
    for again in replies:
        assert again.status is Status.OK and again.version == 2
        np.testing.assert_array_equal(again.payload, expected)
    assert server.pipeline.pipelined == {0, 1} and server.whole_updates == 0


@pytest.mark.parametrize("how", ["abort", "stop"])
def test_an_abort_or_stop_half_way_answers_every_worker_whole(setup, how):
    server, initial, grads = setup
    bell = worker_bell(server, 0, grads[0])
    by_hand = ByHand(server, grads[1])
    bell.ring(0, 1, 0.5, True)
    by_hand.start()
    server.wait(lambda: len(server.pipeline._conns) == 2)  # both pushes are part of the round
    if how == "stop":  # before any piece is applied: allowed, and nothing of the round is
        assert server.exchange.set_target(0)
    else:
        by_hand.chunks(0, 1)
        server.wait(lambda: server.pipeline._applied >= 1)
        server.exchange.abort()
    thread, out = answer_in_thread(bell)
    by_hand.chunks(1 if how == "abort" else 0, SIZE // PIECE)  # its push still completes
    thread.join(DEADLINE)
    assert not thread.is_alive(), "worker 0 was never answered"
    status, _ = by_hand.answer()
    if how == "abort":
        assert out[0].status is Status.ROLLBACK and status is Status.ROLLBACK
    else:
        assert out[0].status is Status.DONE and status is Status.DONE
        np.testing.assert_array_equal(out[0].payload, initial)  # the version it stopped at
        np.testing.assert_array_equal(server.opt.params_view(), initial)


def test_after_a_round_whose_workers_all_died_half_way_a_whole_round_is_applied_in_full(setup):
    server, initial, grads = setup
    first, second = ByHand(server, grads[0], worker=0), ByHand(server, grads[1])
    for by_hand in (first, second):
        by_hand.start()
        by_hand.chunks(0, 1)
    server.wait(lambda: server.pipeline._applied >= 1)
    for w, by_hand in enumerate((first, second)):
        by_hand.conn.close()
        server.remove(w)
    server.wait(lambda: server.pipeline._expected is None)  # the dead round is closed
    before = server.opt.params_view()
    server.all_wire = False  # the restarted workers' round goes the usual way
    for w in (0, 1):
        assert server.exchange.admit(w, server.exchange.version + 1)
    bells = [worker_bell(server, w, grads[1 - w]) for w in (0, 1)]
    for bell in bells:
        bell.ring(0, 1, None, True)
    server.wait(lambda: server.exchange.version == 1)
    np.testing.assert_array_equal(server.opt.params_view(), whole_update(before, grads[::-1]))
    assert server.whole_updates == 1
