"""The references of examples/benchmark.py and its Ray Train contender.

Two references, measured between every two contenders (`References`):
- the ceiling: 2 independent Ray actors (one TF thread each) training the same model on the same
  per-worker pipeline as raytf's workers (`raytf.replica.model.batches` on shard i of 2, batch 256, same
  loss, SGD), with no exchange at all;
- single-process: ONE actor with 2 TF threads doing the same math as 2 synchronous workers, one SGD
  update per step on a global batch of 512 (the data function's whole data, `batches` at 512).
Ray Train trains the same model with MultiWorkerMirroredStrategy. All skip the same warm-up steps
(`warmup_steps`) and XLA-compile the step when raytf's worker does (`jit_setting`).

And one bound (`run_wire_floor`, the `wire-floor-2nodes` row): the ceiling's two actors on the workers'
node, the first of them also moving what a sync round must move between the nodes (its parameters' bytes
to an actor on the servers' node over TCP and as many back) after every step, on a thread of its own
and overlapped with the next step (which waits only for the round before it). No sum, no update, no
barrier: what a data plane over that link could reach at best without compressing.
"""

from __future__ import annotations

import socket
import tempfile
import threading
import time


def jit_setting(cfg) -> bool:
    # raytf's worker XLA-compiles its step as the config's jit_compile says (older configs lack it).
    return bool(getattr(cfg, "jit_compile", False))


class IndependentTrainer:
    """One Ray actor training its own replica with local SGD and no exchange at all: shard `index`
    of `num_workers` at the config's batch size, with `threads` TF threads."""

    def setup(self, config: dict, index: int, num_workers: int, threads: int = 1) -> None:
        from raytf.runtime import configure_tensorflow

        configure_tensorflow(threads)  # ceiling: one per 1-CPU actor, as raytf's workers get
        import keras
        import tensorflow as tf

        from raytf.config import TrainConfig
        from raytf.config.imports import resolve_callable
        from raytf.data.datasets import batches, first_batch, train_dataset
        from raytf.replica.model import make_loss

        cfg = TrainConfig.model_validate(config)
        self.batch_size = cfg.batch_size
        self.cores = _pin_as_raytf_pins_its_workers(cfg, index, num_workers, threads)
        keras.utils.set_random_seed(cfg.seed + 1 + index)
        dataset = train_dataset(resolve_callable(cfg.data.train, "data.train"), index, num_workers)
        self.iterator = iter(batches(dataset, cfg, index))
        model = resolve_callable(cfg.model, "model")()
        loss_fn = make_loss(cfg.loss)
        optimizer = keras.optimizers.SGD(cfg.optimizer.learning_rate)
        model(first_batch(dataset, cfg.batch_size, "data.train")[0], training=False)  # build, as raytf does
        optimizer.build(model.trainable_variables)

        def step(x, y):  # the same forward/backward as raytf's worker step, then a local update
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
                if model.losses:
                    loss = loss + tf.add_n(model.losses)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        self._step = tf.function(step, jit_compile=jit_setting(cfg))
        self._model = model
        self._rounds: RoundTrips | None = None

    def parameter_bytes(self) -> int:
        return sum(int(v.numpy().nbytes) for v in self._model.trainable_variables)

    def exchange_with(self, host: str, port: int, nbytes: int) -> None:
        """From now on, send `nbytes` to a WireSink at (host, port) and read as many back after every step."""
        self._rounds = RoundTrips(host, port, nbytes)

    def run(self, steps: int) -> dict:
        from raytf.observe.steady import CpuWindow, warmup_steps

        warmup = warmup_steps(steps)
        # The process's CPU (every thread) per step, as raytf's workers measure theirs: what a step
        # costs with no exchange at all.
        cpu = CpuWindow()
        start = time.perf_counter()
        for step in range(steps):
            x, y = next(self.iterator)  # outside the step, as in raytf's worker: XLA cannot compile iterators
            loss = float(self._step(x, y))  # float(): wait for the step, as raytf's worker does
            if self._rounds is not None:
                self._rounds.next_round()  # waits for the round before it only
            cpu.tick()
            if step + 1 == warmup:
                start = time.perf_counter()
                cpu.start()
        if self._rounds is not None:
            self._rounds.close()  # the last round is in
        seconds = time.perf_counter() - start
        cpu_ms, cpu_sys_ms = cpu.per_event()
        return {"samples_per_second": (steps - warmup) * self.batch_size / seconds, "final_loss": loss,
                "cpu_ms_per_step": cpu_ms, "cpu_sys_ms_per_step": cpu_sys_ms}


