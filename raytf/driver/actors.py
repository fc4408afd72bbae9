"""Creating, naming, wiring and releasing a run's actors (spoken to through `raytf.driver.groups`).

Names are stable so the Ray dashboard's Actors view tells the story:
`raytf:<run name>:ps-<i>` and `raytf:<run name>:worker-<i>`, in the Ray namespace `raytf-<run id>`
(so two runs with the same name never collide).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from raytf.config import Resources, TrainConfig
from raytf.data.sources import DataPlan
from raytf.driver.groups import ServerGroup, WorkerGroup
from raytf.errors import ClusterError
from raytf.exchange.policies import policy_for
from raytf.exchange.server import ServerSettings
from raytf.exchange.shard_state import ShardState
from raytf.exchange.sharding import ShardPlan
from raytf.exchange.wire import new_secret
from raytf.exchange.row_slots import RowLayout
from raytf.exchange import local_reduce
from raytf.exchange.transport import LinkSpec, choose_link, remove_shm_files
from raytf.observe.startup import StartupClock
from raytf.pool.handles import HostedHandle


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



@dataclass
class RunActors:
    run_id: str
    servers: ServerGroup
    workers: WorkerGroup
    links: list[list[LinkSpec]] = field(default_factory=list)  # [server][worker], as wired (a rejoin relinks)
    link_kinds: list[list[str]] = field(default_factory=list)  # [worker][server], now
    # Every node with exchange files of the run: each a server ran on, or a node's workers summed on.
    exchange_nodes: set[str] = field(default_factory=set)
    cores: list[tuple[int, ...]] = field(default_factory=list)  # [worker]: the cores it is pinned to, () if not
    pool: Any = None  # raytf.pool.lease.PoolUse: the warm pool's hosts the run took, and its CPUs' reservation
    notices: list[str] = field(default_factory=list)  # what the user should know about the actors

    def links_of(self, worker: int) -> list[LinkSpec]:
        return [per_server[worker] for per_server in self.links]

    def release(self) -> None:
        import ray

        self.servers.close()
        for actor in self.servers.handles + self.workers.handles:
            if not isinstance(actor, HostedHandle):
                ray.kill(actor, no_restart=True)
        if self.pool is not None:
            self.pool.give_back()  # every host cleans up after the run, or is replaced
        remove_shm_files(self.run_id)
        self._sweep_other_nodes()

    def _sweep_other_nodes(self) -> None:
        """Remove the run's exchange files on the other nodes a server (or a node's summing worker,
        raytf.exchange.local_reduce) ran on: a process killed there (and restarted elsewhere, or
        not at all) could not remove its own, and workers are killed, not closed. One
        zero-CPU task per such node; a node that is gone meanwhile took its files along."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = ray.get_runtime_context().get_node_id()
        alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        nodes = sorted((self.exchange_nodes - {here}) & alive)
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
                          every_versions=config.checkpoint.every_steps * ups,
                          eval_versions=(config.eval_every_steps() or 0) * ups, deltas=config.checkpoint.deltas, dense_slots=config.sparse.slots == "dense",
                          tables=plan.tables, trace_steps=config.trace.max_steps if config.trace.enabled else 0,
                          wire_secret=new_secret())


UNTRIED: Any = object()  # `create`'s pool: not asked yet (a pool, or None for none, once asked)


def wants_of(config: TrainConfig, plan: ShardPlan | None = None) -> list:
    """The run's actors as the pool is asked for them (raytf.pool.lease.Want): servers, then workers."""
    from raytf.pool.lease import Want

    d = config.distribution
    mode = policy_for(config.distribution).describe()
    sizes = [f": {plan.shards[i].size:,} floats" if plan is not None else "" for i in range(d.parameter_servers)]
    return ([Want("ps", i, f"shard {i}/{d.parameter_servers}{sizes[i]}, {mode}, {config.optimizer.name} "
                           f"lr={config.optimizer.learning_rate:g}", d.ps_resources, d.workers + 4)
             for i in range(d.parameter_servers)]
            + [Want("worker", i, f"worker {i}/{d.workers}: {config.model}, batch {config.batch_size}, "
                                 f"{config.steps} steps, {mode}", d.worker_resources, 2) for i in range(d.workers)])


def take_pool(config: TrainConfig, run_id: str, on_event: Callable[[str], None] = lambda message: None):
    """The warm pool's processes for the run (raytf.pool.lease.PoolUse), or None where there is no pool
    or the run cannot use it."""
    from raytf.pool.lease import take

    return take(wants_of(config), run_id, config.name, on_event)


