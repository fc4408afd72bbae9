"""Training across Ray nodes: a cluster of three nodes on this machine (tests/driver/multinode.py).

Node `ps` holds both parameter servers and room for one worker, node `w1` room for one worker: so
one worker shares the servers' node (shared memory) and one does not (the wire: a direct TCP
connection per pair), and `transport: auto` has to pick per pair. Each node has its own shared-memory root, as real nodes
have their own /dev/shm, and node `ps` runs with umask 0 (the exchange files must still be 0600).
The tests run in this order; the last one drains node `ps` (a preemption notice) so that a
restarted worker has to come back on a new node `w2`.
"""

from __future__ import annotations

import os
import signal
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import raytf  # noqa: E402
from tests.driver import gated_data, multinode  # noqa: E402
from tests.driver.test_faults import Both, KillAt  # noqa: E402
from tests.driver.test_training import digits_config, live_actor_names  # noqa: E402

pytestmark = pytest.mark.slow

UID = os.getuid()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from raytf.cluster import local as local_cluster

    patch = pytest.MonkeyPatch()
    patch.setenv("RAYTF_HOME", str(tmp_path_factory.mktemp("multinode-home")))
    nodes = multinode.start(tmp_path_factory.mktemp("multinode"))
    try:
        nodes.add_node("ps", num_cpus=2, resources={"raytf_ps": 2, "raytf_w": 1}, umask=0)
        nodes.add_node("w1", num_cpus=1, resources={"raytf_w": 1})
        with local_cluster.token_auth(nodes.head):
            yield nodes
    finally:
        nodes.stop()
        patch.undo()


def config(tmp_path, name: str, steps: int, **overrides) -> dict:
    cfg = digits_config(tmp_path, name=name, steps=steps, batch_size=32, log_every_seconds=0.2, **overrides)
    cfg["distribution"].update({
        "parameter_servers": 2, "workers": 2, "mode": "sync", "transport": "auto",
        "ps_resources": {"num_cpus": 0.5, "resources": {"raytf_ps": 1}},
        "worker_resources": {"num_cpus": 1, "resources": {"raytf_w": 1}},
    })
    return cfg


def exchange_files(root: Path) -> dict[str, int]:
    """Path (relative to the node's shared-memory root) -> permission bits, for everything under it."""
    found = {}
    for path in sorted(root.rglob("*")):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


