"""Which cores a worker's process runs on.

Ray gives an actor logical CPUs but leaves its threads to the kernel's scheduler, which on a busy
node moves the workers between cores and at times runs two of them on one core for a while.
`distribution.pin_workers: auto` gives each worker cores of its own. It is off by default because
measurements disagree (recommender benchmark, 2 workers and a server on 2 cores, async, 4,000
steps, runs alternated): one series had pinned workers faster in 5 of 5 pairs (+2.5 to +8.5 %),
another an hour later slower in 3 of 3 (-7 to -24 %), with the server's update then taking 0.83 ms of
CPU instead of 0.48 (it shares a core with a pinned worker's step). The no-exchange reference
gains ~4 % pinned; the benchmarks pin it by the same setting.

`auto` pins only where raytf's workers may own the cores: the cores the process may use are no more
than the node's CPUs in Ray (an embedded cluster, a machine given to Ray, a pod with a cpuset), and
the node's workers, at their CPUs each, fit in them. A process that may use more cores than Ray
counts (a pod with a CPU quota on a larger machine) shares them with others: it is left alone.
Servers are never pinned: their work comes in bursts, on whichever core is free.
"""

from __future__ import annotations

import math
import os


def cores_for(rank: int, count: int, cpus_each: float, node_cpus: float, allowed: set[int]) -> tuple[int, ...]:
    """The cores for the `rank`-th of `count` workers on a node of `node_cpus` Ray CPUs, from the
    cores the process may use (`allowed`); () when it is not to be pinned."""
    each = max(1, math.ceil(cpus_each))
    if not allowed or len(allowed) > node_cpus or count * each > len(allowed) or not 0 <= rank < count:
        return ()
    return tuple(sorted(allowed)[rank * each:(rank + 1) * each])


def pin_process(cores: tuple[int, ...]) -> tuple[int, ...]:
    """Pin every thread of this process (threads started later inherit it) to `cores`; returns the
    cores it is pinned to, () when not pinned (nothing asked, or the kernel refused)."""
    if not cores or not hasattr(os, "sched_setaffinity"):
        return ()
    pinned = ()
    for task in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(task), set(cores))
            pinned = cores
        except (OSError, ValueError):  # a thread that ended meanwhile, or cores outside the cpuset
            continue
    return pinned


def pin_as_configured(distribution, rank: int, count: int, node_cpus: float, cpus_each: float | None = None) -> tuple[int, ...]:
    """Pin this process as `distribution.pin_workers` says, as the `rank`-th of `count` workers on a
    node of `node_cpus` Ray CPUs, each of `cpus_each` CPUs (default: the workers' num_cpus). Returns
    the cores, () when not pinned."""
    if distribution.pin_workers == "off" or not hasattr(os, "sched_getaffinity"):
        return ()
    each = distribution.worker_resources.num_cpus if cpus_each is None else cpus_each
    return pin_process(cores_for(rank, count, each, node_cpus, os.sched_getaffinity(0)))


def node_ranks(nodes: list[str]) -> list[tuple[int, int]]:
    """Per worker (its node), its place among the workers of its node and how many they are."""
    seen: dict[str, int] = {}
    ranks = []
    for node in nodes:
        ranks.append(seen.get(node, 0))
        seen[node] = ranks[-1] + 1
    return [(rank, seen[node]) for rank, node in zip(ranks, nodes)]
