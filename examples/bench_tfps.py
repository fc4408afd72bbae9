"""The `tf-ps` contender of examples/benchmark.py: TensorFlow's own ParameterServerStrategy, with
its servers in Ray actors, as a user would try it.

Three Ray actors each run a `tf.distribute.Server` (1 `ps` task, 2 `worker` tasks) and a fourth is
the coordinator (`chief`): it builds the variables under `ParameterServerStrategy` (they live on the
ps task; large ones cut by a `variable_partitioner`, one shard per ps) and schedules steps on the
workers with `ClusterCoordinator`. The model is the benchmark MLP, or the click model of
examples/recsys.py (`RECSYS`: its item table looked up with `tf.nn.embedding_lookup`, rows only). Every address in the
cluster spec, so every address a task connects to, is 127.0.0.1; but TF's gRPC server LISTENS on
all interfaces (`ss -ltn` shows `*:port`; tf.distribute.Server has no bind-address option), with no
authentication, for as long as this contender runs. Training is asynchronous, as that strategy is:
each scheduled step reads the current parameters from the ps, computes gradients of one batch of
256 on one worker and applies them to the ps's variables with SGD.
"""

from __future__ import annotations

import os
import socket
import time

HOST = "127.0.0.1"
WORKERS = 2


def _address(across_nodes: bool) -> str:
    """host:port for this actor's task: 127.0.0.1, or across nodes its node's address. The port is
    bound and released: the server takes it moments later (a rare race, then the run fails and says so)."""
    host = HOST
    if across_nodes:
        import ray

        host = ray.util.get_node_ip_address()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return f"{host}:{s.getsockname()[1]}"


class CpuMeter:
    """A task's process CPU (every thread) over the timed steps, measured as raytf's actors measure theirs."""

    def start_cpu(self) -> None:
        from raytf.observe.steady import CpuWindow

        self._cpu = CpuWindow()
        self._cpu.start()

    def cpu_ms(self) -> tuple[float, float]:
        """(CPU ms, of which system ms) since `start_cpu`."""
        self._cpu.tick()
        return self._cpu.per_event()  # one event: the whole window


class TaskServer(CpuMeter):
    """One task (ps or worker) of the TF cluster, in its own Ray actor."""

    def address(self, across_nodes: bool) -> str:
        return _address(across_nodes)

    def start(self, cluster: dict, job: str, index: int, threads: int) -> None:
        os.environ["GRPC_FAIL_FAST"] = "use_caller"  # as TF's ParameterServerStrategy guide says
        from raytf.runtime import configure_tensorflow

        configure_tensorflow(threads)
        import tensorflow as tf

        # At least 2 inter-op threads: with 1, a scheduled step hangs for ever (the remote function
        # holds the only thread while it waits for its own inputs; seen with TF 2.21).
        session = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads,
                                           inter_op_parallelism_threads=max(2, threads))
        self.server = tf.distribute.Server(tf.train.ClusterSpec(cluster), job_name=job, task_index=index,
                                           protocol="grpc", config=session, start=True)