class WatchFiles:
    """A progress reporter that records the exchange files of node `ps` while training runs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.during: dict[str, int] = {}

    def update(self, snapshot) -> None:
        if not self.during:
            self.during = exchange_files(self.root)


def test_auto_picks_per_pair_the_files_are_private_and_a_killed_server_restores(cluster, tmp_path):
    """One worker on the servers' node (shared memory), one on another (the wire: bf16 pushes, int8 pulls of
    the parameters' changes): each pair uses
    what its placement allows; the files are 0600 in 0700 directories during the run (node umask 0).
    Server 1 is killed at step 15: the run rolls back to a checkpoint, the restored servers are wired
    the same way again, and every file is gone after the run. (One run for both: a run costs ~20 s.)"""
    root = cluster.nodes["ps"].shm_root
    watch = WatchFiles(root)
    # Enough steps that the kill (at the first progress report past step 15) lands mid-run: with 40,
    # a fast machine had finished, the rollback restored the final checkpoint and no step was left.
    cfg = config(tmp_path, "mn-auto", steps=200)
    cfg["checkpoint"] = {"every_steps": 10, "keep": 2}
    cfg["distribution"]["compression"] = {"push": "bf16", "pull": "int8"}  # the wire pair's bytes: 1/2 and ~1/4
    killer = KillAt("mn-auto", "ps", 1, step=15)
    events = []
    summary = raytf.fit(cfg, address=cluster.address, progress=Both(watch, killer),
                        on_event=lambda m: (events.append(m), killer.on_event(m)))
    assert summary["transport"] == "shm+doorbell and wire"
    assert sorted(summary["links"]) == [["shm+doorbell", "shm+doorbell"], ["wire", "wire"]]
    assert summary["eval"]["accuracy"] > 0.3  # it learned (chance: 0.1)
    # One of the two workers is on the wire: half the bytes pushed (a quarter of both workers' payload), a
    # quarter pulled (an eighth; more for the exact answers after each connect and the rollback).
    assert killer.killed_at is not None and killer.killed_at < 200, "the kill landed after the run"
    payload, wire = summary["bytes_per_worker_step"], summary["wire_bytes_per_worker_step"]
    assert 0.2 < wire["pushed"] / payload["pushed"] < 0.3, (wire, payload)
    assert 0.1 < wire["pulled"] / payload["pulled"] < 0.2, (wire, payload)
    (run_id,) = [m.split()[1].rstrip(":") for m in events if m.startswith("Run ")]
    local = summary["links"].index(["shm+doorbell", "shm+doorbell"])
    user_dir, run_dir = f"raytf-{UID}", f"raytf-{UID}/{run_id}"
    # sync without backup workers: per server one gradient slot per local worker, one shared parameter slot
    # and the doorbell socket the local worker pushes over
    assert watch.during == {user_dir: 0o700, run_dir: 0o700,
                            **{f"{run_dir}/ps{s}-{slot}": 0o600 for s in (0, 1) for slot in (f"g{local}", "p", "bell")}}
    # The server kill and its restore.
    assert killer.killed_at is not None and killer.killed_at < 200
    assert [(r["role"], r["index"]) for r in summary["restarts"]] == [("ps", 1)]
    (rollback,) = summary["rollbacks"]
    assert rollback["servers_lost"] == [1] and rollback["to_step"] % 10 == 0 and 10 <= rollback["to_step"] < 200
    assert [s["version"] for s in summary["per_server"]] == [200, 200]
    assert exchange_files(root) == {user_dir: 0o700}  # the run's directory went with it
    assert exchange_files(cluster.nodes["w1"].shm_root) == {}  # no server there: nothing mapped
    assert live_actor_names(cluster.head) == []


def test_a_server_killed_for_good_on_another_node_leaves_no_exchange_files_there(cluster, tmp_path):
    """Server 1 is SIGKILLed on node `ps` (not the driver's) and not restarted (max_restarts 0): the
    run fails, and the driver's release sweeps the run's files on that node, which the dead process
    could not remove itself."""
    root = cluster.nodes["ps"].shm_root
    cfg = config(tmp_path, "mn-gone", steps=400)
    cfg["distribution"]["max_restarts"] = 0
    killer = KillAt("mn-gone", "ps", 1, step=5)
    watch = WatchFiles(root)
    with pytest.raises(raytf.TrainingError, match="did not come back"):
        raytf.fit(cfg, address=cluster.address, progress=Both(watch, killer), on_event=killer.on_event)
    assert killer.killed_at is not None
    assert any(name.endswith("/ps1-p") for name in watch.during), "server 1 had its files on node ps"
    assert exchange_files(root) == {f"raytf-{UID}": 0o700}
    assert live_actor_names(cluster.head) == []


def pair_config(cluster, tmp_path, name: str, steps: int, **overrides) -> dict:
    """Both workers on node `pair` (added on first use), the servers on node `ps`: the two workers
    sum their gradients there and one of them pushes (raytf.exchange.local_reduce)."""
    if "pair" not in cluster.nodes:
        cluster.add_node("pair", num_cpus=2, resources={"raytf_pair": 2})
    cfg = config(tmp_path, name, steps, **overrides)
    cfg["distribution"]["worker_resources"] = {"num_cpus": 1, "resources": {"raytf_pair": 1}}
    return cfg


SUMMED = [["wire+sum", "wire+sum"], ["via leader", "via leader"]]  # worker 0 pushes the sum, worker 1 rides along


def test_workers_sharing_a_node_push_one_sum_and_train_as_by_hand(cluster, tmp_path):
    """Sync SGD over two servers on another node: worker 0 sends the node's sum, the servers apply
    the mean of both gradients (piece by piece: the wide model), and both read the one answer
    that crossed. The result is the by-hand update's, and half the bytes crossed per worker step."""
    from tests.driver.test_training import by_hand_sgd

    cfg = pair_config(cluster, tmp_path, "mn-sum", steps=6, **{
        "optimizer": {"name": "sgd", "learning_rate": 0.5}, "data.shuffle_buffer": 0,
        "model": "tests.driver.wide_model:build_model"})
    summary = raytf.fit(cfg, address=cluster.address)
    assert summary["links"] == SUMMED
    payload, wire = summary["bytes_per_worker_step"], summary["wire_bytes_per_worker_step"]
    assert 0.49 < wire["pushed"] / payload["pushed"] < 0.51, (wire, payload)  # one gradient crosses for two
    # and one answer (the gradient's size; the first pulls are Ray calls, not on the wire)
    assert 0.49 < wire["pulled"] / payload["pushed"] < 0.51, (wire, payload)
    import keras

    trained = keras.models.load_model(summary["model_path"])
    for got, want in zip(trained.trainable_variables, by_hand_sgd(cfg, steps=6)):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)
    assert exchange_files(cluster.nodes["pair"].shm_root) == {f"raytf-{UID}": 0o700}
    assert live_actor_names(cluster.head) == []