class RoundTrips:
    """`nbytes` out and as many back over one TCP connection per round, on a thread of its own: a
    round starts when `next_round` is called and the one before it is in."""

    def __init__(self, host: str, port: int, nbytes: int) -> None:
        import numpy as np

        self.sock = _as_the_wire_sets_it(socket.create_connection((host, port), timeout=60))
        self.out, self.back = np.ones(nbytes, np.uint8), np.zeros(nbytes, np.uint8)
        self.go, self.done = threading.Semaphore(0), threading.Semaphore(1)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, name="round-trips", daemon=True)
        self.thread.start()

    def next_round(self) -> None:
        self.done.acquire()
        if self.error is not None:
            raise RuntimeError(f"the round trips failed: {self.error}")
        self.go.release()

    def close(self) -> None:
        self.done.acquire()
        self.sock.close()  # the sink sees the end and returns
        self.go.release()
        self.thread.join(timeout=60)

    def _serve(self) -> None:
        view = memoryview(self.back)
        while True:
            self.go.acquire()
            if self.sock.fileno() < 0:
                return
            try:
                self.sock.sendall(self.out)
                got = 0
                while got < len(view):
                    got += self.sock.recv_into(view[got:])
            except OSError as err:
                self.error = err
            self.done.release()


class WireSink:
    """The servers' end of `RoundTrips`: reads a round's bytes, sends as many back, until the other end closes."""

    def listen(self, nbytes: int, host: str | None = None) -> tuple[str, int]:
        """Listen on `host` (default: this Ray node's address) for the rounds of `nbytes` each way."""
        from raytf.exchange.wire import SOCKET_BUFFER

        if host is None:
            import ray

            host = ray.util.get_node_ip_address()
        self.nbytes = nbytes
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)  # before listen: inherited
        self.listener.bind((host, 0))
        self.listener.listen(1)
        return self.listener.getsockname()[:2]

    def serve(self, warmup: int) -> dict:
        """Serve rounds until the connection ends; the process's CPU per round after the first `warmup`."""
        import numpy as np

        from raytf.observe.steady import CpuWindow

        self.listener.settimeout(600)
        conn = _as_the_wire_sets_it(self.listener.accept()[0])
        buffer = np.zeros(self.nbytes, np.uint8)
        view, rounds, cpu = memoryview(buffer), 0, CpuWindow()
        while True:
            got = 0
            while got < len(view):
                n = conn.recv_into(view[got:])
                if n == 0:
                    conn.close()
                    cpu_ms, cpu_sys_ms = cpu.per_event()
                    return {"rounds": rounds, "cpu_ms_per_round": cpu_ms, "cpu_sys_ms_per_round": cpu_sys_ms}
                got += n
            conn.sendall(buffer)
            rounds += 1
            cpu.tick()
            if rounds == warmup:
                cpu.start()


