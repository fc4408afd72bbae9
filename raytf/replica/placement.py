"""Which cores a worker's process runs on.

Ray gives an actor logical CPUs but leaves its threads to the kernel's scheduler, which on a busy
node moves the workers between cores and at times runs two of them on one core for a while (their
step and the server's work then share it, the other core takes the rest). On the recommender
benchmark (2 workers and a server on 2 cores, async, 4,000 steps) pinning each worker to a core of
its own took the median of five runs from 188,000 to 228,000 samples/s and the slowest from
150,000 to 191,000; the no-exchange reference gains ~4 % the same way.

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


def node_ranks(nodes: list[str]) -> list[tuple[int, int]]:
    """Per worker (its node), its place among the workers of its node and how many they are."""
    seen: dict[str, int] = {}
    ranks = []
    for node in nodes:
        ranks.append(seen.get(node, 0))
        seen[node] = ranks[-1] + 1
    return [(rank, seen[node]) for rank, node in zip(ranks, nodes)]
