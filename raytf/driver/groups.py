"""The run's parameter servers and workers as two groups the driver speaks to in intents
(`servers.stop_at(version)`, `workers.start_rejoin(i, ...)`, `servers.restarted()`), so that Ray's
calls, waits and exceptions stay here, at the boundary, and come out as raytf's errors or as plain
outcomes (`Lost`) the supervisor decides on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

from raytf.config import OptimizerConfig, TrainConfig
from raytf.data.sources import DataPlan
from raytf.errors import RaytfError, TrainingError
from raytf.exchange.messages import ServerStats, WorkerResult
from raytf.exchange.server import ServerSettings
from raytf.exchange.shard_state import ShardState
from raytf.exchange.sharding import ShardPlan
from raytf.exchange.transport import LinkSpec
from raytf.pool.handles import HostedHandle, gcs_actor_entry

CALL_TIMEOUT = 30.0  # seconds for a control call to a live actor
RESTART_TIMEOUT = 300.0  # seconds for Ray to bring a lost actor back (a new process imports TensorFlow)


def unwrap(err: BaseException) -> BaseException:
    """The user-facing error behind a Ray task error, when there is one."""
    import ray

    if isinstance(err, ray.exceptions.RayTaskError) and isinstance(err.cause, RaytfError):
        return err.cause
    return err


def get(refs, what: str):
    """`ray.get`, with an actor's failure raised as raytf's error (the actor's own RaytfError when it
    raised one, else a TrainingError naming `what` and the cause)."""
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
    """(restarts, state) of an actor as Ray's GCS has it (raytf.pool.handles.gcs_actor_entry): how many
    times Ray restarted its process for this run, and ALIVE, RESTARTING, DEAD (Ray gave up on it) or
    PENDING_CREATION; None if the GCS does not know it."""
    entry = gcs_actor_entry(handle)  # a pool host's handle carries its host's actor id
    if entry is None:
        return None
    # A pool host (raytf.pool) was restarted for other runs before this one took it: those are not this run's.
    before = handle.restarts_before if isinstance(handle, HostedHandle) else 0
    return entry[0] - before, entry[1]


@dataclass(frozen=True)
class Pending:
    """Calls under way on several actors, waited for together (`join`)."""

    refs: tuple
    what: str

    def __add__(self, other: "Pending") -> "Pending":
        return Pending(self.refs + other.refs, self.what)

    def join(self, what: str | None = None) -> list:
        return get(list(self.refs), what or self.what)


@dataclass(frozen=True)
class Lost:
    """A worker's call failed because its process died. `restarting`: Ray says it is coming back
    (the actor is restarting, or its node was preempted, a death Ray restarts without counting)."""

    error: str  # the Ray exception's name, for the message
    restarting: bool


class ServerGroup:
    """The run's parameter servers, in shard order."""

    def __init__(self, handles: list) -> None:
        self.handles = list(handles)

    def __len__(self) -> int:
        return len(self.handles)

    def set_up(self, states: list[ShardState], optimizer: OptimizerConfig, settings: ServerSettings) -> Pending:
        """Start (re)building every server from `states`."""
        return Pending(tuple(s.setup.remote(states[j], optimizer, settings) for j, s in enumerate(self.handles)),
                       "Setting up the parameter servers")

    def locate(self) -> list[tuple[str, bool]]:
        """Per server: its node, and whether the node has shared memory for the exchange."""
        return get([s.node_info.remote() for s in self.handles], "Locating the parameter servers")

    def open_links(self, server: int, kinds: list[str]) -> list[LinkSpec]:
        """Open a server's links, per worker of `kinds` ("shm", "wire", "object_store")."""
        return get(self.handles[server].open_links.remote(kinds), "Opening the exchange buffers")

    def statistics(self) -> list[ServerStats] | None:
        """Every server's statistics; None when one is gone or came back empty (a rollback is due).
        A server busy beyond CALL_TIMEOUT (a large checkpoint) keeps the last answer: `BUSY`."""
        import ray

        refs = [s.stats.remote() for s in self.handles]
        try:
            stats = ray.get(refs, timeout=CALL_TIMEOUT)
        except ray.exceptions.RayActorError:
            return None
        except ray.exceptions.GetTimeoutError:
            return BUSY
        except ray.exceptions.RayTaskError:
            get(refs, "A parameter server")  # its error as raytf's (a checkpoint file it failed to write, say)
            raise
        return stats if all(s.ready for s in stats) else None

    def forget_worker(self, worker: int) -> None:
        """Every barrier stops waiting for `worker` (it is admitted again when it rejoins)."""
        import ray

        try:
            ray.get([s.remove_worker.remote(worker) for s in self.handles], timeout=CALL_TIMEOUT)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass  # a server is gone as well: the next statistics roll everything back

    def abort(self) -> None:
        """Release every waiting exchange call with "rollback" (not waited for: a server may be dead)."""
        for server in self.handles:
            server.abort.remote()

    def restarted(self, max_restarts: int) -> list[int]:
        """After an abort: the servers that came back empty (restarted by Ray), waiting for those still
        restarting. One that does not come back within RESTART_TIMEOUT ends the run."""
        import ray

        lost = []
        for j, server in enumerate(self.handles):
            try:
                ready = _when_back(lambda: server.is_ready.remote())
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                raise TrainingError(f"Parameter server {j} was lost and did not come back within {RESTART_TIMEOUT:.0f} s "
                                    f"(distribution.max_restarts is {max_restarts}).",
                                    "See its log in the Ray dashboard; resume with --resume once the cluster is healthy.") from None
            if not ready:
                lost.append(j)
        return lost

    def stop_at(self, version: int) -> bool:
        """Ask every server to end the run at `version`; False if one has passed it already."""
        return all(get([s.set_target.remote(version) for s in self.handles], "Stopping the servers"))

    def parameters(self) -> list[np.ndarray]:
        return get([s.get_params.remote() for s in self.handles], "Collecting parameters")

    def table(self, k: int) -> list[np.ndarray]:
        """Every server's rows of sparse table `k`."""
        return get([s.get_table.remote(k) for s in self.handles], "Collecting the sparse tables")

    def final_statistics(self) -> list[ServerStats]:
        return get([s.stats.remote() for s in self.handles], "Collecting statistics")

    def ray_states(self) -> list[tuple[int, str] | None]:
        return [actor_state(s) for s in self.handles]

    def close(self) -> None:
        """Let every server remove its exchange files (bounded: one may be dead; its files are swept)."""
        import ray

        for server in self.handles:
            try:
                ray.get(server.close.remote(), timeout=10)
            except (ray.exceptions.RayError, TimeoutError):
                pass  # it may already be dead; the driver sweeps its files


