"""The worker actor: a model replica and a data shard that computes gradients.

The hot path is two graph-compiled functions: `step` (next batch, forward, backward, one
flat gradient buffer per parameter server, and whether they are all finite) and `load` (split
fresh flat parameter buffers and assign them to the replica's variables). Between them the
buffers go through the transport.

A worker trains until the servers reply "done" (they reached the target version) or
"rollback" (the driver is restoring a checkpoint); if a server dies under it, `run` returns
"server_lost" and the driver takes over. A restarted worker `rejoin`s: it sets up again, is
admitted to the sync barrier from a future round and starts from the parameters of then.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from raytf.ps import DONE, OK, ROLLBACK
from raytf.runtime import configure_tensorflow
from raytf.sharding import ShardPlan
from raytf.transport import LinkSpec, WorkerLink


def warmup_steps(steps: int) -> int:
    """Steps excluded from the steady-state rate (graph tracing, first allocations)."""
    return max(1, min(20, steps // 10))


class Worker:
    def __init__(self, run_id: str, index: int, description: str = "") -> None:
        self.run_id = run_id
        self.index = index
        self.description = description or f"index {index}"
        self.metrics = None  # set when connected (needs Ray)
        self.links: list[WorkerLink] = []

    def __repr__(self) -> str:
        # The dashboard's Actors view shows this ("Repr"); it is taken when the actor starts.
        return f"Worker(run={self.run_id}, {self.description})"

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def setup(self, config: dict[str, Any], plan: ShardPlan, num_workers: int, threads: int) -> dict[str, Any]:
        """Build the replica and the data shard. Returns the GPUs it sees and where its start-up time went."""
        from raytf.startup import ActorTimer

        timer = ActorTimer()
        with timer.span("actor_imports"):
            configure_tensorflow(threads)
            import keras  # noqa: F401 - timed here; _build uses it
            import raytf.model  # noqa: F401
        with timer.span("actor_model_build"):
            gpus = self._build(config, plan, num_workers)
        return {"gpus": gpus, "timings": timer.spans}

    def _build(self, config: dict[str, Any], plan: ShardPlan, num_workers: int) -> int:
        """The replica, its data shard and its compiled step; returns the number of GPUs TensorFlow sees."""
        import keras
        import tensorflow as tf

        from raytf.config import TrainConfig
        from raytf.imports import resolve_callable
        from raytf.model import batches, build_model, first_batch, make_loss, train_dataset, variable_specs

        cfg = TrainConfig.model_validate(config)
        self.config = cfg
        keras.utils.set_random_seed(cfg.seed + 1 + self.index)  # dropout and shuffles differ per worker
        dataset = train_dataset(resolve_callable(cfg.data.train, "data.train"), self.index, num_workers)
        features, labels = first_batch(dataset, cfg.batch_size, "data.train")
        model = build_model(resolve_callable(cfg.model, "model"), features, labels, cfg)
        # Shapes, not names: Keras numbers layer names per process (dense_3 here, dense there).
        if [(v.shape, v.dtype) for v in variable_specs(model)] != [(v.shape, v.dtype) for v in plan.variables]:
            from raytf.errors import TrainingError

            raise TrainingError(
                f"worker {self.index}: the model it built has different variables than the driver's.",
                "Make the model function deterministic (same layers and shapes on every call).",
            )
        self.model = model
        self.plan = plan
        self.iterator = iter(batches(dataset, cfg, self.index))
        try:
            next(iter(dataset.batch(cfg.batch_size, drop_remainder=True)))
        except StopIteration:
            from raytf.errors import ConfigError

            raise ConfigError(
                f"data.train: shard {self.index} of {num_workers} has fewer than batch_size={cfg.batch_size} examples, "
                "so it yields no full batch.",
                "Lower batch_size, use fewer workers, or give each shard more data.",
            ) from None
        loss_fn = make_loss(cfg.loss)
        tvars = model.trainable_variables
        shards = plan.shards

        def step(x, y):
            with tf.GradientTape() as tape:
                outputs = model(x, training=True)
                loss = loss_fn(y, outputs)
                if model.losses:
                    loss = loss + tf.add_n(model.losses)
            grads = tape.gradient(loss, tvars)
            flats = []
            for shard in shards:
                parts = [
                    tf.reshape(tf.zeros_like(tvars[i]) if grads[i] is None else tf.convert_to_tensor(grads[i]), [-1])
                    for i in shard.variables
                ]
                flats.append(parts[0] if len(parts) == 1 else tf.concat(parts, 0))
            # Fused into the step by XLA: one more read of buffers that are hot in cache.
            finite = tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(flat)) for flat in flats]))
            return loss, flats, finite

        def load(*flats):
            for shard, flat in zip(shards, flats):
                parts = tf.split(flat, list(shard.sizes)) if len(shard.sizes) > 1 else [flat]
                for i, part in zip(shard.variables, parts):
                    tvars[i].assign(tf.reshape(part, plan.variables[i].shape))

        self._step_fn = step
        self._step = tf.function(step, jit_compile=cfg.jit_compile)
        self._step_checked = not cfg.jit_compile
        self._load = tf.function(load, input_signature=[tf.TensorSpec([s.size], tf.float32) for s in shards])
        return len(tf.config.list_logical_devices("GPU"))

    def _compute(self):
        x, y = next(self.iterator)  # outside the step: XLA cannot compile dataset iterators
        if self._step_checked:
            return self._step(x, y)
        import tensorflow as tf

        self._step_checked = True
        try:
            return self._step(x, y)
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as err:
            # Some ops have no XLA kernel; train without XLA rather than fail the run.
            print(f"raytf worker {self.index}: XLA could not compile the step ({str(err).splitlines()[0]}); "
                  "continuing without it (set jit_compile: false to skip this check).", flush=True)
            self._step = tf.function(self._step_fn)
            return self._step(x, y)

    def process_id(self) -> int:
        import os

        return os.getpid()

    def connect(self, servers: list, links: list[LinkSpec]) -> list[str]:
        """Map the exchange buffers of every server (again, after the servers were set up anew)."""
        self.servers = servers
        self.links = [WorkerLink(spec, shard.size) for spec, shard in zip(links, self.plan.shards)]
        self.bytes_per_exchange = 4 * sum(shard.size for shard in self.plan.shards)
        if self.metrics is None:
            from raytf.metrics import ActorMetrics

            self.metrics = ActorMetrics(self.config.name, "worker", self.index)
        return [link.kind for link in self.links]

    def rejoin(self, config: dict[str, Any], plan: ShardPlan, num_workers: int, threads: int, servers: list,
               links: list[LinkSpec], target_version: int, mode: str) -> dict[str, Any]:
        """A restarted worker: set up, connect, and train from a round every server admits it to."""
        self.setup(config, plan, num_workers, threads)
        self.connect(servers, links)
        return self.run(target_version, mode, rejoin=True)

    def _finish(self, replies_refs, pushed_at: float | None = None) -> tuple[str, list[int]]:
        """Wait for the servers' replies and load the parameters they published."""
        import ray

        replies = ray.get(replies_refs)
        replied = time.perf_counter()
        statuses = {status for status, _, _ in replies}
        versions = [version for _, version, _ in replies]
        if ROLLBACK in statuses:
            return ROLLBACK, versions
        self._load(*[link.receive(payload) for link, (_, _, payload) in zip(self.links, replies)])
        if self.metrics is not None:
            if pushed_at is not None:
                self.metrics.observe("raytf_push_seconds", replied - pushed_at)
            self.metrics.observe("raytf_pull_seconds", time.perf_counter() - replied)
            self.metrics.inc("raytf_bytes_exchanged", 2 * self.bytes_per_exchange)
        return (DONE if statuses == {DONE} else OK), versions

    def _admit(self) -> tuple[str, list[int]]:
        """Sync: become a member of the barrier from a round no server has started, then pull
        the parameters that round starts from (the same version on every server)."""
        import ray

        while True:
            first = max(ray.get([s.current_version.remote() for s in self.servers])) + 2
            if all(ray.get([s.admit.remote(self.index, first) for s in self.servers])):
                break
            ray.get([s.remove_worker.remote(self.index) for s in self.servers])  # a server moved on meanwhile
        return self._finish([s.pull.remote(self.index, first - 1) for s in self.servers])

    def run(self, target_version: int, mode: str, rejoin: bool = False) -> dict[str, Any]:
        """Train until the servers reach `target_version`. In async mode the next gradient is
        computed while the last push is in flight (so it is one push staler); in sync mode every
        step waits for the barrier."""
        import ray

        updates_per_step = self.config.updates_per_step
        warmup = warmup_steps(target_version // updates_per_step)
        timings = {"compute": 0.0, "exchange": 0.0}
        loss_value = float("nan")
        steps = 0
        warm_time = time.perf_counter()
        startup: dict[str, tuple[float, float]] = {}  # the first pull and the first (compiling) step, wall clock
        try:
            pull_started = time.time()
            if rejoin and mode == "sync":
                status, versions = self._admit()
            else:
                status, versions = self._finish([server.pull.remote(self.index) for server in self.servers])
            startup["first_pull"] = (pull_started, time.time())
            pending = None
            while status == OK:
                t0 = time.perf_counter()
                compute_started = time.time()
                loss, flats, finite = self._compute()
                finite = bool(finite)
                if not steps:
                    startup["first_compile"] = (compute_started, time.time())
                if not finite and self.config.on_nonfinite == "abort":
                    from raytf.errors import TrainingError

                    raise TrainingError(
                        f"worker {self.index}: the gradient of step {versions[0] // updates_per_step + 1} is not finite "
                        f"(NaN or Inf; loss {float(loss):.4g}), and on_nonfinite is 'abort'.",
                        "Lower optimizer.learning_rate, check the data for NaN/Inf, or set on_nonfinite: skip to drop "
                        "such gradients.",
                    )
                grads = [flat.numpy() for flat in flats] if finite else [None] * len(flats)
                loss_value = float(loss)
                t1 = time.perf_counter()
                if pending is not None:
                    status, versions = self._finish(pending, pushed_at)
                    pending = None
                    if status != OK:
                        break  # the gradient just computed is not needed any more
                payloads = [link.send(grad) if finite else None for link, grad in zip(self.links, grads)]
                pushed_at = time.perf_counter()
                pending = [
                    server.push.remote(self.index, versions[j], payload, steps + 1, loss_value if j == 0 else None, finite)
                    for j, (server, payload) in enumerate(zip(self.servers, payloads))
                ]
                steps += 1
                if mode == "sync":
                    status, versions = self._finish(pending, pushed_at)
                    pending = None
                t2 = time.perf_counter()
                self._record_step(steps, loss_value, t2)
                if steps == warmup:
                    warm_time = t2
                    timings = {"compute": 0.0, "exchange": 0.0}
                else:
                    timings["compute"] += t1 - t0
                    timings["exchange"] += t2 - t1
        except ray.exceptions.RayActorError:
            status = "server_lost"  # the driver restores a checkpoint and starts the run again
        end_time = time.perf_counter()
        measured = steps - warmup
        seconds = end_time - warm_time
        return {
            "index": self.index,
            "status": status,
            "steps": steps,
            "final_loss": loss_value,
            "measured_steps": max(measured, 0),
            "samples_per_second": measured * self.config.batch_size / seconds if measured > 0 and seconds > 0 else 0.0,
            "ms_compute_per_step": 1000 * timings["compute"] / max(measured, 1),
            "ms_exchange_per_step": 1000 * timings["exchange"] / max(measured, 1),
            "startup": startup,
        }

    def _record_step(self, step: int, loss: float, now: float, window: int = 20) -> None:
        self.metrics.set("raytf_step", step)
        self.metrics.set("raytf_loss", loss)
        if step % window == 0:
            started = getattr(self, "_window_start", None)
            if started is not None:
                self.metrics.set("raytf_samples_per_second", window * self.config.batch_size / (now - started))
            self._window_start = now

    def non_trainable(self) -> list[np.ndarray]:
        return [np.asarray(v.numpy()) for v in self.model.non_trainable_variables]
