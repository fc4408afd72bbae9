"""The worker actor: a model replica and a data shard that computes gradients.

The hot path is one graph-compiled function, `step`: forward and backward on a batch with the
parameters the servers published passed in as tensors (over the shared-memory slots themselves,
no copy: `keras.StatelessScope` maps the replica's variables to them), returning each variable's
gradient and whether they are all finite. Each gradient is copied once, straight into its place
in the server's slot (or the object-store buffer). The replica's own variables hold only what the
servers do not publish: sparse-table row caches and non-trainable state (BatchNorm statistics,
dropout seeds), which the step writes back.

A worker trains until the servers reply DONE (they reached the target version) or ROLLBACK
(the driver is restoring a checkpoint); if a server dies under it, `run` ends with SERVER_LOST
and the driver takes over. A restarted worker `rejoin`s: it sets up again, is admitted again by
every server (by the policy's rules) and starts from the parameters of then.
"""

from __future__ import annotations

import collections
import os
import time
from typing import Any

import numpy as np

from raytf.data.sources import NO_WEIGHTS, DataPlan
from raytf.exchange import Reply, ServerNotReady, Status, WorkerResult
from raytf.exchange.doorbell import Bell, ServerGone
from raytf.exchange.local_reduce import LeaderBell, LocalGroup, join_leader, member_spec
from raytf.exchange.policies import policy_for
from raytf.exchange.sharding import ShardPlan
from raytf.exchange.transport import LinkSpec, WorkerLink, shm_root
from raytf.exchange.wire_link import WireBell
from raytf.observe.steady import CpuWindow, warmup_steps
from raytf.observe.startup import peak_rss
from raytf.replica.compiled import CompiledStep
from raytf.replica.tables import Request, WorkerTables, map_rows
from raytf.runtime import as_tensor, configure_tensorflow


