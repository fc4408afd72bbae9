"""A Ray cluster of several nodes on this machine, for the cross-node tests and the benchmark.

A raytf head (token authentication, private temp dir: `raytf.cluster.local`) with worker nodes
joined to it on 127.0.0.1 (as `ray.cluster_utils.Cluster` adds nodes). Each node gets its own
custom resources (servers and workers are steered with distribution.ps_resources /
worker_resources, as on KubeRay) and its own shared-memory root (`RAYTF_SHM_ROOT`): on real nodes
a file in one node's /dev/shm is not in another's, and so it is here; a run that maps a slot of
another node fails as it would there. What one machine cannot show: a real network between the
nodes, and nodes that die as a whole (a drain stands in for a node going away).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from raytf.cluster import local as local_cluster
from raytf.cluster.local import AUTH_VARS, HOST, LOOPBACK_ENV, LocalCluster, auth_env
from raytf.exchange.transport import SHM_ROOT_ENV

NODE_TIMEOUT = 120.0


@dataclass
class Node:
    name: str
    node: object  # ray._private.node.Node: its raylet and agents, started from this process
    shm_root: Path
    node_id: str = ""


@dataclass
class MultiNodeCluster:
    head: LocalCluster
    root: Path
    nodes: dict[str, Node] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return self.head.gcs_address

    def add_node(self, name: str, num_cpus: float, resources: dict[str, float], umask: int = 0o022) -> Node:
        """Start a node named `name` (its processes get `umask`) and wait until Ray lists it.

        As `ray.cluster_utils.Cluster.add_node` does it: `ray start --address` refuses to join a head
        in single-machine mode, the mode that keeps every address of the cluster on 127.0.0.1."""
        import ray._private.node
        import ray._private.parameter

        shm_root = self.root / f"shm-{name}"
        shm_root.mkdir(mode=0o1777)
        shm_root.chmod(0o1777)  # like /dev/shm: world-writable, sticky
        params = ray._private.parameter.RayParams(
            gcs_address=self.address, node_ip_address=HOST, num_cpus=num_cpus, num_gpus=0,
            resources={**resources, node_resource(name): 1}, object_store_memory=150 * 1024**2,
            min_worker_port=0, max_worker_port=0, node_manager_port=0, include_log_monitor=False,
            temp_dir=self.head.temp_dir,
        )
        params.dashboard_agent_listen_port = None  # a free one: several agents share this machine
        # The node's processes (raylet, agents, the actors they start) inherit this environment and umask.
        saved_env = {k: os.environ.get(k) for k in (SHM_ROOT_ENV, *LOOPBACK_ENV)}
        old_umask = os.umask(umask)
        try:
            os.environ.update(LOOPBACK_ENV, **{SHM_ROOT_ENV: str(shm_root)})
            with local_cluster.token_auth(self.head):
                node = ray._private.node.Node(params, head=False, shutdown_at_exit=False, spawn_reaper=False)
        finally:
            os.umask(old_umask)
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        entry = Node(name, node, shm_root)
        self.nodes[name] = entry
        entry.node_id = self._wait_for(name)
        return entry

    def _wait_for(self, name: str) -> str:
        import ray

        connected = ray.is_initialized()  # a driver of this cluster (a test adding a node mid-run)
        deadline = time.monotonic() + NODE_TIMEOUT
        with local_cluster.token_auth(self.head):
            if not connected:
                ray.init(address=self.address, logging_level="ERROR", _node_ip_address=HOST)
            try:
                while True:
                    for info in ray.nodes():
                        if info["Alive"] and node_resource(name) in info["Resources"]:
                            return info["NodeID"]
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"node {name} did not join within {NODE_TIMEOUT:.0f} s")
                    time.sleep(0.2)
            finally:
                if not connected:
                    ray.shutdown()

    def drain(self, name: str) -> None:
        """Tell Ray the node is about to go away (as a preemption notice does): it keeps its actors,
        but Ray places nothing new there, restarted actors included."""
        env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
        env.update(LOOPBACK_ENV, **auth_env(self.head))
        subprocess.run(
            [sys.executable, "-m", "ray.scripts.scripts", "drain-node", f"--address={self.address}",
             f"--node-id={self.nodes[name].node_id}", "--reason=DRAIN_NODE_REASON_PREEMPTION",
             "--reason-message=raytf multi-node test"],
            env=env, check=True, capture_output=True, timeout=60,
        )

    def stop(self) -> None:
        for entry in self.nodes.values():
            entry.node.kill_all_processes(check_alive=False, allow_graceful=True, wait=True)
        local_cluster.stop(self.head)


def node_resource(name: str) -> str:
    """A resource only node `name` has: how a test tells the nodes apart."""
    return f"raytf_test_node_{name}"


def start(root: Path, head_cpus: int = 1) -> MultiNodeCluster:
    """The head only (no raytf actor fits on it: they ask for the nodes' custom resources)."""
    from raytf.cluster.connection import use_loopback_addresses

    use_loopback_addresses()  # this process starts nodes and drivers: 127.0.0.1 stays 127.0.0.1
    root.mkdir(parents=True, exist_ok=True)
    return MultiNodeCluster(head=local_cluster.start(num_cpus=head_cpus, timeout=120), root=root)