BUSY: Any = object()  # ServerGroup.statistics: no answer in time, nothing is known to be wrong


class WorkerGroup:
    """The run's workers, and the one call (`run` or `rejoin`) each may have under way."""

    def __init__(self, handles: list, threads: int, data: DataPlan | None = None,
                 statistics: list[np.ndarray] | None = None) -> None:
        self.handles = list(handles)
        self.threads = threads  # compute threads per worker
        self.data = data or DataPlan()  # how each worker reads its share of data.train
        self.statistics = statistics  # the non-trainable values the replicas start from (a resumed checkpoint's)
        self.calls: dict[int, Any] = {}  # worker -> its `run`/`rejoin` under way

    def __len__(self) -> int:
        return len(self.handles)

    def set_up(self, config: TrainConfig, plan: ShardPlan, which: Iterable[int] | None = None) -> Pending:
        """Start building the replicas of all workers, or of `which`."""
        which = range(len(self.handles)) if which is None else which
        return Pending(tuple(self.handles[i].setup.remote(config.to_dict(), plan, len(self.handles), self.threads, self.data,
                                                     self.statistics)
                             for i in which), "Setting up the workers")

    def locate(self) -> list[str]:
        return get([w.node_id.remote() for w in self.handles], "Locating the workers")

    def wait_back(self, which: Iterable[int]) -> None:
        """Wait until each of `which` (lost workers Ray restarts) answers from its new process: a call
        sent while Ray restarts an actor may fail with ActorUnavailableError instead of waiting."""
        import ray

        for worker in which:
            try:
                _when_back(lambda: self.handles[worker].node_id.remote())
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as err:
                why = ("Ray gave up restarting it (distribution.max_restarts)" if isinstance(err, ray.exceptions.ActorDiedError)
                       else f"it did not come back within {RESTART_TIMEOUT:.0f} s")
                raise TrainingError(f"Worker {worker} was lost and {why}.",
                                    "See its log in the Ray dashboard; resume with --resume once the cluster is healthy.") from None

    def place(self, nodes: list[str]) -> list[tuple[int, ...]]:
        """Pin each worker (on `nodes`) to cores of its own where it may (raytf.replica.placement);
        returns the cores each runs on, () where not pinned."""
        import ray

        from raytf.replica.placement import node_ranks

        node_cpus = {n["NodeID"]: n.get("Resources", {}).get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")}
        return get([w.place.remote(rank, count, node_cpus.get(node, 0.0))
                    for w, node, (rank, count) in zip(self.handles, nodes, node_ranks(nodes))], "Placing the workers")

    def connect(self, servers: ServerGroup, links: list[list[LinkSpec]], groups: dict | None = None) -> list[list[str]]:
        """Connect each worker to every server by the links given (per worker); returns how each reaches each."""
        groups = groups or {}  # worker -> its raytf.exchange.local_reduce.LocalGroup
        return get([w.connect.remote(servers.handles, links[i], groups.get(i)) for i, w in enumerate(self.handles)],
                   "Connecting workers to parameter servers")

    # -- the calls that train --------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return bool(self.calls)

    def start_run(self, worker: int, target_version: int) -> None:
        self.calls[worker] = self.handles[worker].run.remote(target_version)

    def start_rejoin(self, worker: int, config: TrainConfig, plan: ShardPlan, servers: ServerGroup,
                     target_version: int) -> None:
        """Set a restarted worker up again and let it train. No links are passed: the restarted process
        may be on another node, so the servers decide them anew."""
        # Its replica starts from the others' statistics of this moment (the run's start values if none answers).
        statistics = self.non_trainable() or self.statistics
        self.calls[worker] = self.handles[worker].rejoin.remote(
            config.to_dict(), plan, len(self.handles), self.threads, servers.handles, target_version, self.data,
            statistics)

    def finished(self, timeout: float) -> list[tuple[int, WorkerResult | Lost]]:
        """The calls that ended within `timeout` (at least one, unless none did): each worker's result,
        or `Lost`. A worker whose call raised an error ends the run with it."""
        import ray

        by_ref = {ref: worker for worker, ref in self.calls.items()}
        ready, _ = ray.wait(list(by_ref), num_returns=1, timeout=timeout)
        return [self._outcome(by_ref[ref]) for ref in ready]

    def drain(self) -> list[tuple[int, WorkerResult | Lost]]:
        """Wait for every call under way (the servers were aborted, so each ends soon)."""
        import ray

        outcomes = []
        for worker, ref in list(self.calls.items()):
            try:
                ray.get(ref, timeout=RESTART_TIMEOUT)
            except ray.exceptions.GetTimeoutError:
                raise TrainingError(f"Worker {worker} did not stop within {RESTART_TIMEOUT:.0f} s after a parameter "
                                    "server was lost.", "See the worker's log in the Ray dashboard.") from None
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError):
                pass  # _outcome says which
            outcomes.append(self._outcome(worker))
        return outcomes

    def _outcome(self, worker: int) -> tuple[int, WorkerResult | Lost]:
        import ray

        ref = self.calls.pop(worker)
        try:
            return worker, ray.get(ref)
        except ray.exceptions.RayActorError as err:
            restarting = isinstance(err, ray.exceptions.ActorUnavailableError) or bool(getattr(err, "preempted", False))
            return worker, Lost(type(err).__name__, restarting)
        except ray.exceptions.RayTaskError:
            get(ref, f"Worker {worker}")  # raises the user-facing error
            raise

    # -- asking the workers --------------------------------------------------------------------
    def link_kinds(self, worker: int) -> list[str] | None:
        """How `worker` reaches each server now; None if it is lost again."""
        import ray

        try:
            return ray.get(self.handles[worker].link_kinds.remote(), timeout=CALL_TIMEOUT)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return None

    def non_trainable(self) -> list[np.ndarray] | None:
        """The trained non-trainable values (BatchNorm's moving statistics, ...) averaged over the workers
        whose process still holds its replica (one that died after its work was done holds none), as
        TensorFlow's strategies aggregate such variables (ON_READ, MEAN): each worker's statistics are of
        its own shard. Values that are not floats (a seed generator's state) are the first such worker's.
        None if no worker holds its replica."""
        found = []
        for worker in self.handles:
            known = actor_state(worker)
            if known is None or known[1] != "ALIVE":
                continue  # dead or being restarted: no replica there, and no waiting for its process
            values = answer(worker.non_trainable, "Collecting non-trainable variables")
            if values is not None:
                found.append(values)
        return mean_over_workers(found) if found else None

    def ray_states(self) -> list[tuple[int, str] | None]:
        return [actor_state(w) for w in self.handles]


