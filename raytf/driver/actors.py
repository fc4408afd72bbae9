"""Creating, naming, wiring and releasing a run's actors.

Names are stable so the Ray dashboard's Actors view tells the story:
`raytf:<run name>:ps-<i>` and `raytf:<run name>:worker-<i>`, in the Ray namespace `raytf-<run id>`
(so two runs with the same name never collide).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from raytf.exchange.shard_state import ShardState
from raytf.config import Resources, TrainConfig
from raytf.errors import ClusterError, RaytfError, TrainingError
from raytf.exchange.server import ServerSettings
from raytf.exchange.sharding import ShardPlan
from raytf.observe.startup import StartupClock
from raytf.exchange.transport import LinkSpec, remove_shm_files
from raytf.exchange.policies import policy_for


def actor_name(run_name: str, role: str, index: int) -> str:
    return f"raytf:{run_name}:{role}-{index}"


def _options(resources: Resources) -> dict[str, Any]:
    options: dict[str, Any] = {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus}
    if resources.resources:
        options["resources"] = dict(resources.resources)
    return options


def check_resources(config: TrainConfig, available: dict[str, float]) -> None:
    """Fail before creating actors when the cluster can never fit them (they would wait forever)."""
    d = config.distribution
    need: dict[str, float] = {}
    for count, res in ((d.workers, d.worker_resources), (d.parameter_servers, d.ps_resources)):
        for key, amount in (("CPU", res.num_cpus), ("GPU", res.num_gpus), *res.resources.items()):
            need[key] = need.get(key, 0.0) + count * amount
    for key, amount in need.items():
        have = available.get(key, 0.0)
        if amount > have + 1e-9:
            setting = {"CPU": "num_cpus", "GPU": "num_gpus"}.get(key, f"resources.{key}")
            raise ClusterError(
                f"The run needs {amount:g} {key} ({d.workers} workers and {d.parameter_servers} parameter servers) "
                f"but the cluster has {have:g}.",
                f"Lower distribution.workers, or distribution.worker_resources.{setting} / "
                f"distribution.ps_resources.{setting}, or use a bigger cluster.",
            )


def unwrap(err: BaseException) -> BaseException:
    """The user-facing error behind a Ray task error, when there is one."""
    import ray

    if isinstance(err, ray.exceptions.RayTaskError) and isinstance(err.cause, RaytfError):
        return err.cause
    return err


def get(refs, what: str):
    import ray

    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as err:
        cause = unwrap(err)
        if cause is not err:
            raise cause from None
        detail = " ".join(str(err.cause).split())[:400]  # one line; TF's messages span many
        raise TrainingError(f"{what} failed: {type(err.cause).__name__}: {detail}",
                            "Fix the cause above; rerun with --debug for the actor's traceback.") from err
    except ray.exceptions.RayActorError as err:
        raise TrainingError(f"{what}: an actor died ({err.__class__.__name__}).", "See the actor's log in the Ray dashboard.") from err


def actor_state(handle) -> tuple[int, str] | None:
    """(restarts, state) of an actor as Ray's GCS has it: how many times Ray restarted its process,
    and ALIVE, RESTARTING, DEAD (Ray gave up on it) or PENDING_CREATION; None if the GCS does not
    know it. Ray's public API has neither (`ray.util.state` goes through the dashboard, which may be
    off, and has no restart count), so this reads the GCS's actor table through Ray's private
    `ray._private.state`, here and nowhere else."""
    from ray._private.state import state

    info = state.actor_table(handle._actor_id.hex())
    if not info:
        return None
    return int(info["NumRestarts"]), str(info["State"])


@dataclass
class RunActors:
    run_id: str
    servers: list
    workers: list
    worker_threads: int = 1
    links: list[list[LinkSpec]] = field(default_factory=list)  # [server][worker], as wired (a rejoin relinks)
    link_kinds: list[list[str]] = field(default_factory=list)  # [worker][server], now
    server_nodes: set[str] = field(default_factory=set)  # every node a server ran on (its exchange files are there)

    def links_of(self, worker: int) -> list[LinkSpec]:
        return [per_server[worker] for per_server in self.links]

    def release(self) -> None:
        import ray

        for server in self.servers:
            try:
                ray.get(server.close.remote(), timeout=10)
            except (ray.exceptions.RayError, TimeoutError):
                pass  # it may already be dead; its files are swept below
        for actor in self.servers + self.workers:
            ray.kill(actor, no_restart=True)
        remove_shm_files(self.run_id)
        self._sweep_other_nodes()

    def _sweep_other_nodes(self) -> None:
        """Remove the run's exchange files on the other nodes a server ran on: a server that was
        killed there (and restarted elsewhere, or not at all) could not remove its own. One
        zero-CPU task per such node; a node that is gone meanwhile took its files along."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = ray.get_runtime_context().get_node_id()
        alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        nodes = sorted((self.server_nodes - {here}) & alive)
        if not nodes:
            return
        sweep = ray.remote(num_cpus=0, max_retries=0)(remove_shm_files)
        refs = [sweep.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(self.run_id)
                for node in nodes]
        ray.wait(refs, num_returns=len(refs), timeout=30)  # bounded: the run is over, do not hang on a sick node