class Coordinator(CpuMeter):
    """The chief: variables on the ps, steps scheduled on the workers."""

    def address(self, across_nodes: bool) -> str:
        return _address(across_nodes)

    def setup(self, cluster: dict, config: dict) -> None:
        os.environ["GRPC_FAIL_FAST"] = "use_caller"
        from raytf.runtime import configure_tensorflow

        configure_tensorflow(2)  # it only schedules; 2 inter-op threads as the servers (see TaskServer)
        import tensorflow as tf

        from raytf.config import TrainConfig
        from raytf.config.imports import resolve_callable
        from raytf.data.datasets import batches, train_dataset

        cfg = TrainConfig.model_validate(config)
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster), task_type="chief", task_id=0, rpc_layer="grpc")
        # A user's set-up: large variables cut into one shard per ps (here one ps: one shard).
        partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
            min_shard_bytes=256 << 10, max_shards=len(cluster["ps"]))
        strategy = tf.distribute.experimental.ParameterServerStrategy(resolver, variable_partitioner=partitioner)
        self.coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
        data_fn = resolve_callable(cfg.data.train, "data.train")

        def dataset_fn(context):  # the same synthetic generator and pipeline, batch 256 per worker
            shard = context.input_pipeline_id  # ClusterCoordinator builds one dataset function for all workers
            return batches(train_dataset(data_fn, shard, WORKERS), cfg, shard)

        def per_worker_dataset():
            return strategy.distribute_datasets_from_function(dataset_fn)

        self.iterator = iter(self.coordinator.create_per_worker_dataset(per_worker_dataset))

        if cfg.model in RECSYS:
            replica_step = _recsys_step(strategy, cfg, *RECSYS[cfg.model])
        else:
            replica_step = _mlp_step(strategy, cfg)

        @tf.function
        def worker_step(iterator):
            x, y = next(iterator)
            return strategy.run(replica_step, args=(x, y))

        self._step = worker_step
        self.batch_size = cfg.batch_size

    def warm_up(self, steps: int) -> int:
        """The first steps of `steps` per worker (WORKERS * warmup scheduled steps), not timed; returns how many."""
        from raytf.observe.steady import warmup_steps

        warmup = warmup_steps(steps)
        for _ in range(WORKERS * warmup):
            self.coordinator.schedule(self._step, args=(self.iterator,))
        self.coordinator.join()
        return warmup

    def run(self, steps: int) -> dict:
        """`steps` more per worker, timed."""
        start = time.perf_counter()
        for _ in range(WORKERS * steps):
            last = self.coordinator.schedule(self._step, args=(self.iterator,))
        self.coordinator.join()
        seconds = time.perf_counter() - start
        return {"samples_per_second": steps * WORKERS * self.batch_size / seconds, "final_loss": float(last.fetch())}


def _mlp_step(strategy, cfg):
    import tensorflow as tf

    from examples.bench_baselines import jit_setting

    # Plain tf.Variables, not examples.synthetic's Keras model: the XLA-compiled forward/backward
    # below is a pure function of the parameter values read from the ps. (Keras 3.15's model does
    # build its variables on the ps under this strategy and runs a forward pass in a scheduled
    # function; a Keras training loop under it was not tried.) The same MLP, written out:
    # 784-1024-1024-10, relu, Glorot-uniform kernels and zero biases as Keras' Dense initializes them.
    sizes = [784, 1024, 1024, 10]
    with strategy.scope():
        params = []
        for layer, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
            limit = (6 / (fan_in + fan_out)) ** 0.5
            params.append(tf.Variable(tf.random.stateless_uniform(
                (fan_in, fan_out), seed=(cfg.seed, layer), minval=-limit, maxval=limit)))
            params.append(tf.Variable(tf.zeros([fan_out])))
    lr = cfg.optimizer.learning_rate

    # Forward/backward is one XLA-compiled function of the parameters' values (as raytf's worker
    # step and the other contenders are when jit_compile is on); reading the values from the ps
    # and the SGD update on the ps stay outside it.
    @tf.function(jit_compile=jit_setting(cfg))
    def gradients(values, x, y):
        with tf.GradientTape() as tape:
            tape.watch(values)
            h = x
            for i in range(0, len(values) - 2, 2):
                h = tf.nn.relu(h @ values[i] + values[i + 1])
            logits = h @ values[-2] + values[-1]
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(y, tf.int32), logits))
        return loss, tape.gradient(loss, values)

    def replica_step(x, y):
        loss, grads = gradients([p.read_value() for p in params], x, y)
        for p, g in zip(params, grads):
            p.assign_sub(lr * g)
        return loss

    return replica_step


# The click model of examples/recsys.py, by its model function: (items, width).
RECSYS = {"examples.recsys:build_model": (1_000_000, 64), "examples.recsys:build_small_model": (20_000, 16)}


