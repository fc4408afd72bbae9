"""Which workers sum their gradients on their node (raytf.exchange.local_reduce), and the leader's
sum and relay between real processes' worth of parts: threads here, the files in a private tmpfs
root, the server end a real wire listener running the exchange's `serve_connection`."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from raytf.exchange import Reply, Status
from raytf.exchange.local_reduce import LeaderBell, LocalGroup, eligible, join_leader, member_spec, plan_groups
from raytf.exchange.transport import SHM_ROOT_ENV, WorkerLink
from raytf.exchange.wire import WireListener, new_secret
from raytf.exchange.wire_link import Parts, open_bell, serve_connection


def test_groups_are_the_wire_workers_of_a_node_without_a_server():
    nodes = ["a", "b", "b", "c", "b", "a"]
    kinds = [["wire", "wire", "wire", "wire", "wire", "wire"],
             ["shm", "wire", "wire", "wire", "wire", "shm"]]
    groups = plan_groups(nodes, ["a", "a"], kinds, tag="x")
    # node a hosts the servers (its workers use shared memory), node c has one worker: only node b sums
    assert groups == {w: LocalGroup(1, (2, 4), "x") for w in (1, 2, 4)}
    assert [groups[w].role(w) for w in (1, 2, 4)] == ["leader", "member", "member"]
    # A worker that reaches one server another way (say Ray's object store) stays out of it.
    kinds[1][2] = "object_store"
    assert set(plan_groups(nodes, ["a", "a"], kinds)) == {1, 4}
    assert plan_groups(["b", "b"], ["b"], [["wire", "wire"]]) == {}  # transport: wire on the servers' node


@pytest.mark.parametrize(("mode", "backups", "tables", "pull", "ok"), [
    ("sync", 0, False, "none", True), ("sync", 0, False, "bf16", True),
    ("async", 0, False, "none", False), ("ssp", 0, False, "none", False),
    ("sync", 1, False, "none", False), ("sync", 0, True, "none", False), ("sync", 0, False, "int8", False),
])
def test_only_sync_rounds_of_dense_gradients_are_summed_on_a_node(mode, backups, tables, pull, ok):
    assert eligible(mode, backups, tables, pull) is ok


class Server:
    """The server's end of the leader's wire: receives each push and what it carries, answers with
    parameters = 10 * (round) + the pushed sum (so a test can see the sum came through)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.grad = np.zeros(size, np.float32)
        self.params = np.zeros(size, np.float32)
        self.carried: list[np.ndarray] = []
        self.version = 0
        self.secret = new_secret()
        self.listener = WireListener("127.0.0.1", self.secret, self._serve, chunk_bytes=4096)

    def _serve(self, conn) -> None:
        serve_connection(conn, lambda w: (self.grad, None), self._push, lambda w: self.params,
                         carry=lambda leader, base, rows: self.carried.append(rows.copy()))

    def _push(self, worker, base, steps, loss, finite) -> Reply:
        self.version += 1
        self.params = self.grad + 10 * self.version
        return Reply(Status.OK, self.version, None, False)


def test_the_leader_sends_its_node_sum_and_its_members_read_the_answer_in_place(tmp_path, monkeypatch):
    monkeypatch.setenv(SHM_ROOT_ENV, str(tmp_path))
    size = 5000 + 300_000  # the second "variable" is two of the wire's 1 MB chunks; padding between them
    offsets, shapes = [0, 5000], [4000, size - 5000]
    server = Server(size)
    group = LocalGroup(0, (1, 2), "t")
    leader_parts = Parts(size)
    leader = LeaderBell("run", group, 0, size, lambda params: open_bell(
        server.listener.address, server.secret, 0, leader_parts, size, None, params=params))
    members = {}
    for m in group.members:
        spec = member_spec("run", group, 0, m, timeout=5)
        members[m] = (WorkerLink(spec, size), join_leader(str(tmp_path / spec.bell_path), m))
    rng = np.random.default_rng(0)
    for round_ in (1, 2):
        grads = {w: [rng.standard_normal(n).astype(np.float32) for n in shapes] for w in (0, 1, 2)}
        finite = {0: True, 1: True, 2: round_ == 1}  # member 2's second gradient is not finite: left out
        answers = {}

        def member_step(m: int) -> None:
            link, bell = members[m]
            if finite[m]:
                link.send(grads[m], offsets)
            bell.ring(round_ - 1, round_, 0.5 * m, finite[m])
            reply = bell.answer()
            answers[m] = (reply.version, link.receive(reply.payload).copy())

        threads = [threading.Thread(target=member_step, args=(m,)) for m in group.members]
        for t in threads:
            t.start()
        leader_parts.set(grads[0], offsets)
        leader.ring(round_ - 1, round_, 1.5, True)
        reply = leader.answer()
        for t in threads:
            t.join(timeout=10)
        expected = np.zeros(size, np.float32)
        for w in (0, 1, 2):
            if finite[w]:
                for offset, g in zip(offsets, grads[w]):
                    expected[offset:offset + g.size] += g
        np.testing.assert_allclose(server.grad, expected, rtol=1e-6, atol=1e-6)
        rows = server.carried[-1]
        assert rows[:, 0].tolist() == [0, 1, 2] and rows[:, 2].tolist() == [1, 1, finite[2]]
        assert rows[1:, 4].tolist() == [0.5, 1.0] and rows[:, 1].tolist() == [round_] * 3
        np.testing.assert_allclose(reply.payload, expected + 10 * round_, rtol=1e-6)
        for m in group.members:  # the same answer, read from the node's one parameter buffer
            version, params = answers[m]
            assert version == round_
            np.testing.assert_allclose(params, expected + 10 * round_, rtol=1e-6)
    # A member that hangs up is not waited for: the leader's next push carries only itself.
    members[1][1].close()
    members[2][1].close()
    leader_parts.set([np.ones(n, np.float32) for n in shapes], offsets)
    leader.ring(2, 3, None, True)  # returns once both hang-ups are seen
    leader.answer()
    assert server.carried[-1][:, 0].tolist() == [0]
    assert server.grad[:4000].tolist() == [1.0] * 4000
    leader.close()
    server.listener.close()
    assert list((tmp_path / f"raytf-{os.getuid()}" / "run").iterdir()) == []  # its files went with it