def server_settings(config: TrainConfig, checkpoint_dir: str | None, plan: ShardPlan) -> ServerSettings:
    d = config.distribution
    policy = policy_for(config.distribution)
    ups = policy.updates_per_step
    # Where the workers wait while a server applies (sync), it may use two cores then.
    threads = d.ps_threads or (2 if policy.workers_idle_during_update else max(1, int(d.ps_resources.num_cpus)))
    return ServerSettings(run_name=config.name, distribution=d, threads=threads, target_version=config.steps * ups,
                          updates_per_step=ups, checkpoint_dir=checkpoint_dir,
                          every_versions=config.checkpoint.every_steps * ups, dense_slots=config.sparse.slots == "dense",
                          tables=plan.tables, trace_steps=config.trace.max_steps if config.trace.enabled else 0)


def create(config: TrainConfig, run_id: str, plan: ShardPlan) -> RunActors:
    """Create the servers and workers (restartable: Ray starts a new process when one dies)."""
    import ray

    from raytf.exchange.server import ParameterServer
    from raytf.replica.worker import Worker

    d = config.distribution
    mode = policy_for(config.distribution).describe()
    namespace = f"raytf-{run_id}"
    restarts = {"max_restarts": d.max_restarts, "max_task_retries": 0}  # raytf replays the work itself
    ps_cls = ray.remote(ParameterServer)
    worker_cls = ray.remote(Worker)
    servers = [
        ps_cls.options(name=actor_name(config.name, "ps", i), namespace=namespace,
                       max_concurrency=d.workers + 4, **restarts, **_options(d.ps_resources)).remote(
            run_id, i, f"shard {i}/{d.parameter_servers}: {plan.shards[i].size:,} floats, {mode}, "
                       f"{config.optimizer.name} lr={config.optimizer.learning_rate:g}")
        for i in range(d.parameter_servers)
    ]
    workers = [
        worker_cls.options(name=actor_name(config.name, "worker", i), namespace=namespace,
                           max_concurrency=2, **restarts, **_options(d.worker_resources)).remote(
            run_id, i, f"worker {i}/{d.workers}: {config.model}, batch {config.batch_size}, {config.steps} steps, {mode}")
        for i in range(d.workers)
    ]
    return RunActors(run_id=run_id, servers=servers, workers=workers,
                     worker_threads=d.worker_threads or max(1, int(d.worker_resources.num_cpus)))


def setup_servers(actors: RunActors, config: TrainConfig, states: list[ShardState], settings: ServerSettings) -> list:
    """Start the set-up calls of every server (from `states`); returns their refs."""
    return [s.setup.remote(states[i], config.optimizer, settings) for i, s in enumerate(actors.servers)]


def setup_workers(actors: RunActors, config: TrainConfig, plan: ShardPlan, which: list[int] | None = None) -> list:
    """Start the set-up calls of the workers (all, or `which`); returns their refs."""
    which = range(len(actors.workers)) if which is None else which
    return [actors.workers[i].setup.remote(config.to_dict(), plan, len(actors.workers), actors.worker_threads)
            for i in which]


def wire(actors: RunActors, config: TrainConfig) -> None:
    """Open every server's exchange buffers and connect every worker to them."""
    d = config.distribution
    servers, workers = actors.servers, actors.workers
    server_nodes = get([s.node_info.remote() for s in servers], "Locating the parameter servers")
    worker_nodes = get([w.node_id.remote() for w in workers], "Locating the workers")
    actors.server_nodes.update(node for node, has_shm in server_nodes if has_shm)
    links: list[list[LinkSpec]] = []
    for server, (node, has_shm) in zip(servers, server_nodes):
        local = [i for i, wn in enumerate(worker_nodes) if wn == node and has_shm]
        if d.transport == "shm" and len(local) < len(workers):
            raise ClusterError(
                "distribution.transport is 'shm', but some workers run on another node than their parameter "
                "server (or the node has no /dev/shm).",
                "Use transport: auto, which falls back to the object store across nodes.",
            )
        use = [] if d.transport == "object_store" else local
        links.append(get(server.open_links.remote(use), "Opening the exchange buffers"))
    actors.links = links
    actors.link_kinds = get(
        [w.connect.remote(servers, actors.links_of(i)) for i, w in enumerate(workers)],
        "Connecting workers to parameter servers",
    )


def launch(config: TrainConfig, run_id: str, plan: ShardPlan, states: list[ShardState],
           settings: ServerSettings, clock: StartupClock | None = None) -> RunActors:
    """Create servers and workers, set them up and connect every worker to every server."""
    created = time.time()
    actors = create(config, run_id, plan)
    try:
        # Together: each actor's first call imports TensorFlow, which takes seconds.
        set_up = get(setup_servers(actors, config, states, settings) + setup_workers(actors, config, plan),
                     "Setting up the actors")
        if clock is not None:
            names = [f"ps-{i}" for i in range(len(actors.servers))] + [f"worker-{i}" for i in range(len(actors.workers))]
            for name, result in zip(names, set_up):
                clock.add_actor(name, created, result["timings"])
        wire(actors, config)
        return actors
    except BaseException:
        actors.release()
        raise