def _as_the_wire_sets_it(sock: socket.socket) -> socket.socket:
    """Socket buffers and Nagle as raytf's wire sets them (raytf.exchange.wire), blocking."""
    from raytf.exchange.wire import SOCKET_BUFFER

    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def run_wire_floor(cfg, steps: int) -> dict:
    """The `wire-floor-2nodes` bound (the module's docstring): the ceiling's actors on the workers' node,
    the first moving a sync round's bytes to and from the servers' node after every step."""
    import ray

    from raytf.observe.steady import warmup_steps

    workers = cfg.distribution.workers
    trainers = [ray.remote(num_cpus=0, resources={"bench_worker": 1})(IndependentTrainer).remote() for _ in range(workers)]
    sink = ray.remote(num_cpus=0, resources={"bench_ps": 1})(WireSink).remote()
    try:
        ray.get([t.setup.remote(cfg.to_dict(), i, workers) for i, t in enumerate(trainers)])
        ray.get([t.run.remote(10) for t in trainers])  # as the references: first-run costs (tracing, XLA) paid
        nbytes = ray.get(trainers[0].parameter_bytes.remote())
        host, port = ray.get(sink.listen.remote(nbytes))
        served = sink.serve.remote(warmup_steps(steps))
        ray.get(trainers[0].exchange_with.remote(host, port, nbytes))
        results = ray.get([t.run.remote(steps) for t in trainers])
        sunk = ray.get(served, timeout=120)
    finally:
        for actor in (*trainers, sink):
            ray.kill(actor)
    if sunk["rounds"] != steps:
        raise RuntimeError(f"the sink served {sunk['rounds']} rounds of {steps}")
    return {"samples_per_second": sum(r["samples_per_second"] for r in results),
            "bytes_each_way_per_round": nbytes,
            "cpu_ms_per_round": sum(r["cpu_ms_per_step"] for r in results) + sunk["cpu_ms_per_round"],
            "cpu_sys_ms_per_round": sum(r["cpu_sys_ms_per_step"] for r in results) + sunk["cpu_sys_ms_per_round"]}


REFERENCES = ("ceiling", "single-process")


class References:
    """The reference actors, created once for a whole benchmark and measured again at every R.

    They hold no logical CPUs (num_cpus=0): idle between measurements, they must not keep raytf's
    actors from being scheduled on a 2-CPU cluster; they use real CPU only while they run."""

    def __init__(self, cfg) -> None:
        import ray

        workers = cfg.distribution.workers
        self.ceiling = [ray.remote(num_cpus=0)(IndependentTrainer).remote() for _ in range(workers)]
        self.single = ray.remote(num_cpus=0)(IndependentTrainer).remote()
        # Same math as `workers` synchronous workers in one process: one update on their global batch,
        # with as many TF threads as they have between them.
        whole = cfg.to_dict() | {"batch_size": cfg.batch_size * workers}
        try:
            ray.get([a.setup.remote(cfg.to_dict(), i, workers) for i, a in enumerate(self.ceiling)]
                    + [self.single.setup.remote(whole, 0, 1, workers)])
            self.measure(10)  # not recorded: the first R would otherwise also pay first-run costs (tracing, XLA)
        except BaseException:
            self.close()
            raise

    def measure(self, steps: int) -> dict[str, dict]:
        """{reference: {samples_per_second} or {error}}, the ceiling first, then single-process."""
        import ray

        results: dict[str, dict] = {}
        for name, run in (("ceiling", self._ceiling), ("single-process", self._single)):
            try:
                results[name] = run(steps)
            except ray.exceptions.RayError as err:  # recorded; the contenders next to it use the other R
                results[name] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0]}"}
        return results

    def _ceiling(self, steps: int) -> dict:
        import ray

        # Both actors were built before, so the timed steps really run side by side.
        results = ray.get([a.run.remote(steps) for a in self.ceiling])
        # A round: one step of each actor, as a round of the contenders is one step per worker.
        return {"samples_per_second": sum(r["samples_per_second"] for r in results),
                "cpu_ms_per_round": sum(r["cpu_ms_per_step"] for r in results),
                "cpu_sys_ms_per_round": sum(r["cpu_sys_ms_per_step"] for r in results)}

    def _single(self, steps: int) -> dict:
        import ray

        result = ray.get(self.single.run.remote(steps))  # one step on the global batch: a round
        return {"samples_per_second": result["samples_per_second"], "cpu_ms_per_round": result["cpu_ms_per_step"],
                "cpu_sys_ms_per_round": result["cpu_sys_ms_per_step"]}

    def close(self) -> None:
        import ray

        for actor in (*self.ceiling, self.single):
            ray.kill(actor)