def _leader_and_one_member(tmp_path, size: int, tag: str):
    """A test server, a group of leader 0 and member 1 over it: (server, the leader's parts, the
    leader's bell, the member's slot link, the member's bell)."""
    server = Server(size)
    group = LocalGroup(0, (1,), tag)
    parts = Parts(size)
    leader = LeaderBell("run", group, 0, size, lambda params: open_bell(
        server.listener.address, server.secret, 0, parts, size, None, params=params))
    spec = member_spec("run", group, 0, 1, timeout=5)
    return server, parts, leader, WorkerLink(spec, size), join_leader(str(tmp_path / spec.bell_path), 1)


def test_the_members_have_their_answer_before_the_leaders_step_asks_for_its_own(tmp_path, monkeypatch):
    """The answer is relayed on the wire's receiving thread: a leader's step thread slow to wake up
    (a busy core) does not hold its members' next step back."""
    monkeypatch.setenv(SHM_ROOT_ENV, str(tmp_path))
    size = 3000
    server, leader_parts, leader, link, bell = _leader_and_one_member(tmp_path, size, "r")
    answers = []

    def member_step() -> None:
        link.send([np.full(size, 2.0, np.float32)], [0])
        bell.ring(0, 1, None, True)
        reply = bell.answer()
        answers.append((reply.version, link.receive(reply.payload).copy()))

    member = threading.Thread(target=member_step)
    member.start()
    leader_parts.set([np.ones(size, np.float32)], [0])
    leader.ring(0, 1, None, True)
    member.join(timeout=10)  # before the leader's `answer`
    assert not member.is_alive() and answers[0][0] == 1
    np.testing.assert_allclose(answers[0][1], 3.0 + 10)
    assert leader.answer().version == 1
    bell.close()
    leader.close()
    server.listener.close()


def test_a_server_gone_mid_push_releases_the_members_at_once(tmp_path, monkeypatch):
    """The leader's wire breaks while it sends the node's sum: its ring raises ServerGone, and so do the
    answers its members wait for (they would otherwise wait for a relay that never comes)."""
    from raytf.exchange.doorbell import ServerGone

    monkeypatch.setenv(SHM_ROOT_ENV, str(tmp_path))
    size = 1000
    server, parts, leader, link, bell = _leader_and_one_member(tmp_path, size, "g")
    link.send([np.ones(size, np.float32)], [0])
    bell.ring(0, 1, None, True)
    server.listener.close()  # closes the leader's connection too
    leader.bell.conn.close()  # and this end, so the next send fails at once
    parts.set([np.ones(size, np.float32)], [0])
    heard = []
    member = threading.Thread(target=lambda: heard.append(_raised(bell.answer)), daemon=True)
    member.start()
    with pytest.raises(ServerGone):
        leader.ring(0, 1, None, True)
    member.join(timeout=10)
    assert heard == [ServerGone], "the member still waits for an answer that will not come"


def _raised(call) -> type | None:
    try:
        call()
    except Exception as err:  # the test names the one it expects
        return type(err)
    return None


def test_a_doorbell_path_too_long_for_a_unix_socket_says_what_to_set(tmp_path, monkeypatch):
    from raytf.errors import ClusterError

    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    monkeypatch.setenv(SHM_ROOT_ENV, str(deep))
    opened = []
    with pytest.raises(ClusterError, match="too long for a Unix socket") as err:
        LeaderBell("run", LocalGroup(0, (1,), "t"), 0, 100, opened.append)
    assert "RAYTF_SHM_ROOT" in err.value.fix and "local_reduce: false" in err.value.fix
    assert opened == []  # refused before any wire was opened


def test_a_member_whose_leader_never_makes_its_files_is_told_which_worker_to_look_at(tmp_path, monkeypatch):
    from raytf.errors import ClusterError

    monkeypatch.setenv(SHM_ROOT_ENV, str(tmp_path))
    with pytest.raises(ClusterError, match="worker 3 waited 0 s for worker 2") as err:
        member_spec("run", LocalGroup(2, (3,), "t"), 0, 3, timeout=0.1)
    assert "worker's log" in err.value.fix and "local_reduce: false" in err.value.fix
