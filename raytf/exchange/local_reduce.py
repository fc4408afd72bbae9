"""Node-local reduction (BytePS's local reduce): a node's workers push one sum across nodes.

In a sync round without backup workers every worker's gradient for a server is only ever summed
there. Where several workers share a node and their servers are all on other nodes, each gradient
and each answer would cross between nodes once per worker; here they cross once per node:

* The node's lowest-indexed worker is its **leader**. Per server it keeps a slot file per other
  worker (a **member**) and one parameter file, in the run's private shared-memory
  directory on that node, and a doorbell (raytf.exchange.doorbell) the members ring.
* A member's push writes its gradient into its slot and rings; the leader's waits for every live
  member's ring, sums their gradients and its own (a copy and an add per member: ~0.2 ms for 7.45 MB,
  where a crossing of loopback TCP costs ~1.6 ms of CPU) and sends the sum over its wire with the list
  of whom it carries (raytf.exchange.wire_link's CARRIED frame). The server counts each of them as a
  push (the mean divides by how many finite gradients the sum holds) and answers the leader only.
* The answer lands in the parameter file; the leader tells each member which buffer, and every step
  on the node reads it in place.

Faults: a member that dies closes its doorbell connection and the leader stops waiting for it (its
gradient of an open round is in the sum, or not yet rung); it comes back with a direct wire link of
its own, as any restarted worker does. A leader that dies closes the doorbell: its members' answers
raise ServerGone, and the run rolls back as for a lost server (the node's sum went with it).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import numpy as np

from raytf.errors import ClusterError
from raytf.exchange import Reply
from raytf.exchange.doorbell import MAX_PATH, Bell, Doorbell, ServerGone
from raytf.exchange.transport import LinkSpec, make_run_dir, map_slot, shm_root, unlink_if_there
from raytf.exchange.wire_link import CARRIED_FIELDS, WireBell

JOIN_TIMEOUT = 120.0  # a member waits this long for its leader's files (both are being connected at once)


@dataclass(frozen=True)
class LocalGroup:
    """Workers on one node whose pushes one of them sums: `leader`, and the `members` it carries."""

    leader: int
    members: tuple[int, ...]
    tag: str = ""  # names this wiring's files: a member never finds those of an earlier one (a rollback wires anew)

    def role(self, worker: int) -> str:
        return "leader" if worker == self.leader else "member"


def eligible(mode: str, backup_workers: int, has_tables: bool, pull_codec: str) -> bool:
    """Whether a run's sync rounds may be summed per node: sync without backups (every gradient of a
    round is summed at the server anyway), no sparse rows (each worker asks for its own), and a
    pull codec every worker of the node can read from one buffer (int8's is per receiver)."""
    return mode == "sync" and not backup_workers and not has_tables and pull_codec != "int8"


def plan_groups(worker_nodes: list[str], server_nodes: list[str], kinds: list[list[str]],
                tag: str = "") -> dict[int, LocalGroup]:
    """Per worker, its node's group: the workers of a node without a server that reach every server
    over the wire (`kinds[server][worker]`), where there are at least two of them."""
    by_node: dict[str, list[int]] = {}
    for worker, node in enumerate(worker_nodes):
        if kinds and node not in server_nodes and all(per_server[worker] == "wire" for per_server in kinds):
            by_node.setdefault(node, []).append(worker)
    groups = {}
    for workers in by_node.values():
        if len(workers) > 1:
            group = LocalGroup(workers[0], tuple(workers[1:]), tag)
            groups.update({w: group for w in workers})
    return groups


def _names(group: LocalGroup, server: int) -> tuple[str, str, str]:
    """The files of a leader's group for one server: member slot prefix, parameters, doorbell."""
    stem = f"L{group.leader}s{server}{group.tag}"
    return f"{stem}g", f"{stem}p", f"{stem}b"


def member_spec(run_id: str, group: LocalGroup, server: int, worker: int, timeout: float = JOIN_TIMEOUT) -> LinkSpec:
    """A member's link to one server: its slot and the parameter file, and the leader's doorbell
    (relative to the node's shared-memory root), once the leader has made them."""
    slot, params, bell = (os.path.join(make_run_dir(run_id), name) for name in _names(group, server))
    deadline = time.monotonic() + timeout
    while not os.path.exists(bell):  # the doorbell comes last: the files are there
        if time.monotonic() > deadline:
            raise ClusterError(
                f"worker {worker} waited {timeout:.0f} s for worker {group.leader}, which sums the gradients of "
                f"its node, to make its exchange files; it did not.",
                "Look at that worker's log for an error; or set distribution.local_reduce: false.")
        time.sleep(0.05)
    root = shm_root()
    return LinkSpec(grad_path=os.path.relpath(f"{slot}{worker}", root), params_path=os.path.relpath(params, root),
                    halves=1, bell_path=os.path.relpath(bell, root))


def join_leader(path: str, worker: int, timeout: float = 10.0) -> Bell:
    """A member's doorbell to its leader (whose socket may exist a moment before it listens)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return Bell(path, worker)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class LeaderBell:
    """The leader's end for one server: its members ring its doorbell; `ring` sends the node's sum
    over the leader's wire (a WireBell), `answer` relays the server's answer to them."""

    def __init__(self, run_id: str, group: LocalGroup, server: int, size: int, open_wire) -> None:
        """`open_wire(params)`: the leader's WireBell to the server, answering into `params`."""
        self.index = group.leader
        run_dir = make_run_dir(run_id)
        slot, params, bell = (os.path.join(run_dir, name) for name in _names(group, server))
        if len(bell) > MAX_PATH:
            raise ClusterError(f"the path of worker {self.index}'s doorbell for its node's workers is too long for a "
                               f"Unix socket ({len(bell)} > {MAX_PATH} characters): {bell}.",
                               "Set RAYTF_SHM_ROOT to a shorter tmpfs path, or distribution.local_reduce: false.")
        self._paths = [f"{slot}{m}" for m in group.members] + [params]
        for path in [*self._paths, bell]:
            unlink_if_there(path)  # left by a process of this worker that died
        self._grads = {m: map_slot(f"{slot}{m}", size, create=True) for m in group.members}
        # One buffer, as the shared slot of sync on one node: every worker of the node reads it in
        # its step, and the next answer comes only once all of them have pushed again.
        self.params = map_slot(params, size, create=True, halves=1)
        self.bell: WireBell = open_wire(self.params)
        self._cond = threading.Condition()
        self._live = set(group.members)  # members that have not hung up
        self._rung: dict[int, tuple[int, int, float | None, bool]] = {}  # member -> its push of this round
        self._carrying: list[int] = []  # the members whose pushes the sum in flight carries: answered with it
        self._closed = False
        self.bell.on_answer = self._relay_answer  # no answer can come before the first ring
        self.doorbell = Doorbell(bell, self._member_rang, on_gone=self._gone)

    @property
    def conn(self):
        return self.bell.conn

    # -- the members' doorbell threads ---------------------------------------------------------------

    def _member_rang(self, worker: int, base_version: int, steps: int, loss: float | None, finite: bool) -> None:
        """A member's push: answered by `_relay_answer` (a closed leader closes the doorbell: ServerGone there)."""
        with self._cond:
            if worker not in self._live or self._closed:
                raise ServerGone(f"worker {self.index} no longer sums worker {worker}'s gradients")
            self._rung[worker] = (base_version, steps, loss, finite)
            self._cond.notify_all()

    def _gone(self, worker: int) -> None:
        with self._cond:
            self._live.discard(worker)
            self._rung.pop(worker, None)  # its ring of a round not sent yet: it is not in the sum
            self._cond.notify_all()

    # -- the leader's step ---------------------------------------------------------------------------

    def ring(self, base_version: int, steps_done: int, loss: float | None, finite: bool) -> None:
        """Wait for every live member's push, then send the node's sum."""
        with self._cond:
            self._cond.wait_for(lambda: self._live <= set(self._rung) or self._closed)
            if self._closed:
                raise ServerGone("the leader's links are closed")
            rung, self._rung = self._rung, {}
            self._carrying = sorted(rung)
        rows = [(self.index, steps_done, finite, loss is not None, np.nan if loss is None else loss)]
        rows += [(m, s, f, lo is not None, np.nan if lo is None else lo) for m, (_, s, lo, f) in sorted(rung.items())]
        carried = np.array(rows, np.float32).reshape(-1, CARRIED_FIELDS)
        try:
            self._send(base_version, steps_done, loss, finite, carried, rung)
        except ServerGone:
            self.close()  # the members waiting for this round's answer hear it at once
            raise

    def _send(self, base_version: int, steps_done: int, loss: float | None, finite: bool, carried: np.ndarray,
              rung: dict[int, tuple[int, int, float | None, bool]]) -> None:
        summed = [m for m in sorted(rung) if rung[m][3]]
        if not summed:
            self.bell.ring(base_version, steps_done, loss, finite, carried=carried)
            return
        # The first member's slot takes the sum, chunk by chunk just before the chunk is sent (one
        # pass over the bytes, while the chunk before it travels); its member writes it again only
        # after this round's answer. The slots' padding between variables is zero: only the
        # variables' ranges (the leader's parts) are added and sent.
        total, others = self._grads[summed[0]], [self._grads[m] for m in summed[1:]]
        own = self.bell.gradient.parts if self.bell.gradient.parts else [(0, total)]

        def add(number: int, start: int, stop: int) -> None:
            offset, part = own[number]
            view = total[offset + start:offset + stop]
            for other in others:
                np.add(view, other[offset + start:offset + stop], out=view)
            if finite:
                np.add(view, part[start:stop], out=view)

        parts = [(offset, total[offset:offset + part.size]) for offset, part in own]
        self.bell.ring(base_version, steps_done, loss, finite, carried=carried, parts=parts, before=add)

    def _relay_answer(self, reply: Reply) -> None:
        """The server's answer, relayed to the members on the wire's receiving thread as soon as it is
        in: written to their doorbell sockets from here, not after the leader's step thread or a
        doorbell thread has woken up to it (each wake-up ~0.1-0.3 ms on busy cores before the
        members' next step)."""
        relay = Reply(reply.status, reply.version, self.bell.half, reply.dropped)
        with self._cond:
            members, self._carrying = self._carrying, []
        for member in members:
            self.doorbell.answer(member, relay)

    def answer(self) -> Reply:
        try:
            return self.bell.answer()  # relayed to the members already (`_relay_answer`)
        except ServerGone:
            self.close()
            raise

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self.doorbell.close()
        self.bell.close()
        for path in self._paths:
            unlink_if_there(path)