def test_a_killed_member_rejoins_on_its_own_and_a_killed_leader_rolls_back(cluster, tmp_path):
    """Worker 1 (a member) is killed at step 10: its leader stops waiting for it, and it comes back
    with a wire of its own, no rollback. In a second run worker 0 (the leader) is killed at step 15:
    the node's sum went with it, so the run rolls back to a checkpoint and is wired (and summed) anew."""
    events = []
    killer = KillAt("mn-member", "worker", 1, step=10)
    summary = raytf.fit(pair_config(cluster, tmp_path / "member", "mn-member", steps=120), address=cluster.address,
                        progress=killer, on_event=lambda m: (events.append(m), killer.on_event(m)))
    assert killer.killed_at is not None and killer.killed_at < 120
    assert [(r["role"], r["index"]) for r in summary["restarts"]] == [("worker", 1)], events
    assert summary["rollbacks"] == []
    assert summary["links"] == [["wire+sum", "wire+sum"], ["wire", "wire"]]
    assert [s["version"] for s in summary["per_server"]] == [120, 120]

    events = []
    cfg = pair_config(cluster, tmp_path / "leader", "mn-leader", steps=120)
    cfg["checkpoint"] = {"every_steps": 10, "keep": 2}
    killer = KillAt("mn-leader", "worker", 0, step=15)
    summary = raytf.fit(cfg, address=cluster.address, progress=killer,
                        on_event=lambda m: (events.append(m), killer.on_event(m)))
    assert killer.killed_at is not None and killer.killed_at < 120
    (rollback,) = summary["rollbacks"]
    assert rollback["servers_lost"] == [] and 10 <= rollback["to_step"] < 120, events
    assert any("while it summed the gradients of the workers on its node" in m for m in events), events
    assert summary["links"] == SUMMED
    assert [s["version"] for s in summary["per_server"]] == [120, 120]
    assert exchange_files(cluster.nodes["pair"].shm_root) == {f"raytf-{UID}": 0o700}
    assert live_actor_names(cluster.head) == []


class MoveWorker:
    """Once training passes `step`: add node `w2`, drain node `ps` (Ray places nothing new there) and
    SIGKILL the worker that runs on it, so Ray restarts that worker on `w2`, the only place left.
    The survivor reads its data through tests/driver/gated_data.py: held up a few dozen steps in,
    until the moved worker's new process is connected to the servers again (its links answer), so
    the run cannot end before the moved worker rejoins, however fast the survivor trains."""

    def __init__(self, cluster, run_name: str, step: int) -> None:
        self.cluster, self.run_name, self.step = cluster, run_name, step
        self.run_id = None
        self.moved: int | None = None
        self.workers: list = []
        self.reconnected: list[str] | None = None  # the moved worker's links, once its new process has them

    def on_event(self, message: str) -> None:
        if message.startswith("Run ") and self.run_id is None:
            self.run_id = message.split()[1].rstrip(":")

    def update(self, snapshot) -> None:
        import ray

        from raytf.driver.actors import actor_name

        if self.moved is not None or snapshot.step < self.step:
            return
        workers = [ray.get_actor(actor_name(self.run_name, "worker", i), namespace=f"raytf-{self.run_id}") for i in (0, 1)]
        nodes = ray.get([w.node_id.remote() for w in workers])
        (self.moved,) = [i for i, node in enumerate(nodes) if node == self.cluster.nodes["ps"].node_id]
        self.workers = workers
        self.cluster.add_node("w2", num_cpus=1, resources={"raytf_w": 1})  # added now: no worker was placed there
        self.cluster.drain("ps")
        os.kill(ray.get(workers[self.moved].process_id.remote()), signal.SIGKILL)
        # Not from the progress reports: none come while the survivor is held up at the gate.
        threading.Thread(target=self._open_gate_once_reconnected, daemon=True).start()

    def _open_gate_once_reconnected(self) -> None:
        import ray

        deadline = time.monotonic() + gated_data.LIMIT
        while time.monotonic() < deadline:
            try:  # its second call slot answers while its rejoin runs; before `connect` it has no links
                self.reconnected = ray.get(self.workers[self.moved].link_kinds.remote(), timeout=5)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                pass  # still restarting
            if self.reconnected:
                gated_data.GATE.touch()
                return
            threading.Event().wait(0.1)  # asking the new process again, until it is connected


def test_a_worker_restarted_on_another_node_rejoins(cluster, tmp_path):
    """The worker that shared memory with the servers comes back on node w2: its links are decided
    again (the wire now), where the old ones would point at slot files of node ps."""
    steps = 200  # the survivor trains on alone while the moved worker's new process starts (held up by a gate)
    mover = MoveWorker(cluster, "mn-move", step=5)
    events = []
    gated_data.GATE.unlink(missing_ok=True)
    try:
        summary = raytf.fit(config(tmp_path, "mn-move", steps=steps, **{"data.train": "tests.driver.gated_data:train_examples"}),
                            address=cluster.address, progress=mover, on_event=lambda m: (events.append(m), mover.on_event(m)))
    finally:
        gated_data.GATE.unlink(missing_ok=True)
    assert mover.moved is not None
    assert mover.reconnected == ["wire", "wire"], events
    assert [(r["role"], r["index"]) for r in summary["restarts"]] == [("worker", mover.moved)], events
    assert summary["rollbacks"] == []
    assert [s["version"] for s in summary["per_server"]] == [steps, steps]
    assert summary["links"] == [["wire", "wire"]] * 2  # nobody shares the servers' node now
    assert [w["index"] for w in summary["per_worker"]] == [0, 1]  # the moved worker's run ended as well
    assert exchange_files(cluster.nodes["ps"].shm_root) == {f"raytf-{UID}": 0o700}
    assert exchange_files(cluster.nodes["w2"].shm_root) == {}
