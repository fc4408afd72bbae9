"""The parameter-server actor: one shard of the variables, and the exchange that updates it.

What a push means (barrier, async, bounded staleness, backup workers) is the run's consistency
policy, in the `Exchange` state machine of `raytf.exchange`; this actor gives that state machine
its backend: the shard as a flat TensorFlow variable with fused `ResourceApply*` updates
(`raytf.exchange.optimizers`), the transport that publishes the parameters (`raytf.exchange.transport`), and the
server's own checkpoint shards (the driver writes a checkpoint's manifest once all are in).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raytf.config import DistributionConfig, OptimizerConfig
from raytf.exchange import Exchange, Push, Reply, ServerNotReady, ServerStats, Status, policy_for
from raytf.exchange.row_slots import RowLayout
from raytf.exchange.shard_state import ShardState, ShardWriter, TableState, step_dir
from raytf.exchange.transport import LinkSpec, ServerSlots, shm_available, shm_root
from raytf.observe.startup import peak_rss
from raytf.observe.steady import CpuWindow, warmup_steps
from raytf.observe.trace import DRIVER_TID, EARLY_PHASE
from raytf.runtime import configure_tensorflow


@dataclass(frozen=True)
class ServerSettings:
    run_name: str
    distribution: DistributionConfig  # the workers and the consistency policy
    threads: int
    target_version: int
    updates_per_step: int = 1  # server versions per training step (the policy's)
    checkpoint_dir: str | None = None
    every_versions: int = 0  # 0: checkpoint only at the target
    eval_versions: int = 0  # validation while training: a checkpoint also at every multiple, evaluated by the driver
    deltas: bool = False  # checkpoint.deltas: dynamic tables' changes since the last checkpoint, beside it
    dense_slots: bool = False  # sparse tables: update every row's slots (sparse.slots: dense), not just touched ones
    tables: tuple = ()  # the plan's sparse tables (raytf.exchange.tables.TableSpec)
    trace_steps: int = 0  # trace.max_steps when the run records a timeline (raytf.observe.trace); 0: off
    wire_secret: bytes = field(default=b"", repr=False)  # the run's secret for the cross-node wire's handshake


@dataclass(frozen=True)
class Gradient:
    """One worker's gradient for this server: its dense buffer and, per sparse table, the rows it
    touched (unique local ids and their summed gradient rows)."""

    dense: Any  # None: summed into another worker's on their node (raytf.exchange.local_reduce)
    tables: tuple = ()
    worker: int = -1  # who pushed it: its requested rows are gathered with the round's update


class ParameterServer:
    """A Ray actor (threaded: one thread per waiting worker) holding one shard."""

    def __init__(self, run_id: str, index: int, description: str = "") -> None:
        self.run_id = run_id
        self.index = index
        self.description = description or f"shard {index}"
        self.ready = False  # False in a fresh (or restarted) process until setup
        self.slots: ServerSlots | None = None
        self.doorbell = None  # a raytf.exchange.doorbell.Doorbell while same-node workers push over it
        self.listener = None  # a raytf.exchange.wire.WireListener while workers on other nodes push over the wire
        self.pipeline = None  # a raytf.exchange.pipeline.Pipeline while every worker is on the wire (sync)
        self.exchange: Exchange | None = None
        self._setup_lock = threading.Lock()
        self.trace = None  # a raytf.observe.trace.PhaseRecorder when settings.trace_steps
        self._call = threading.local()  # tracing: which worker's call (and step) this thread serves
        self.writer = ShardWriter(index)  # its checkpoint shards
        self.failure: Exception | None = None  # an error of a push served on a connection's thread (`_rung`)

    def __repr__(self) -> str:
        # The dashboard's Actors view shows this ("Repr"); it is taken when the actor starts.
        return f"ParameterServer(run={self.run_id}, {self.description})"

    # -- set-up -----------------------------------------------------------------------------
    def setup(self, state: ShardState, optimizer: OptimizerConfig, settings: ServerSettings) -> dict:
        """Start (or restart, after a rollback) from `state`. Returns where its start-up time went."""
        from raytf.observe.startup import ActorTimer

        timer = ActorTimer()
        with timer.span("actor_imports"):
            configure_tensorflow(settings.threads)
            from raytf.exchange.optimizers import FlatOptimizer
            from raytf.exchange.row_rounds import RowRounds
            from raytf.observe.metrics import ActorMetrics

        with timer.span("actor_model_build"), self._setup_lock:
            self._close_links()
            if not self.ready:
                self.metrics = ActorMetrics(settings.run_name, "ps", self.index)
            self.settings = settings
            self.policy = policy_for(settings.distribution)
            self.opt = FlatOptimizer(optimizer, state.params, state.slots, state.iterations)
            self.tables = [_table(t, spec, self.index, optimizer, settings.dense_slots)
                           for t, spec in zip(state.tables, settings.tables)]
            self.rounds = RowRounds(self.tables)
            # worker -> (per table, the local ids of the rows to send it; its row slot when they go there)
            self._wanted: dict[int, tuple] = {}
            # worker -> per table its requested rows, gathered by the last update (valid until the next
            # update, or a new request of the worker, which drop them)
            self._gathered: dict[int, tuple] = {}
            self._rows_out: dict[int, tuple] = {}  # worker -> per table, those rows (gathered when published)
            self._early: dict[int, int] = {}  # worker -> round size its rows were applied early for (this round)
            self.writer.reset()
            self.seconds_apply = 0.0  # where a server's time goes, for the summary
            # The process's CPU per update after its first updates (raytf.observe.steady), as the workers' rate.
            self._cpu, self._updates_here, self._cpu_from = CpuWindow(), 0, warmup_steps(settings.target_version)
            self.seconds_publish = 0.0
            if settings.trace_steps and self.trace is None:  # kept over a rollback: the timeline shows it
                self.trace = _recorder(settings.trace_steps, settings.distribution.workers)
            self.exchange = Exchange(self.policy, self, workers=settings.distribution.workers,
                                     target=settings.target_version, version=state.version,
                                     every_versions=settings.every_versions, eval_versions=settings.eval_versions,
                                     observer=self.metrics, tracer=self.trace)
            self.ready = True
        return {"timings": timer.spans}

    def node_info(self) -> tuple[str, bool]:
        import ray

        return ray.get_runtime_context().get_node_id(), shm_available()

    def process_id(self) -> int:
        return os.getpid()

    def is_ready(self) -> bool:
        return self.ready

    def open_links(self, kinds: list[str]) -> list[LinkSpec]:
        """Open the exchange's links to the workers, per worker of `kinds` ("shm", "wire" or
        "object_store", raytf.exchange.transport.choose_link); returns what each worker needs."""
        layout = RowLayout.of(self.settings.tables)
        self.slots = ServerSlots(self.run_id, self.index, self.opt.size,
                                 {w for w, kind in enumerate(kinds) if kind == "shm"},
                                 shared_params=self.policy.shared_parameter_slot,
                                 rows=layout if self.settings.distribution.doorbell else None,
                                 wire_workers={w for w, kind in enumerate(kinds) if kind == "wire"}, wire_rows=layout,
                                 carried_workers={w for w, kind in enumerate(kinds) if kind == "carried"})
        self._pipeline_if_all_wire(kinds)
        return [self._linked(w) for w in range(len(kinds))]

    def _pipeline_if_all_wire(self, kinds: list[str]) -> None:
        """Sync rounds applied and answered piece by piece (raytf.exchange.pipeline) where every
        worker is on the wire and the shard has more than one piece; the shard is cut in pieces
        for it (elsewhere a whole view of it would cost a copy)."""
        from raytf.exchange.pipeline import Pipeline, piece_values
        from raytf.exchange.policies import SyncPolicy

        d = self.settings.distribution
        piece = piece_values(self.opt.config.name)
        if not (d.pipeline and kinds and all(kind in ("wire", "carried") for kind in kinds) and self.opt.size > piece
                and isinstance(self.policy, SyncPolicy) and not self.policy.backup_workers):
            return
        from raytf.exchange.optimizers import PiecedOptimizer

        self.opt = PiecedOptimizer.of(self.opt, piece)
        self.pipeline = Pipeline(self.exchange, self.opt, lambda w: self.slots.wire_buffers(w)[0],
                                 self._pipeline_members, d.compression.pull)

    def _pipeline_members(self) -> set[int] | None:
        """The workers of the sync round being built, if all are on the wire (the exchange's lock held)."""
        members = self.policy.required(self.exchange)
        return members if all(self.slots.is_wire(w) or self.slots.is_carried(w) for w in members) else None

    def _linked(self, worker: int) -> LinkSpec:
        spec = self.slots.link_spec(worker)
        return self._with_wire(spec) if self.slots.is_wire(worker) else self._with_bell(spec)

    def _with_wire(self, spec: LinkSpec) -> LinkSpec:
        """`spec` with this server's wire listener (started on first use, on the node's address)."""
        from dataclasses import replace

        if self.listener is None:
            import ray

            from raytf.exchange.wire import WireListener

            self.listener = WireListener(ray.util.get_node_ip_address(), self.settings.wire_secret, self._wired,
                                         encrypt=self.settings.distribution.encrypt)
        return replace(spec, wire_address=tuple(self.listener.address), wire_secret=self.settings.wire_secret)

    def _wired(self, conn) -> None:
        """A worker connected over the wire: serve its pushes on this thread until it hangs up."""
        from raytf.exchange.wire_link import serve_connection

        def buffers(worker: int):
            with self.exchange.lock:  # relink swaps them under it
                return self.slots.wire_buffers(worker) if self.slots is not None else None

        serve_connection(conn, buffers, self._rung, self.slots.take_published,
                         self.settings.distribution.compression.pull, self.pipeline, self._carry)

    def _carry(self, leader: int, base_version: int, carried: np.ndarray) -> None:
        """A node's summed push (raytf.exchange.local_reduce) is in `leader`'s buffer: the pushes of
        the other workers it carries (rows 1.. of `carried`: index, steps, finite, has loss, loss)
        go to the exchange first, without waiting (their leader relays the answer). The sum counts
        once per finite gradient; it rides on the leader's own push, or on the first finite
        worker's if the leader's was not finite."""
        leader_finite = bool(carried[0, 2])
        carrier = leader if leader_finite else next((int(r[0]) for r in carried[1:] if r[2]), None)
        for worker, steps, finite, has_loss, loss in carried[1:]:
            worker = int(worker)
            dense = self.slots.gradient(leader, None, tensor=not self.opt.reads_numpy) if worker == carrier else None
            self.exchange.push(Push(worker, base_version, int(steps), float(loss) if has_loss else None, bool(finite)),
                               Gradient(dense, (), worker) if finite else None, wait=False)

    def _with_bell(self, spec: LinkSpec) -> LinkSpec:
        """`spec` with this server's doorbell, where the worker pushes over it: a shared-memory link
        whose sparse rows, if any, have their row slot (else they travel in the Ray call)."""
        if spec.kind != "shm" or (self.tables and spec.rows_path is None) or not self.settings.distribution.doorbell:
            return spec
        from dataclasses import replace

        from raytf.exchange.doorbell import MAX_PATH, Doorbell

        if self.doorbell is None:
            path = self.slots.bell_path()
            if len(path) > MAX_PATH:
                return spec  # too long for a Unix socket: Ray calls it is
            self.doorbell = Doorbell(path, self._rung)
        return replace(spec, bell_path=os.path.relpath(self.doorbell.path, shm_root()))

    def _rung(self, worker: int, base_version: int, steps_done: int, loss: float | None, finite: bool) -> Reply:
        """A push that came over the doorbell or the wire, served on that connection's thread. An
        error there reaches nobody (the thread ends, the worker sees its server gone and the run rolls
        back, maybe into the same error again): it is kept, and the driver's statistics call raises it."""
        try:
            return self._rung_push(worker, base_version, steps_done, loss, finite)
        except ServerNotReady:
            raise  # the worker treats it as a lost server, as it should
        except Exception as err:  # not swallowed: kept for `stats`, and raised here as well
            self.failure = err
            raise

    def _rung_push(self, worker: int, base_version: int, steps_done: int, loss: float | None, finite: bool) -> Reply:
        """The gradient is in the worker's slot, its sparse rows (and the ids of the rows it wants) in
        its row slot, where the rows asked for go back."""
        slot = self.slots.row_slot(worker) if self.tables else None
        if slot is None:
            return self.push(worker, base_version, None, steps_done, loss, finite)
        rows, want = slot.read_push()
        self._want(worker, want, slot)  # publish gathers the rows straight into the slot
        return self.push(worker, base_version, None, steps_done, loss, finite, rows if finite else (), None)

    def _close_links(self) -> None:
        if self.pipeline is not None:
            self.pipeline.close()
            self.pipeline = None
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        if self.doorbell is not None:
            self.doorbell.close()
            self.doorbell = None
        if self.slots is not None:
            self.slots.close()
            self.slots = None

    def relink(self, worker: int, node: str) -> LinkSpec:
        """The link to a restarted worker, decided anew from the node it runs on now (Ray may have
        brought it back elsewhere: the slots of its old pairing would not be on its node)."""
        import ray

        self._require_ready()
        from raytf.exchange.row_slots import RowLayout
        from raytf.exchange.transport import choose_link

        local = node == ray.get_runtime_context().get_node_id() and shm_available()
        kind = choose_link(self.settings.distribution.transport, local,
                           rows_bounded=not self.tables or RowLayout.of(self.settings.tables) is not None)
        with self.exchange.lock:  # publish() reads the slots under it
            self.slots.relink(worker, kind)
        return self._linked(worker)

    # -- the exchange's backend (called with the exchange's lock held) ----------------------
    def apply(self, grads: list) -> None:
        if self.trace is not None:
            traced = self.trace.mark()
        started = time.perf_counter()
        if self.pipeline is not None and self.pipeline.applied_round([g.worker for g in grads]):
            started -= self.pipeline.seconds_apply  # the pieces' updates, as their bytes came in
            self.pipeline.seconds_apply = 0.0
        elif self.opt.size:
            # A gradient summed on its workers' node (raytf.exchange.local_reduce) counts for each of them.
            self.opt.apply_mean([g.dense for g in grads if g.dense is not None], len(grads))
        if self.tables:  # with no rows, too: a table's step count stays the dense one's
            asked = [g.worker for g in grads if g.worker in self._wanted]
            slots = [self._wanted[w][1] for w in asked]  # the worker waits for its answer: its slot is free
            early = [self._early.get(g.worker) for g in grads]
            self._early.clear()  # a worker removed after its rows were applied early leaves them applied
            rows = self.rounds.run([g.tables for g in grads], [self._wanted[w][0] for w in asked],
                                   [None if slot is None else slot.sent_rows for slot in slots], early)
            self._gathered = dict(zip(asked, rows))
        seconds = time.perf_counter() - started
        self.seconds_apply += seconds
        self.metrics.observe("raytf_apply_seconds", seconds)
        self._updates_here += 1
        if self._updates_here == self._cpu_from:
            self._cpu.start()
        else:
            self._cpu.tick()
        if self.trace is not None:
            self._traced("apply", traced)

    def apply_early(self, grad: Gradient, expected: int) -> bool:
        """A gradient of a sync round still waiting for others: its sparse rows applied now (SGD's,
        as 1/`expected` of the round's mean), while the other workers still compute, so the update
        that completes the round has only the last gradient's rows left. False when the tables'
        optimizer cannot (its update is not linear in the gradient)."""
        if not (self.tables and self.rounds.applies_early):
            return False
        if self.trace is not None:
            traced = self.trace.mark()
        started = time.perf_counter()
        self.rounds.apply_early(grad.tables, expected)
        self._early[grad.worker] = expected
        self.seconds_apply += time.perf_counter() - started
        if self.trace is not None:
            self._traced(EARLY_PHASE, traced)
        return True

    def publish(self, version: int, worker: int) -> None:
        if self.trace is not None:
            traced = self.trace.mark()
        started = time.perf_counter()
        if self.pipeline is None or worker not in self.pipeline.pipelined:  # else its pieces went out already
            params = self.opt.params_view()
            self.slots.publish(params, version, worker)
            del params  # a live view would make the next update copy the buffer first
        wanted = self._wanted.pop(worker, None)
        if wanted is not None:  # under the exchange's lock: the rows are of the same version as the rest
            want, slot = wanted
            rows = self._gathered.pop(worker, None)  # by the update that made this version (into the slot)
            if rows is None:  # a pull, or an update since (async, backup workers) or none (all dropped)
                rows = self.rounds.gather(want, None if slot is None else slot.sent_rows)
            if slot is None:  # they travel in the reply
                self._rows_out[worker] = rows
        self.seconds_publish += time.perf_counter() - started
        if self.trace is not None:
            self._traced("publish", traced)

    def checkpoint(self, version: int) -> None:
        """Write the shard at `version`. Called with the exchange's lock held (every worker of a
        sync round waits), so only the copy of the state is made here; the file is written while
        the exchange goes on (raytf.exchange.shard_state.ShardWriter)."""
        if not self.settings.checkpoint_dir:
            return
        if self.trace is not None:
            traced = self.trace.mark()
        params, slots, iterations = self.opt.state()  # copies: the next updates do not touch them
        tables = tuple(_table_state(table) for table in self.tables)
        deltas = None
        if self.settings.deltas:  # what changed since the last checkpoint, at the same moment as the state
            from raytf.exchange.deltas import delta_arrays

            deltas = {}
            for k, table in enumerate(self.tables):
                if self._dynamic(k):
                    deltas.update(delta_arrays(k, *table.take_delta()))
        directory = step_dir(Path(self.settings.checkpoint_dir), version // self.settings.updates_per_step)
        self.writer.write(directory, ShardState(params, slots, iterations, version, tables, deltas),
                          last=version >= self.exchange.target)
        if self.trace is not None:
            self._traced("checkpoint", traced)

    # -- the workers' calls -----------------------------------------------------------------
    def pull(self, worker: int, at_version: int | None = None, want: tuple = ()) -> Reply:
        """The parameters, once the version is at least `at_version` (a rejoining worker's start),
        and per sparse table the rows at the local ids in `want`."""
        self._require_ready()
        if self.pipeline is not None:
            self.pipeline.pulled(worker)
        if self.trace is None:
            self._want(worker, want)
            return self._reply(worker, self.exchange.pull(worker, at_version), in_call=True)
        self._call.current, started = (worker, 0), self.trace.mark()
        self._want(worker, want)
        reply = self._reply(worker, self.exchange.pull(worker, at_version), in_call=True)
        self.trace.record("pull", started, 0, worker)
        self._call.current = None
        return reply

    def push(self, worker: int, base_version: int, payload, steps_done: int, loss: float | None,
             finite: bool = True, rows: tuple = (), want: tuple | None = ()) -> Reply:
        """A gradient: the dense part through the transport (`payload`), per sparse table the touched
        rows (`rows`: unique local ids and their summed gradients); `want`: the rows to send back
        (None: already noted, the doorbell's push)."""
        self._require_ready()
        trace = self.trace
        if trace is not None:
            self._call.current, started = (worker, steps_done), trace.mark()
        grad = Gradient(self.slots.gradient(worker, payload, tensor=not self.opt.reads_numpy), rows, worker) \
            if finite else None
        if trace is not None:
            trace.record("receive", started, steps_done, worker)
        if want is not None:
            self._want(worker, want)
        outcome = self.exchange.push(Push(worker, base_version, steps_done, loss, finite), grad)
        if trace is None:
            return self._reply(worker, outcome)
        replying = trace.mark()
        reply = self._reply(worker, outcome)
        trace.record("push", started, steps_done, worker, end=trace.record("reply", replying, steps_done, worker))
        self._call.current = None
        return reply

    def _traced(self, phase: str, started) -> None:
        """Trace a phase of the exchange on the timeline of the call it runs in (the driver's, if none)."""
        worker, step = getattr(self._call, "current", None) or (DRIVER_TID, 0)
        self.trace.record(phase, started, step, worker)

    def _want(self, worker: int, want: tuple, slot=None) -> None:
        if self.tables:
            with self.exchange.lock:
                self._wanted[worker] = (want, slot)
                self._gathered.pop(worker, None)  # gathered for its last request

    def _reply(self, worker: int, outcome, in_call: bool = False) -> Reply:
        if outcome.status is Status.ROLLBACK:
            return Reply(outcome.status, outcome.version)
        with self.exchange.lock:
            rows = self._rows_out.pop(worker, None)
            payload = self.slots.reply(worker, in_call)
        return Reply(outcome.status, outcome.version, payload, outcome.dropped, rows)

    # -- control by the driver --------------------------------------------------------------
    def abort(self) -> None:
        """Release every waiting call with ROLLBACK (a checkpoint is about to be restored). A restarted
        process not set up yet has no exchange and nobody waiting on it: nothing to do."""
        if self.exchange is not None:
            self.exchange.abort()

    def set_target(self, version: int) -> bool:
        """Stop at `version` (a step boundary the driver chose); False if already past it."""
        return self.exchange.set_target(version)

    def remove_worker(self, worker: int) -> None:
        if self.ready:  # else a restarted process: the rollback under way sets up every member anew
            if self.pipeline is not None:
                self.pipeline.remove(worker)  # first: the round's pieces go on without it
            self.exchange.remove(worker)

    def admit(self, worker: int, first_round: int) -> bool:
        self._require_ready()
        return self.exchange.admit(worker, first_round)

    def current_version(self) -> int:
        self._require_ready()
        return self.exchange.current_version()

    def _require_ready(self) -> None:
        if not self.ready:
            raise ServerNotReady(f"parameter server {self.index} was restarted and is not set up yet")

    # -- reporting --------------------------------------------------------------------------
    def stats(self) -> ServerStats:
        """The exchange's counts, checkpoint shards written and timings; a restarted process that
        was not set up again reports only that it is not ready. An error a push met on a doorbell or
        wire thread is raised here (the driver ends the run with it)."""
        if self.failure is not None:
            raise self.failure
        if not self.ready:
            return ServerStats(ready=False)
        exchange = self.exchange.stats()
        with self.exchange.lock:  # the backend's counters move under the exchange's lock
            self.metrics.flush()
            self.writer.collect(wait=False)
            updates = max(exchange.updates, 1)
            cpu = self._cpu.per_event()
            dynamic = tuple(t.counts() if self._dynamic(k) else None for k, t in enumerate(self.tables))
            if any(dynamic):
                for name in ("live", "created", "evicted"):
                    self.metrics.set(f"raytf_dynamic_rows_{name}", sum(d[name] for d in dynamic if d))
            return ServerStats(ready=True, exchange=exchange, saved=dict(self.writer.saved),
                               ms_apply_per_update=1000 * self.seconds_apply / updates,
                               ms_publish_per_update=1000 * self.seconds_publish / updates, peak_rss=peak_rss(),
                               dynamic=dynamic, cpu_ms_per_update=cpu[0], cpu_sys_ms_per_update=cpu[1])

    def _dynamic(self, k: int) -> bool:
        """Whether sparse table `k` is a dynamic one (keys -> rows, raytf.exchange.dynamic_rows), as the plan says."""
        return self.settings.tables[k].is_dynamic

    def get_params(self) -> np.ndarray:
        with self.exchange.lock:
            return np.array(self.opt.params_view(), copy=True)

    def get_table(self, k: int) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """This server's rows of sparse table `k`, in its local order (`TableSpec.global_ids`); of a
        dynamic table, (its keys, sorted, and their rows)."""
        with self.exchange.lock:
            table = self.tables[k]
            if self._dynamic(k):
                return table.export()
            return np.array(table.rows(), copy=True)

    def trace_track(self):
        """This process's recorded phases (a raytf.observe.trace.Track), or None when tracing is off."""
        if self.trace is None:
            return None
        return self.trace.track(f"ps {self.index}", self.node_info()[0], os.getpid())

    def close(self) -> None:
        self._close_links()
        self.writer.close()


def _recorder(max_steps: int, workers: int):
    """A timeline of every worker's calls (one per worker, each step: push with its phases)."""
    from raytf.observe.trace import SERVER_PHASES, PhaseRecorder

    recorder = PhaseRecorder(max_steps * workers * (len(SERVER_PHASES) + 3))  # + push, checkpoint, apply_early
    recorder.threads.update({w: f"calls of worker {w}" for w in range(workers)})
    recorder.threads[DRIVER_TID] = "driver's calls"
    return recorder


def _table(state: TableState, spec, server: int, optimizer, dense_slots: bool):
    """A sparse table's rows on this server: a RowOptimizer, or a dynamic table's key -> row storage."""
    if spec.is_dynamic:
        from raytf.exchange.dynamic_rows import DynamicRows, DynamicSettings

        settings = DynamicSettings.of(spec.dynamic.get("admission"), spec.dynamic.get("eviction"), spec.init["seed"])
        table = DynamicRows(optimizer, spec.width, spec.init, settings, spec.servers)
        if state.keys is not None:
            table.restore(state.keys, state.params, state.slots, state.iterations, state.touches, state.last)
        return table
    from raytf.exchange.optimizers import RowOptimizer

    return RowOptimizer(optimizer, _rows(state, spec, server), state.slots, state.iterations, dense_slots)


def _table_state(table) -> TableState:
    state = table.state()
    return TableState(**state) if isinstance(state, dict) else TableState(*state)


def _rows(state: TableState, spec, server: int) -> np.ndarray:
    """A table's rows to start from: restored, or (a ShardedEmbedding, which no replica holds) new."""
    if state.params is not None:
        return state.params
    from raytf.exchange.tables import initial_rows

    return initial_rows(spec, server)