def _ray_train_loop(loop_config: dict) -> None:
    from raytf.runtime import configure_tensorflow

    configure_tensorflow(1)  # same thread budget as the other contenders
    import keras
    import ray.train
    import tensorflow as tf

    from raytf.config import TrainConfig
    from raytf.config.imports import resolve_callable
    from raytf.data.datasets import batches, train_dataset
    from raytf.replica.model import make_loss
    from raytf.observe.steady import warmup_steps

    cfg = TrainConfig.model_validate(loop_config["config"])
    steps = loop_config["steps"]
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    data_fn = resolve_callable(cfg.data.train, "data.train")

    def per_worker(ctx):  # each worker reads its own shard at batch 256, like raytf's workers
        shard = ctx.input_pipeline_id
        return batches(train_dataset(data_fn, shard, ctx.num_input_pipelines), cfg, shard)

    iterator = iter(strategy.distribute_datasets_from_function(per_worker))
    with strategy.scope():
        model = resolve_callable(cfg.model, "model")()
        optimizer = keras.optimizers.SGD(cfg.optimizer.learning_rate)
        optimizer.build(model.trainable_variables)
    loss_fn = make_loss(cfg.loss)

    # A custom loop: Keras 3's model.fit failed on this distributed dataset ("Attempt to convert a
    # value (PerDistributedValues ...) with an unsupported type PerReplica to a Tensor"). Forward/backward is XLA-compiled when raytf's is; the
    # all-reduce (inside the Keras optimizer, SUM over replicas) and the update stay outside, as
    # raytf's exchange does.
    @tf.function(jit_compile=jit_setting(cfg))
    def gradients(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
            scaled = loss / strategy.num_replicas_in_sync  # the optimizer sums the replicas' gradients
        return loss, tape.gradient(scaled, model.trainable_variables)

    def replica_step(x, y):
        loss, grads = gradients(x, y)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function
    def train_step(iterator):
        x, y = next(iterator)
        return strategy.run(replica_step, args=(x, y))

    warmup = warmup_steps(steps)
    start = time.perf_counter()
    for step in range(steps):
        float(strategy.experimental_local_results(train_step(iterator))[0])  # wait for the step
        if step + 1 == warmup:
            start = time.perf_counter()
    seconds = time.perf_counter() - start
    global_batch = cfg.batch_size * strategy.num_replicas_in_sync  # all-reduce keeps the workers in lockstep
    metrics = {"samples_per_second": (steps - warmup) * global_batch / seconds}
    # Ray Train 2 keeps only metrics that come with a checkpoint (rank 0's), so attach an empty one.
    with tempfile.TemporaryDirectory() as empty:
        rank0 = ray.train.get_context().get_world_rank() == 0
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(empty) if rank0 else None)


def run_ray_train(cfg, steps: int, storage_path: str) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    trainer = TensorflowTrainer(
        _ray_train_loop,
        train_loop_config={"config": cfg.to_dict(), "steps": steps},
        scaling_config=ScalingConfig(num_workers=cfg.distribution.workers, use_gpu=False, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(storage_path=storage_path, name=f"ray-train-{int(time.time())}"),
    )
    return {"samples_per_second": trainer.fit().metrics["samples_per_second"]}


def _pin_as_raytf_pins_its_workers(cfg, index: int, num_workers: int, threads: int) -> tuple[int, ...]:
    """The reference's actors on cores of their own where raytf's workers would be (the same rule,
    raytf.replica.placement): the ratio compares exchange against none, not two placements."""
    import ray

    from raytf.replica.placement import pin_as_configured

    if cfg.distribution.pin_workers == "off":
        return ()  # no need to ask Ray for the node's CPUs
    here = ray.get_runtime_context().get_node_id()
    node_cpus = next((n.get("Resources", {}).get("CPU", 0.0) for n in ray.nodes() if n["NodeID"] == here), 0.0)
    each = max(cfg.distribution.worker_resources.num_cpus, threads)  # the single-process reference: all its threads'
    return pin_as_configured(cfg.distribution, index, num_workers, node_cpus, each)