class StepTimer:
    """Where a worker's steps go (compute, exchange), after the warm-up steps; and its start-up."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.compute = self.exchange = 0.0
        self.warm_time = time.perf_counter()
        self.ends = (0.0, 0.0)  # when the step before the last and the last one ended
        self.startup: dict[str, tuple[float, float]] = {}  # the first pull and the first (compiling) step, wall clock
        self._t0 = self._t1 = 0.0
        self._wall0 = 0.0
        self.cpu = CpuWindow()  # the process's CPU over the same steps

    def compute_started(self) -> None:
        self._t0, self._wall0 = time.perf_counter(), time.time()

    def computed(self, first: bool) -> None:
        self._t1 = time.perf_counter()
        if first:
            self.startup["first_compile"] = (self._wall0, time.time())

    def exchanged(self, steps: int) -> float:
        now = time.perf_counter()
        if steps == self.warmup:
            self.warm_time = now
            self.compute = self.exchange = 0.0
            self.cpu.start()
        else:
            self.compute += self._t1 - self._t0
            self.exchange += now - self._t1
            self.cpu.tick()
        self.ends = (self.ends[1], now)
        return now

    def result(self, index: int, status: Status, steps: int, final_loss: float, batch_size: int,
               pushed: int = 0, pulled: int = 0, unique_ids: int = 0, wire_sent: int = 0,
               wire_received: int = 0) -> WorkerResult:
        measured = steps - self.warmup
        rated, seconds = measured, time.perf_counter() - self.warm_time
        if measured >= 2:
            # The rate leaves out the last step: its answer waits for the run's final checkpoint (a second
            # or more for a large table), which is not training.
            rated, seconds = measured - 1, self.ends[0] - self.warm_time
        cpu_ms, cpu_sys_ms = self.cpu.per_event(skip_last=measured >= 2)
        return WorkerResult(
            index=index, status=status, steps=steps, final_loss=final_loss, measured_steps=max(measured, 0),
            samples_per_second=rated * batch_size / seconds if rated > 0 and seconds > 0 else 0.0,
            ms_compute_per_step=1000 * self.compute / max(measured, 1),
            ms_exchange_per_step=1000 * self.exchange / max(measured, 1),
            startup=self.startup, bytes_pushed=pushed, bytes_pulled=pulled, unique_ids=unique_ids, peak_rss=peak_rss(),
            wire_sent=wire_sent, wire_received=wire_received, cpu_ms_per_step=cpu_ms, cpu_sys_ms_per_step=cpu_sys_ms,
        )


class Worker:
    def __init__(self, run_id: str, index: int, description: str = "") -> None:
        self.run_id = run_id
        self.index = index
        self.description = description or f"index {index}"
        self.metrics = None  # set when connected (needs Ray)
        self.links: list[WorkerLink] = []
        self.bells: list = []  # per server, its raytf.exchange.doorbell.Bell where pushes go over it, else None
        self.group: LocalGroup | None = None  # the node's workers whose pushes one sums (raytf.exchange.local_reduce)
        self.trace = None  # a raytf.observe.trace.PhaseRecorder when the config's trace.enabled
        self.model = None  # the replica, once set up

    def __repr__(self) -> str:
        # The dashboard's Actors view shows this ("Repr"); it is taken when the actor starts.
        return f"Worker(run={self.run_id}, {self.description})"

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def setup(self, config: dict[str, Any], plan: ShardPlan, num_workers: int, threads: int,
              data: DataPlan | None = None, statistics: list[np.ndarray] | None = None) -> dict[str, Any]:
        """Build the replica and the data shard (`data`: how to read it, DataPlan() when data.train is a
        function read as a stream; `statistics`: the non-trainable values to start from, a resumed
        checkpoint's, in the order `non_trainable` gives them). Returns the GPUs it sees and where its start-up time went."""
        from raytf.observe.startup import ActorTimer

        timer = ActorTimer()
        with timer.span("actor_imports"):
            configure_tensorflow(threads)
            import keras  # noqa: F401 - timed here; _build uses it

            import raytf.replica.model  # noqa: F401
        with timer.span("actor_model_build"):
            gpus = self._build(config, plan, num_workers, data or DataPlan())
            if statistics:
                for variable, value in zip(self._state_variables(), statistics):
                    variable.assign(value)
        if self.config.trace.enabled and self.trace is None:
            from raytf.observe.trace import WORKER_PHASES, PhaseRecorder

            self.trace = PhaseRecorder(self.config.trace.max_steps * (len(WORKER_PHASES) + 1))  # + the step itself
            self.trace.threads[0] = "step loop"
        return {"gpus": gpus, "timings": timer.spans}

    def _build(self, config: dict[str, Any], plan: ShardPlan, num_workers: int, data: DataPlan) -> int:
        """The replica, its data shard and its compiled step; returns the number of GPUs TensorFlow sees."""
        import keras
        import tensorflow as tf

        from raytf.config import TrainConfig
        from raytf.config.imports import resolve_callable
        from raytf.data.sources import TrainData
        from raytf.replica.layers import rows_on_servers
        from raytf.replica.model import IdOutOfRange, build_model, make_loss, variable_specs

        cfg = TrainConfig.model_validate(config)
        self.config = cfg
        keras.utils.set_random_seed(cfg.seed + 1 + self.index)  # dropout and shuffles differ per worker
        train = TrainData(cfg, data)
        features, labels = train.first_batch(self.index, num_workers, cfg.batch_size)
        # A ShardedEmbedding holds a cache of the rows of the batches it is about to compute, not its table.
        with rows_on_servers(cfg.batch_size, batches=2 if policy_for(cfg.distribution).overlaps_compute else 1):
            try:
                model = build_model(resolve_callable(cfg.model, "model"), features, labels, cfg)
            except IdOutOfRange as err:  # this worker's data: say which worker
                from raytf.errors import TrainingError

                raise TrainingError(f"worker {self.index}: {err.problem}", err.fix) from None
        # A DynamicEmbedding's strings become int64 keys and its ragged lists a fixed block where the data is
        # read: the step sees neither.
        from raytf.replica.key_inputs import KeyTransform, key_inputs, take_keys

        keys = key_inputs(model)
        transform = KeyTransform(keys, self.index) if keys else None
        if transform is not None:
            take_keys(model, keys)
            features = transform.features(features)
        # Shapes, not names: Keras numbers layer names per process (dense_3 here, dense there).
        if [(v.shape, v.dtype) for v in variable_specs(model)] != [(v.shape, v.dtype) for v in plan.variables]:
            from raytf.errors import TrainingError

            raise TrainingError(
                f"worker {self.index}: the model it built has different variables than the driver's.",
                "Make the model function deterministic (same layers and shapes on every call).",
            )
        self.model = model
        self.plan = plan
        if data.steps_per_pass is None and train.fn is not None:  # a stream of full batches only
            try:
                next(iter(train.dataset(self.index, num_workers).batch(cfg.batch_size, drop_remainder=True)))
            except StopIteration:
                from raytf.errors import ConfigError

                raise ConfigError(
                    f"data.train: shard {self.index} of {num_workers} has fewer than batch_size={cfg.batch_size} examples, "
                    "so it yields no full batch.",
                    "Lower batch_size, use fewer workers, give each shard more data, or train for epochs (whose last "
                    "batch is filled up).",
                ) from None
        # Batches of (features, labels), or in passes over the data (features, labels, weights).
        self.iterator = train.batches(self.index, num_workers, data, transform)
        self.upcoming: collections.deque = collections.deque()  # batches read ahead (their sparse rows are asked early)
        self.tables = WorkerTables(model, plan, self.index)
        loss_fn = make_loss(cfg.loss)
        tvars = model.trainable_variables
        tables = plan.tables
        # The servers' variables, in the order the step takes their values: shard by shard.
        dense = [tvars[i] for shard in plan.shards for i in shard.variables]
        mapped = {id(v) for v in dense}
        kept = [v for v in model.variables if id(v) not in mapped]  # what the replica itself holds

        lookahead = 2 if policy_for(cfg.distribution).overlaps_compute else 1
        why_not = self.tables.use_rows_in_step(model, features, buffers=lookahead + 1)
        if why_not is not None and self.tables.specs and self.index == 0:
            print(f"raytf: the sparse tables' rows are written into the replica's tables each step ({why_not}).",
                  flush=True)
        in_step = self.tables.in_step
        # The step reads the rows in the row slot itself where nothing writes it before the step runs:
        # one server, and no push in flight while computing.
        self._rows_in_place = in_step and len(plan.shards) == 1 and lookahead == 1
        if in_step:  # the tables are read from the blocks passed in, never from the replica's own
            mapped |= {id(tvars[t.variable]) for t in tables}
            kept = [v for v in model.variables if id(v) not in mapped]
        table_vars = [tvars[t.variable] for t in tables]

        def step(x, y, w, positions, blocks, *params):
            with tf.GradientTape() as tape:
                tape.watch(params)
                tape.watch(blocks)
                with keras.StatelessScope(state_mapping=list(zip(dense, params))) as scope:
                    if in_step:
                        map_rows(scope, table_vars, blocks)
                        x = self.tables.by_position(x, positions)
                    outputs = model(x, training=True)
                    # Rows weighted 0 fill a pass's last batch: they count in the mean's divisor, not its sum.
                    loss = loss_fn(y, outputs, sample_weight=w) if w.shape[0] else loss_fn(y, outputs)
                    if model.losses:
                        loss = loss + tf.add_n(model.losses)
            for var in kept:  # what the forward pass assigned (BatchNorm statistics, dropout seeds)
                value = scope.get_current_value(var)
                if value is not None:
                    var.assign(value)
            grads = tape.gradient(loss, list(params) + (list(blocks) if in_step else table_vars))
            dense_grads = [tf.zeros_like(p) if g is None else tf.convert_to_tensor(g) for p, g in zip(params, grads)]
            # A sparse table's gradient leaves the step summed per distinct id, in the order of the
            # batch's row request (`positions`: where each looked-up id is among them), so no sort here.
            looked_up = [_sparse(g, t) for g, t in zip(grads[len(params):], tables)]
            table_grads = [tf.math.unsorted_segment_sum(rows, where, tf.shape(rows)[0])
                           for (_, rows), where in zip(looked_up, positions)]
            # Whether every gradient is finite, from one sum per gradient: a NaN or Inf anywhere makes
            # its sum one (finite values overflow only past 3.4e38, a step lost anyway). Summing the
            # outputs costs XLA ~0.02 ms here; is_finite over every element ~0.09 (a fifth of the step).
            sums = [tf.reduce_sum(g) for g in dense_grads + table_grads]
            finite = tf.math.is_finite(tf.add_n(sums)) if sums else tf.constant(True)
            return loss, dense_grads, table_grads, finite

        self._step_fn = step
        self._step = CompiledStep(step, cfg.jit_compile, checked=3)  # the batch's shapes may vary, not the rest
        self._step_checked = not cfg.jit_compile
        self.params: list = []  # per shard, the flat parameters of the last reply (the step reads them in place)
        return len(tf.config.list_logical_devices("GPU"))

    def _param_tensors(self) -> list:
        """Each server variable's values as a tensor over the last reply's buffers, without a copy:
        a shared-memory slot, or the object store's read-only buffer (both 64-byte aligned per
        variable, see raytf.exchange.sharding; the step only reads its parameters)."""
        return [as_tensor(part.reshape(self.plan.variables[i].shape), read_only=True)
                for shard, flat in zip(self.plan.shards, self.params)
                for i, part in zip(shard.variables, shard.parts(flat))]

    def _ahead(self, count: int) -> list:
        """The next `count` batches, read ahead but not taken."""
        while len(self.upcoming) < count:
            self.upcoming.append(_Batch(next(self.iterator)))  # outside the step: XLA cannot compile dataset iterators
        return list(self.upcoming)[:count]

    def _request_of(self, index: int) -> Request:
        """The rows the batch `index` ahead needs (and where each of its ids goes among them),
        worked out once per batch: read ahead while a push is answered, used by the push before
        that batch and by its step."""
        self._ahead(index + 1)
        batch = self.upcoming[index]
        if getattr(batch, "request", None) is None:
            batch = self.upcoming[index] = _Batch(batch)
            batch.request = self.tables.request([batch])
        return batch.request

    def _compute(self):
        """One step on the next batch with the parameters of the last reply: (loss, per-variable
        dense gradients in shard order, per sparse table its distinct ids' summed rows, all
        finite). The batch's row request (whose ids the rows follow) is `self.batch_request`."""
        self._ahead(1)
        self.batch_request = self._request_of(0) if self.tables.specs else None
        x, y, *weights = self.upcoming.popleft()  # read ahead already (`_start`, and each step's `next_batch`)
        w = weights[0] if weights else NO_WEIGHTS
        positions = list(self.batch_request.positions) if self.batch_request is not None else []
        blocks = [as_tensor(block) for block in self.batch_request.blocks] if self.tables.in_step else []
        params = self._param_tensors()
        if self._step_checked:
            return self._step(x, y, w, positions, blocks, *params)
        import tensorflow as tf

        self._step_checked = True
        try:
            return self._step(x, y, w, positions, blocks, *params)
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as err:
            # Some ops have no XLA kernel; train without XLA rather than fail the run.
            print(f"raytf worker {self.index}: XLA could not compile the step ({str(err).splitlines()[0]}); "
                  "continuing without it (set jit_compile: false to skip this check).", flush=True)
            self._step = CompiledStep(self._step_fn, None, checked=3)
            return self._step(x, y, w, positions, blocks, *params)

    def process_id(self) -> int:
        return os.getpid()

    def place(self, rank: int, count: int, node_cpus: float) -> tuple[int, ...]:
        """Pin this process to cores of its own, as the `rank`-th of `count` workers on a node of
        `node_cpus` Ray CPUs, where distribution.pin_workers allows (raytf.replica.placement).
        Returns the cores, () when not pinned."""
        from raytf.replica.placement import pin_as_configured

        return pin_as_configured(self.config.distribution, rank, count, node_cpus)

    def close(self) -> None:
        """Let go of the run (a pool host hands this process to the next one): the links to the servers
        close and the data reader's thread ends; the replica goes with the host's reference to this."""
        for bell in self.bells:
            if bell is not None:
                bell.close()
        self.bells, self.links, self.servers = [], [], []
        iterator = getattr(self, "iterator", None)
        if hasattr(iterator, "close"):
            iterator.close()  # a generator: its read-ahead thread stops (raytf.data.epochs.read_ahead)
        self.iterator = None

    def connect(self, servers: list, links: list[LinkSpec], group: LocalGroup | None = None) -> list[str]:
        """Map the exchange buffers of every server (again, after the servers were set up anew).
        In a `group` (raytf.exchange.local_reduce) a member's links go through its node's leader."""
        self.servers = servers
        from raytf.exchange.row_slots import RowLayout

        for bell in self.bells:
            if bell is not None:
                bell.close()
        self.bells = []
        self.group = group
        if group is not None and group.role(self.index) == "member":
            links = [member_spec(self.run_id, group, j, self.index) for j in range(len(links))]
        layout = RowLayout.of(self.plan.tables)
        self.links = [WorkerLink(spec, shard.size, layout) for spec, shard in zip(links, self.plan.shards)]
        self.bells = [self._bell(spec, link, j) for j, (spec, link) in enumerate(zip(links, self.links))]
        self.bytes_per_exchange = 4 * sum(shard.values for shard in self.plan.shards)  # the padding carries nothing
        if self.metrics is None:
            from raytf.observe.metrics import ActorMetrics

            self.metrics = ActorMetrics(self.config.name, "worker", self.index)
        return self.link_kinds()

    def _bell(self, spec: LinkSpec, link: WorkerLink, server: int):
        """Where pushes to a server go without a Ray call: its doorbell (same node; or the node's
        leader's, for a member of a local group), its wire (another node; a leader's sums its
        node's gradients), or None (Ray calls)."""
        if spec.bell_path:
            path = os.path.join(shm_root(), spec.bell_path)
            return join_leader(path, self.index) if self.group is not None else Bell(path, self.index)
        if spec.kind != "wire":
            return None
        from raytf.exchange.wire_link import open_bell

        d = self.config.distribution

        def open_wire(params=None):
            return open_bell(spec.wire_address, spec.wire_secret, self.index, link.wire_parts, link.size, link.rows,
                             encrypt=d.encrypt, push_codec=d.compression.push, where=f"node {self.node_id()[:12]}",
                             params=params)

        if self.group is not None and self.group.role(self.index) == "leader":
            return LeaderBell(self.run_id, self.group, server, link.size, open_wire)
        return open_wire()

    def rejoin(self, config: dict[str, Any], plan: ShardPlan, num_workers: int, threads: int, servers: list,
               target_version: int, data: DataPlan | None = None,
               statistics: list[np.ndarray] | None = None) -> WorkerResult:
        """A restarted worker: set up, connect, be admitted again and train on.

        Ray may have restarted it on another node than before, so every server decides its link
        again (shared memory only on the server's own node); the pairing of its old process is gone."""
        import ray

        self.setup(config, plan, num_workers, threads, data, statistics)
        node = self.node_id()
        try:
            links = ray.get([server.relink.remote(self.index, node) for server in servers])
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as err:
            if not _server_lost(err):
                raise
            # A server died too: the driver rolls back and sets this worker up with the others.
            return StepTimer(0).result(self.index, Status.SERVER_LOST, 0, float("nan"), self.config.batch_size)
        self.connect(servers, links)
        return self.run(target_version, rejoin=True)

    def link_kinds(self) -> list[str]:
        """How it reaches each server now: "shm+doorbell" (slots, pushes over the socket), "shm"
        (slots, pushes as Ray calls), "wire" (a direct connection; "wire+aes-gcm" encrypted; "wire+sum"
        a node's leader, raytf.exchange.local_reduce), "via leader" (a member of a node's group) or
        "object_store"."""
        if self.group is not None and self.group.role(self.index) == "member":
            return ["via leader"] * len(self.links)
        return [link.kind + ("+doorbell" if isinstance(bell, Bell) else "+sum" if isinstance(bell, LeaderBell)
                             else "+aes-gcm" if isinstance(bell, WireBell) and bell.conn.encrypted else "")
                for link, bell in zip(self.links, self.bells)]

    def _finish(self, replies_refs, request: Request, pushed_at: float | None = None) -> tuple[Status, list[int]]:
        """Wait for the servers' replies (Ray refs, or Bells rung) and take the parameters (and the rows
        of `request`) they sent."""
        import ray

        refs = [p for p in replies_refs if not isinstance(p, _BELLS)]
        answers = iter(ray.get(refs) if refs else ())
        replies: list[Reply] = [p.answer() if isinstance(p, _BELLS) else next(answers) for p in replies_refs]
        replied = time.perf_counter()
        if self.trace is not None:
            self._lap("wait_reply")  # the servers' receive, barrier, apply and publish, and the calls
        statuses = {reply.status for reply in replies}
        versions = [reply.version for reply in replies]
        if Status.ROLLBACK in statuses:
            return Status.ROLLBACK, versions
        self.params = [link.receive(reply.payload) for link, reply in zip(self.links, replies)]
        in_slot = [reply.rows is None and link.rows is not None for link, reply in zip(self.links, replies)]
        in_place = self._rows_in_place and in_slot == [True]
        rows = [link.rows.sent_rows if in_place else link.rows.rows_sent() if slot else reply.rows
                for link, reply, slot in zip(self.links, replies, in_slot)]  # over the doorbell: in the row slot
        received = self.bytes_per_exchange + self.tables.load(request, rows, in_place)
        self.traffic["pulled"] += received
        if self.trace is not None:
            self._lap("load")
        if self.metrics is not None:
            if self.tables.specs:
                self.metrics.inc("raytf_sparse_rows", request.count())
            if pushed_at is not None:
                self.metrics.observe("raytf_push_seconds", replied - pushed_at)
            self.metrics.observe("raytf_pull_seconds", time.perf_counter() - replied)
            self.metrics.inc("raytf_bytes_exchanged", received)
        return (Status.DONE if statuses == {Status.DONE} else Status.OK), versions

    def _start(self, rejoin: bool, lookahead: int) -> tuple[Status, list[int]]:
        """Pull the parameters to start from (and the rows of the first batches); a restarted worker
        is admitted again first. Where the policy counts on rounds, that is a round no server has
        started yet, so that every server admits it to the same one and they all keep the same version."""
        import ray

        if self.tables.in_step:  # each batch's rows in its own block
            request = Request.joined([self._request_of(i) for i in range(lookahead)])
        else:
            request = self.tables.request(self._ahead(lookahead))
        at_version = None
        if rejoin:
            while True:
                first = max(ray.get([s.current_version.remote() for s in self.servers])) + 2
                if all(ray.get([s.admit.remote(self.index, first) for s in self.servers])):
                    break
                ray.get([s.remove_worker.remote(self.index) for s in self.servers])  # a server moved on meanwhile
            at_version = first - 1 if policy_for(self.config.distribution).admits_by_round else None
        return self._finish([s.pull.remote(self.index, at_version, request.want[j]) for j, s in enumerate(self.servers)],
                            request)

    def _push(self, base_versions: list[int], grads: list, sparse, step: int, loss: float, request: Request) -> list:
        """Hand the gradient (computed on `base_versions`; `sparse`: its rows per server, None when it
        is not finite) to every server, asking for the rows of `request`; returns the reply refs."""
        finite = sparse is not None
        payloads = [link.send(grad, shard.offsets) if finite else None
                    for link, grad, shard in zip(self.links, grads, self.plan.shards)]
        rows, sent, distinct = sparse if finite else (((),) * len(self.servers), 0, 0)
        pushed = (self.bytes_per_exchange if finite else 0) + sent
        self.traffic["pushed"] += pushed
        self.traffic["unique_ids"] += distinct
        if self.metrics is not None:
            self.metrics.inc("raytf_bytes_exchanged", pushed)
            if distinct:
                self.metrics.inc("raytf_sparse_rows", distinct)
        pending = []
        for j, (server, payload, bell, link) in enumerate(zip(self.servers, payloads, self.bells, self.links)):
            if bell is not None:  # the gradient is in the slot or staged for the wire (the rows in the row slot): ring
                if link.rows is not None:
                    link.rows.write_push(rows[j] if finite else None, request.want[j])
                bell.ring(base_versions[j], step, loss if j == 0 else None, finite)
                pending.append(bell)
            else:
                pending.append(server.push.remote(self.index, base_versions[j], payload, step, loss if j == 0 else None,
                                                  finite, rows[j], request.want[j]))
        return pending

    def run(self, target_version: int, rejoin: bool = False) -> WorkerResult:
        """Train until the servers reach `target_version`. Where the policy overlaps compute with
        the exchange (async, ssp), the next gradient is computed while the last push is in flight
        (so it is one push staler); otherwise (sync) every step waits for its push's answer. The
        rows of a sparse table are asked for one batch ahead of the one computed next (two when
        overlapping: that batch is computed before the reply to the push in flight)."""
        import ray

        policy = policy_for(self.config.distribution)
        lookahead = 2 if policy.overlaps_compute else 1
        timer = StepTimer(warmup_steps(target_version // policy.updates_per_step))
        self.traffic = {"pushed": 0, "pulled": 0, "unique_ids": 0}
        wire_at_start = self._wire_bytes()
        loss_value = float("nan")
        steps = 0
        status = Status.OK
        no_rows = None if self.tables.specs else self.tables.request([])  # what a dense model's push asks for
        try:
            pull_started = time.time()
            if self.trace is not None:
                self._trace_step, self._mark = 0, self.trace.mark()  # the first pull is step 0's
            status, versions = self._start(rejoin, lookahead)
            timer.startup["first_pull"] = (pull_started, time.time())
            pending = pending_request = pushed_at = None  # the push in flight (overlapping policies)
            while status is Status.OK:
                base_versions = versions  # what this gradient is computed on: its staleness counts from there
                timer.compute_started()
                if self.trace is not None:
                    self._trace_step, self._mark = steps + 1, self.trace.mark()
                    step_started = self._mark
                loss, dense_grads, table_grads, finite = self._compute()
                finite = bool(finite)
                if self.trace is not None:
                    self._lap("compute")
                if not finite and self.config.on_nonfinite == "abort":
                    raise self._nonfinite_error(versions[0] // policy.updates_per_step + 1, float(loss))
                # Views of the step's outputs (`.numpy()` would copy): copied once, into the slots, by the push.
                grads = self._by_shard([np.from_dlpack(g) for g in dense_grads]) if finite else [None] * len(self.links)
                # Per server, the touched rows: views of the step's segments.
                sparse = self.tables.gradient([np.from_dlpack(r) for r in table_grads],
                                              self.batch_request) if finite else None
                loss_value = float(loss)
                if self.trace is not None:
                    self._lap("copy_out")
                timer.computed(first=not steps)
                if pending is not None:
                    status, versions = self._finish(pending, pending_request, pushed_at)
                    pending = None
                    if status is not Status.OK:
                        break  # the gradient just computed is not needed any more
                pushed_at = time.perf_counter()
                # The push asks for the rows of a coming batch (read ahead, its request worked out, during the last wait).
                pending_request = self._request_of(lookahead - 1) if self.tables.specs else no_rows
                pending = self._push(base_versions, grads, sparse, steps + 1, loss_value, pending_request)
                steps += 1
                if self.trace is not None:
                    self._lap("push")  # into the slots, and the calls sent (not answered)
                # The batch after it is read (and its row request worked out) while the servers work on
                # the push (in sync, the wait at the barrier), not before it.
                if self.tables.specs:
                    self._request_of(lookahead)
                else:
                    self._ahead(lookahead)
                if self.trace is not None:
                    self._lap("next_batch")
                if not policy.overlaps_compute:
                    status, versions = self._finish(pending, pending_request, pushed_at)
                    pending = None
                if self.trace is not None:
                    self.trace.record("step", step_started, steps, end=self._mark)
                self._record_step(steps, loss_value, timer.exchanged(steps))
        except (ray.exceptions.RayActorError, ray.exceptions.OwnerDiedError, ray.exceptions.RayTaskError,
                ServerGone) as err:
            # A server died: during the call, or (object store) between its reply and the fetch of the
            # parameters it put, which die with it; or it was restarted and is not set up yet. The
            # driver restores a checkpoint and starts the run again.
            if not _server_lost(err):
                raise
            status = Status.SERVER_LOST
        if self.metrics is not None:
            self.metrics.flush()
        wire_sent, wire_received = self._wire_bytes()
        return timer.result(self.index, status, steps, loss_value, self.config.batch_size, **self.traffic,
                            wire_sent=wire_sent - wire_at_start[0], wire_received=wire_received - wire_at_start[1])

    def _wire_bytes(self) -> tuple[int, int]:
        """Bytes its wire links have sent and received so far."""
        wire = [bell.conn for bell in self.bells if isinstance(bell, (WireBell, LeaderBell))]
        return sum(c.bytes_sent for c in wire), sum(c.bytes_received for c in wire)

    def _by_shard(self, values: list) -> list[list]:
        """Per-variable values in shard order (the step's), grouped per server."""
        groups, start = [], 0
        for shard in self.plan.shards:
            groups.append(values[start:start + len(shard.variables)])
            start += len(shard.variables)
        return groups

    def _lap(self, phase: str) -> None:
        """Trace `phase` of the current step: from where the last phase ended until now."""
        self._mark = self.trace.record(phase, self._mark, self._trace_step)

    def trace_track(self):
        """This process's recorded phases (a raytf.observe.trace.Track), or None when tracing is off."""
        return None if self.trace is None else self.trace.track(f"worker {self.index}", self.node_id(), os.getpid())

    def _nonfinite_error(self, step: int, loss: float):
        from raytf.errors import TrainingError

        return TrainingError(
            f"worker {self.index}: the gradient of step {step} is not finite (NaN or Inf; loss {loss:.4g}), and "
            "on_nonfinite is 'abort'.",
            "Lower optimizer.learning_rate, check the data for NaN/Inf, or set on_nonfinite: skip to drop such gradients.",
        )

    def _record_step(self, step: int, loss: float, now: float, window: int = 20) -> None:
        self.metrics.set("raytf_step", step)
        self.metrics.set("raytf_loss", loss)
        if step % window == 0:
            started = getattr(self, "_window_start", None)
            if started is not None:
                self.metrics.set("raytf_samples_per_second", window * self.config.batch_size / (now - started))
            self._window_start = now

    def non_trainable(self) -> list[np.ndarray] | None:
        """The replica's non-trainable values (not the ids a ShardedEmbedding's row cache holds);
        None in a process restarted after its work was done, which was never set up."""
        if self.model is None:
            return None
        return [np.asarray(v.numpy()) for v in self._state_variables()]

    def _state_variables(self) -> list:
        """The replica's non-trainable variables but a ShardedEmbedding's row cache."""
        cache = {id(v) for v in self.tables.cache_ids if v is not None}
        return [v for v in self.model.non_trainable_variables if id(v.value) not in cache]


_BELLS = (Bell, WireBell, LeaderBell)  # what a push may be rung on instead of a Ray call


class _Batch(tuple):
    """A batch read ahead, (features, labels) or (features, labels, weights), and once worked out the rows it needs (`request`)."""

    request: Request | None = None


def _server_lost(err: BaseException) -> bool:
    """Whether a failed call to a server means the server is gone (died, or restarted and not set up)."""
    import ray

    if isinstance(err, ray.exceptions.RayTaskError):
        return isinstance(err.cause, ServerNotReady)
    return True


def _sparse(grad, table):
    """A sparse table's gradient in the step: the ids looked up, flat, and their gradient rows."""
    import tensorflow as tf

    if not isinstance(grad, tf.IndexedSlices):
        from raytf.errors import TrainingError

        raise TrainingError(
            f"The gradient of the sparse table '{table.layer}' is dense in this worker's replica, though it was sparse "
            "on the driver.", "Make the model function build the same model on every call, or set sparse.tables: none.")
    return tf.reshape(grad.indices, [-1]), tf.reshape(grad.values, [-1, table.width])