def mean_over_workers(per_worker: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Each value's mean over the workers where it is a float, else the first worker's."""
    return [np.mean(values, axis=0).astype(values[0].dtype) if np.issubdtype(values[0].dtype, np.floating)
            else values[0] for values in zip(*per_worker)]


def trace_tracks(groups: Iterable[ServerGroup | WorkerGroup]) -> list:
    """Every actor's recorded timeline; one that died after its work was done took its own along."""
    tracks = (answer(actor.trace_track, "Collecting the trace") for group in groups for actor in group.handles)
    return [track for track in tracks if track is not None]


def answer(method, what: str) -> Any:
    """`method`'s answer, or None when its actor died (or is being restarted) meanwhile, or did not
    answer within CALL_TIMEOUT."""
    import ray

    ref = method.remote()
    try:
        return ray.get(ref, timeout=CALL_TIMEOUT)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return None
    except ray.exceptions.RayTaskError:
        get(ref, what)  # raises raytf's error for it
        raise


def _when_back(call: Callable[[], Any], timeout: float = RESTART_TIMEOUT) -> Any:
    """The result of `call()`, asked again while Ray says the actor is restarting (unavailable)."""
    import ray

    deadline = time.monotonic() + timeout
    while True:
        try:
            return ray.get(call(), timeout=max(deadline - time.monotonic(), 0.1))
        except ray.exceptions.ActorUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)  # its new process is starting