def create(config: TrainConfig, run_id: str, plan: ShardPlan, data: DataPlan | None = None,
           statistics: list | None = None, on_event: Callable[[str], None] = lambda message: None,
           pool: Any = UNTRIED) -> RunActors:
    """Create the servers and workers (restartable: Ray starts a new process when one dies), taking
    warm processes from the pool `raytf up` keeps where it has them (raytf.pool; `pool`: taken already)."""
    import ray

    from raytf.exchange.server import ParameterServer
    from raytf.replica.worker import Worker

    d = config.distribution
    namespace = f"raytf-{run_id}"
    restarts = {"max_restarts": d.max_restarts, "max_task_retries": 0}  # raytf replays the work itself
    wants = wants_of(config, plan)
    if pool is UNTRIED:
        pool = take_pool(config, run_id, on_event)
    classes = {"ps": ray.remote(ParameterServer), "worker": ray.remote(Worker)}
    handles = []
    for k, want in enumerate(wants):
        hosted = pool.hosted[k] if pool is not None else None
        if hosted is not None:
            handles.append(hosted)
            continue
        placed = pool.fresh_options[k] if pool is not None else {}
        handles.append(classes[want.role].options(
            name=actor_name(config.name, want.role, want.index), namespace=namespace,
            max_concurrency=want.max_concurrency, **restarts, **_options(want.resources), **placed,
        ).remote(run_id, want.index, want.description))
    servers, workers = handles[:d.parameter_servers], handles[d.parameter_servers:]
    return RunActors(run_id=run_id, servers=ServerGroup(servers),
                     workers=WorkerGroup(workers, threads=d.worker_threads or max(1, int(d.worker_resources.num_cpus)),
                                         data=data, statistics=statistics),
                     pool=pool, notices=list(pool.said) if pool is not None else [])


def wire(actors: RunActors, config: TrainConfig, plan: ShardPlan) -> None:
    """Open every server's exchange buffers and connect every worker to them: per pair, shared memory
    on one node, the wire across nodes (raytf.exchange.transport.choose_link)."""
    d = config.distribution
    servers, workers = actors.servers, actors.workers
    server_nodes = servers.locate()
    worker_nodes = workers.locate()
    actors.cores = workers.place(worker_nodes)
    actors.exchange_nodes.update(node for node, has_shm in server_nodes if has_shm)
    rows_bounded = not plan.tables or RowLayout.of(plan.tables) is not None
    kinds = [[choose_link(d.transport, wn == node and has_shm, rows_bounded) for wn in worker_nodes]
             for node, has_shm in server_nodes]
    groups = {}
    if d.local_reduce and local_reduce.eligible(d.mode, d.backup_workers, bool(plan.tables), d.compression.pull):
        groups = local_reduce.plan_groups(worker_nodes, [node for node, _ in server_nodes], kinds,
                                          tag=secrets.token_hex(3))
        actors.exchange_nodes.update(worker_nodes[group.leader] for group in groups.values())
        for per_server in kinds:  # a member reaches the servers through its leader's wire
            per_server[:] = ["carried" if w in groups and groups[w].leader != w else k for w, k in enumerate(per_server)]
    actors.links = [servers.open_links(server, server_kinds) for server, server_kinds in enumerate(kinds)]
    actors.link_kinds = workers.connect(servers, [actors.links_of(i) for i in range(len(workers))], groups)


def launch(config: TrainConfig, run_id: str, plan: ShardPlan, states: list[ShardState],
           settings: ServerSettings, clock: StartupClock | None = None, data: DataPlan | None = None,
           share: Callable[[list[str]], DataPlan] | None = None, statistics: list | None = None,
           on_event: Callable[[str], None] = lambda message: None, pool: Any = UNTRIED) -> RunActors:
    """Create servers and workers (from `pool` where taken already), set them up (`data`: how the workers read data.train; `share`: for Ray
    Data, the plan with the dataset split for the workers' nodes; `statistics`: the non-trainable values the
    replicas start from) and connect every worker to every server."""
    created = time.time()
    actors = create(config, run_id, plan, data, statistics, on_event, pool)
    try:
        if share is not None:
            actors.workers.data = share(actors.workers.locate())
        # Together: each actor's first call imports TensorFlow, which takes seconds.
        set_up = (actors.servers.set_up(states, config.optimizer, settings)
                  + actors.workers.set_up(config, plan)).join("Setting up the actors")
        if clock is not None:
            names = [f"ps-{i}" for i in range(len(actors.servers))] + [f"worker-{i}" for i in range(len(actors.workers))]
            for name, result in zip(names, set_up):
                clock.add_actor(name, created, result["timings"])
        wire(actors, config, plan)
        return actors
    except BaseException:
        actors.release()
        raise