def _recsys_step(strategy, cfg, items: int, width: int):
    """The click model written out for the strategy: the item table a variable on the ps (a
    ShardedVariable where the strategy's `variable_partitioner` cuts it: one shard per ps), looked up
    with `tf.nn.embedding_lookup` (only the rows a batch needs travel from the ps), its gradient
    applied to those rows only (`scatter_sub`), the small dense part as plain variables; SGD."""
    import tensorflow as tf

    with strategy.scope():
        table = tf.Variable(tf.random.stateless_uniform((items, width), seed=(cfg.seed, 0), minval=-0.05,
                                                        maxval=0.05), name="items")
        dense = []
        for layer, (fan_in, fan_out) in enumerate([(width, 32), (32, 1)]):
            limit = (6 / (fan_in + fan_out)) ** 0.5
            dense.append(tf.Variable(tf.random.stateless_uniform(
                (fan_in, fan_out), seed=(cfg.seed, layer + 1), minval=-limit, maxval=limit)))
            dense.append(tf.Variable(tf.zeros([fan_out])))
    shards = list(getattr(table, "variables", [table]))
    lr = cfg.optimizer.learning_rate

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            pooled = tf.reduce_mean(tf.nn.embedding_lookup(table, x), axis=1)
            hidden = tf.nn.relu(pooled @ dense[0] + dense[1])
            logit = tf.squeeze(hidden @ dense[2] + dense[3], axis=1)
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(y, tf.float32), logits=logit))
        grads = tape.gradient(loss, shards + dense)
        for shard, grad in zip(shards, grads):
            shard.scatter_sub(tf.IndexedSlices(lr * grad.values, grad.indices, grad.dense_shape))
        for var, grad in zip(dense, grads[len(shards):]):
            var.assign_sub(lr * grad)
        return loss

    return replica_step


def _say(message: str) -> None:
    import sys

    print(f"[benchmark] {message}", file=sys.stderr, flush=True)


def run_tf_ps(cfg, steps: int, across_nodes: bool = False) -> dict:
    """`across_nodes`: the ps and the chief on the node with resource `bench_ps`, the workers on the
    one with `bench_worker` (examples/benchmark.py's two-node clusters), each task at its node's address."""
    import ray

    # Workers hold one CPU each as raytf's do; the ps and the chief none (raytf's servers hold none either).
    ps_node = {"resources": {"bench_ps": 0.5}} if across_nodes else {}
    worker_node = {"resources": {"bench_worker": 1}} if across_nodes else {}
    ps = ray.remote(num_cpus=0, **ps_node)(TaskServer).remote()
    workers = [ray.remote(num_cpus=1, **worker_node)(TaskServer).remote() for _ in range(WORKERS)]
    chief = ray.remote(num_cpus=0, **ps_node)(Coordinator).remote()
    actors = [ps, *workers, chief]
    try:
        addresses = ray.get([a.address.remote(across_nodes) for a in actors])
        cluster = {"ps": addresses[:1], "worker": addresses[1:1 + WORKERS], "chief": addresses[-1:]}
        # One TF thread per task, as raytf's workers and its async server (this training is asynchronous) get.
        ray.get([ps.start.remote(cluster, "ps", 0, 1)]
                + [w.start.remote(cluster, "worker", i, 1) for i, w in enumerate(workers)])
        _say(f"tf-ps: servers up at {cluster}")
        ray.get(chief.setup.remote(cluster, cfg.to_dict()))
        _say("tf-ps: coordinator ready")
        timed = steps - ray.get(chief.warm_up.remote(steps))
        # Every task's process CPU over the timed steps, as raytf's contenders report theirs (benchmark.cpu_bound).
        ray.get([a.start_cpu.remote() for a in actors])
        result = ray.get(chief.run.remote(timed))
        used = ray.get([a.cpu_ms.remote() for a in actors])
    finally:
        for actor in (chief, ps, *workers):  # the chief first: it would log every server that goes away
            ray.kill(actor)
        _wait_gone(actors)
    # A round: one step per worker (WORKERS x batch samples), as for raytf's contenders.
    cpu, cpu_sys = (sum(task[k] for task in used) / max(timed, 1) for k in (0, 1))
    samples = WORKERS * cfg.batch_size
    return {"samples_per_second": result["samples_per_second"], "final_loss": result["final_loss"],
            "cpu_ms_per_round": cpu, "cpu_sys_ms_per_round": cpu_sys,
            "cpu_bound_samples_per_second": (os.cpu_count() or 1) * 1000 / max(cpu, 1e-9) * samples}


def _wait_gone(actors: list, timeout: float = 30.0) -> None:
    """Until every killed actor's process is gone (ray.kill returns at once): a measurement right
    after must not share the cores with TensorFlow servers still shutting down."""
    import time

    import ray

    deadline = time.monotonic() + timeout
    for actor in actors:
        while time.monotonic() < deadline:
            try:
                ray.get(actor.__ray_ready__.remote(), timeout=1.0)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError):
                break
            except ray.exceptions.GetTimeoutError:
                continue
            time.sleep(0.05)  # still answering: the kill has not reached it yet
