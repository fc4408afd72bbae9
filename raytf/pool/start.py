"""Starting the pool (`raytf up --warm N`): N hosts on every node that offers CPUs, each a detached
Ray actor (it outlives the command that started it) named `raytf-pool:<node>:<i>` in the namespace
`raytf-pool`, restarted by Ray whenever its process ends.

On a KubeRay cluster the same code runs as a short Ray job on the head (`python -m raytf.pool --warm N`).
"""

from __future__ import annotations

from dataclasses import dataclass

from raytf.pool.host import MAX_CONCURRENCY, NAMESPACE, PoolHost, host_name


def default_size(node_cpus: float) -> int:
    """Enough for one run that fills the node: a worker per CPU and a parameter server."""
    return max(1, int(node_cpus)) + 1


@dataclass(frozen=True)
class PoolSize:
    started: int  # hosts started now (they import TensorFlow in the background)
    kept: int  # hosts that were there already
    stopped: int  # hosts beyond the size asked for, stopped
    nodes: int


def ensure_pool(per_node: int | None = None) -> PoolSize:
    """Make every alive node with CPUs hold `per_node` hosts (default: `default_size` of its CPUs):
    start the missing ones, stop those beyond. Needs a Ray connection."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from raytf.pool.lease import pool_hosts

    existing = pool_hosts()
    host_cls = ray.remote(PoolHost)
    started = kept = stopped = nodes = 0
    for node in ray.nodes():
        cpus = node.get("Resources", {}).get("CPU", 0.0)
        if not node.get("Alive") or cpus <= 0:
            continue
        nodes += 1
        want = default_size(cpus) if per_node is None else per_node
        node_id = node["NodeID"]
        for index in range(max(want, _highest(existing, node_id) + 1)):
            name = host_name(node_id, index)
            if index >= want:
                if name in existing:
                    ray.kill(existing[name], no_restart=True)
                    stopped += 1
                continue
            if name in existing:
                kept += 1
                continue
            host_cls.options(
                name=name, namespace=NAMESPACE, lifetime="detached", num_cpus=0, max_restarts=-1, max_task_retries=0,
                max_concurrency=MAX_CONCURRENCY, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
                # Not the starting command's import paths: each run brings its own (raytf.pool.handles.Lease).
                runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ""}},
            ).remote(index)
            started += 1
    return PoolSize(started=started, kept=kept, stopped=stopped, nodes=nodes)


def wait_until_warm(timeout: float = 120.0) -> int:
    """Wait until every host has imported what it keeps warm; returns how many there are."""
    import ray

    from raytf.pool.lease import pool_hosts

    hosts = list(pool_hosts().values())
    ray.get([h.state.remote() for h in hosts], timeout=timeout)
    return len(hosts)


def _highest(existing: dict, node_id: str) -> int:
    """The highest index of a host of `node_id` among `existing` names, -1 if none."""
    prefix = host_name(node_id, 0).rsplit(":", 1)[0] + ":"
    indices = [int(name.rsplit(":", 1)[1]) for name in existing if name and name.startswith(prefix)]
    return max(indices, default=-1)
