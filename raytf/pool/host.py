"""A pool host: a Ray actor that imported TensorFlow, Keras and raytf when `raytf up` started it, and
then plays one run's parameter server or worker at a time.

A run takes it (`take`), calls its role's methods through `call`, and gives it back (`give_back`):
the role closes its links and threads, every module of the run's own code is forgotten (the next
run imports the user's edited files afresh), Keras's session is cleared, freed memory goes back to
the kernel and the CPU pinning is undone. Where that cannot be made sure of (a thread of the run
still alive, memory far above the idle size), or the run's driver is gone while it holds the host
(killed, say), the process exits and Ray starts a fresh one in its place (max_restarts=-1): no
broken process stays in the pool.

Idle, a host holds no CPU in Ray's accounting (num_cpus=0); a run reserves its CPUs with a
placement group while it uses hosts (raytf.pool.lease).
"""

from __future__ import annotations

import gc
import os
import sys
import sysconfig
import threading
import time
from typing import Any

from raytf.pool.handles import Lease, code_env
from raytf.replica.placement import pin_process
from raytf.runtime import release_freed_memory

NAMESPACE = "raytf-pool"
NAME_PREFIX = "raytf-pool:"
MAX_CONCURRENCY = 32  # a server serves each of its workers' calls on a thread of its own
OWNER_CHECK_SECONDS = 2.0  # how often a taken host asks whether its run's driver is still there
THREADS_GRACE_SECONDS = 3.0  # how long a given-back host waits for the run's threads to end
# Threads a run starts (raytf's own, and unnamed Python threads); Ray's executor threads show as Dummy-N.
RUN_THREADS = ("raytf-", "Thread-")
RSS_SLACK = 0.10  # a host given back more than this above its idle size starts afresh


RAYTF_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the raytf package's directory


def host_name(node_id: str, index: int) -> str:
    return f"{NAME_PREFIX}{node_id[:12]}:{index}"


def warm_imports() -> None:
    """What every run's actors import first (TensorFlow's is ~4.5 CPU-seconds), without starting
    TensorFlow's runtime: a run's set-up still sets the thread pools to its CPUs."""
    from raytf.observe.native_logs import native_stderr_filtered, verbose_requested

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with native_stderr_filtered(verbose_requested()):
        import tensorflow  # noqa: F401
    import keras  # noqa: F401

    import raytf.exchange.optimizers  # noqa: F401
    import raytf.exchange.server  # noqa: F401
    import raytf.observe.metrics  # noqa: F401
    import raytf.replica.model  # noqa: F401
    import raytf.replica.worker  # noqa: F401


def rss_bytes() -> int:
    """This process's resident memory now (not its peak)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_mappings() -> list[str]:
    """Files of runs' exchange (shared slots, under raytf's shared-memory directory) this process still maps."""
    from raytf.exchange.transport import shm_user_dir

    root = shm_user_dir()
    with open("/proc/self/maps") as maps:
        paths = (fields[5].strip() for fields in (line.split(maxsplit=5) for line in maps) if len(fields) == 6)
        return sorted({path for path in paths if path.startswith(root)})


def _installed_roots() -> tuple[str, ...]:
    """Where installed packages and the standard library live: modules from there stay imported."""
    paths = sysconfig.get_paths()
    roots = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    roots.add(RAYTF_ROOT)
    return tuple(os.path.abspath(root) for root in roots)


def run_modules(before: set[str], roots: tuple[str, ...]) -> list[str]:
    """Modules imported since `before` that are the run's own code (not installed, not raytf):
    forgotten when the host is given back, so the next run imports the user's edited files."""
    found = []
    for name in set(sys.modules) - before:
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if path is None:
            continue
        if not os.path.abspath(path).startswith(roots):
            found.append(name)
    return found


def fingerprint() -> str:
    """raytf's code in this process: a hash of its files' names and contents (~1 MB, a few ms). A host
    whose code differs from the driver's (raytf upgraded or edited since `raytf up`) is recycled, not
    used. Contents, not times: a Ray job's working_dir holds a copy of the same files with other times."""
    import hashlib

    root = RAYTF_ROOT
    digest = hashlib.sha1()
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                digest.update(os.path.relpath(path, root).encode() + b"\0")
                with open(path, "rb") as source:
                    digest.update(source.read())
    return digest.hexdigest()[:16]


class PoolHost:
    """One warm process of the pool (see the module's docstring)."""

    def __init__(self, index: int) -> None:
        started = time.time()
        self.index = index
        warm_imports()
        self.code = fingerprint()
        self.lease: Lease | None = None
        self.role: Any = None  # the ParameterServer or Worker it plays for the lease
        self.runs = 0  # runs served by this process
        self.threads: int | None = None  # TensorFlow's thread pools, once a run set them (fixed for the process)
        self._lock = threading.Lock()
        self._released = threading.Event()  # set when the lease under way ends (its owner check stops)
        self.exiting = False  # it decided to leave: no run may take it in the moment before it does
        self.cleaning = False  # cleaning up after a run: no run may take it before that is done
        self._restore_env: dict[str, str | None] = {}
        self._added_paths: list[str] = []
        self._roots = _installed_roots()
        self.idle_modules = set(sys.modules)
        self.idle_threads = {t.ident for t in threading.enumerate()}
        # The cores it may use when idle; a worker's pinning (raytf.replica.placement) is undone to these.
        self.idle_cores = tuple(sorted(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else ()
        self.idle_rss = rss_bytes()
        self.warm_seconds = time.time() - started

    def __repr__(self) -> str:
        # The dashboard's Actors view shows this ("Repr"), taken when the process starts; each run's
        # tasks on it carry the run's actor names (raytf.pool.handles).
        return f"PoolHost({self.index}, warm raytf process)"

    # -- the pool's side --------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        import ray

        lease = self.lease
        context = ray.get_runtime_context()
        return {"node": context.get_node_id(), "pid": os.getpid(), "code": self.code,
                "code_env": code_env(dict(context.runtime_env or {})),
                "taken_by": (lease.actor_name if lease else "(exiting)" if self.exiting
                             else "(cleaning up)" if self.cleaning else None),
                "run_id": lease.run_id if lease else None, "runs": self.runs, "threads": self.threads, "rss": rss_bytes(), "idle_rss": self.idle_rss,
                "warm_seconds": self.warm_seconds}

    def take(self, lease: Lease, code: str) -> dict[str, Any] | None:
        """Give this host to `lease`'s run; None if another run has it. A host whose raytf differs
        from the driver's (`code`) is never given: it exits, and Ray starts it afresh with the new code."""
        with self._lock:
            if self.lease is not None or self.exiting or self.cleaning:
                return None
            if code != self.code:
                self._leave("its raytf differs from the driver's")
                return None
            if lease.working_dir and not all(os.path.isdir(path) for path in lease.paths):
                unpack_working_dir(lease.working_dir, lease.paths)  # Ray unpacked it only where the job's processes ran
            if not all(os.path.isdir(path) for path in lease.paths):
                return None  # the run's code is not on this node: a fresh actor gets it
            self._adopt(lease)
        return self.state()

    def hold(self, lease: Lease) -> None:
        """Return when `lease` no longer holds this host. The run starts it as a task named after the actor
        it plays (`raytf:<run>:ps-0.taken`): the dashboard's task views and `raytf status` show whose
        process this is for as long as the run has it, also while no other call of the run is under way."""
        with self._lock:
            released = self._released if self.lease == lease else None
        if released is not None:
            released.wait()

    def recycle(self) -> None:
        """Exit; Ray starts a fresh process in this host's place."""
        self._leave("asked to")

    def _leave(self, why: str, delay: float = 0.2) -> None:
        self.exiting = True
        _exit_soon(why, delay)

    # -- the run's side ----------------------------------------------------------------------
    def call(self, lease: Lease, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run the role's `method` for `lease`. A fresh process (Ray restarted this host during the run)
        takes the lease up again, as a restarted actor of the run would start."""
        with self._lock:
            if self.lease is None:
                self._adopt(lease)
            elif self.lease != lease:
                from raytf.errors import ClusterError

                raise ClusterError(f"Pool host {self.index} serves {self.lease.actor_name}, not {lease.actor_name}.",
                                   "This is a bug in raytf's pool; recycle the pool with `raytf down` and `raytf up`.")
            role = self.role
        return getattr(role, method)(*args, **kwargs)

    def run_task(self, lease: Lease, cwd: str, fn, *args: Any) -> Any:
        """Run `fn(*args)` here for the run holding `lease` (the model check before its training, its final
        model after), in the driver's directory `cwd` (relative paths of the config mean it); Keras's
        layer names start afresh after it, as they do in a new process (the role builds its replica next)."""
        import keras

        with self._lock:
            if self.lease != lease:
                from raytf.errors import ClusterError

                raise ClusterError(f"Pool host {self.index} is not taken by {lease.actor_name}.",
                                   "This is a bug in raytf's pool; recycle the pool with `raytf down` and `raytf up`.")
        here = os.getcwd()
        keras.backend.clear_session()
        try:
            if os.path.isdir(cwd):
                os.chdir(cwd)
            return fn(*args)
        finally:
            os.chdir(here)
            keras.backend.clear_session()

    def give_back(self, lease: Lease) -> dict[str, Any]:
        """End `lease`'s use of this host and clean up after it. Returns what was found: `clean` is
        False when the process exits instead (it is replaced)."""
        with self._lock:
            if self.lease != lease:
                return {"clean": True, "note": "not taken by this run"}
            role, self.role, self.lease = self.role, None, None
            self.cleaning = True
            self._released.set()
        try:
            return self._clean_up(role)
        except BaseException as err:  # noqa: BLE001 - whatever broke, this process leaves the pool
            self._leave(f"cleaning up after {lease.actor_name} failed: {type(err).__name__}: {err}")
            return {"clean": False, "error": f"{type(err).__name__}: {err}"}
        finally:
            self.cleaning = False

    def _clean_up(self, role) -> dict[str, Any]:
        if role is not None and hasattr(role, "close"):
            role.close()
        del role
        self.threads = _thread_pools()
        forgotten = run_modules(self.idle_modules, self._roots)
        for name in forgotten:
            sys.modules.pop(name, None)
        self._restore()
        import keras

        keras.backend.clear_session(free_memory=True)
        _flush_tensorflow_caches()
        gc.collect()
        pin_process(self.idle_cores)  # every thread back on every core it had before a run pinned it
        release_freed_memory()
        left = self._wait_for_run_threads()
        rss = rss_bytes()
        if self.runs == 0:
            # The first run started TensorFlow's runtime (thread pools, kernels), which stays: the idle
            # size of a host that served a run is the one to come back to.
            self.idle_rss = rss
        clean = not left and rss <= self.idle_rss * (1 + RSS_SLACK)
        if not clean:
            why = (f"threads of the run still alive: {left}" if left else
                   f"{rss / 2**20:.0f} MiB resident after the run, idle it held {self.idle_rss / 2**20:.0f} MiB")
            self._leave(why)
        self.runs += 1
        return {"clean": clean, "rss": rss, "idle_rss": self.idle_rss, "threads_left": left,
                "modules_forgotten": sorted(forgotten)}

    def leftovers(self) -> dict[str, Any]:
        """What of past runs this process still holds: TensorFlow variables, Keras models and layers,
        raytf's servers and workers reachable from anywhere (the leak test asks this). Only while idle:
        walking every object (and asking tensors their shape) under a run's feet would break its step."""
        if self.lease is not None or self.cleaning:
            from raytf.errors import ClusterError

            raise ClusterError(f"Pool host {self.index} is in use; leftovers are counted only between runs.",
                               "Ask again once the run has ended.")
        import keras
        import tensorflow as tf

        from raytf.exchange.server import ParameterServer
        from raytf.replica.worker import Worker

        gc.collect()
        counts = {"variables": 0, "keras_objects": 0, "roles": 0, "tensors": 0}
        seen: list[str] = []  # what they are, and what holds them: to find a leak's source
        for obj in gc.get_objects():
            try:
                if isinstance(obj, (tf.Variable, keras.Variable)):
                    counts["variables"] += 1
                elif isinstance(obj, (keras.Model, keras.layers.Layer, keras.optimizers.Optimizer)):
                    counts["keras_objects"] += 1
                elif isinstance(obj, (ParameterServer, Worker)):
                    counts["roles"] += 1
                elif isinstance(obj, tf.Tensor):
                    counts["tensors"] += 1
                else:
                    continue
                holders = [type(r).__name__ for r in gc.get_referrers(obj)][:4]
                seen.append(f"{type(obj).__name__} {getattr(obj, 'shape', '')} held by {holders}")
            except ReferenceError:  # a weak proxy whose object is gone
                continue
        return {**counts, "held": seen[:10], "mappings": run_mappings(), "rss": rss_bytes(),
                "idle_rss": self.idle_rss, "pid": os.getpid(), "threads": sorted(t.name for t in self._run_threads()),
                "run_modules": sorted(run_modules(self.idle_modules, self._roots))}

    # -- inside ------------------------------------------------------------------------------
    def _adopt(self, lease: Lease) -> None:
        from raytf.exchange.server import ParameterServer
        from raytf.replica.worker import Worker

        self.lease = lease
        self._apply(lease)
        role_cls = ParameterServer if lease.role == "ps" else Worker
        self.role = role_cls(lease.run_id, lease.index, lease.description)
        self._released = threading.Event()
        threading.Thread(target=self._watch_owner, args=(lease, self._released), name="raytf-pool-owner",
                         daemon=True).start()

    def _apply(self, lease: Lease) -> None:
        """The run's environment and import paths, as its own actors would have them."""
        for key, value in lease.env:
            self._restore_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value
        for path in reversed(lease.paths):
            if path not in sys.path:
                sys.path.insert(0, path)
                self._added_paths.append(path)

    def _restore(self) -> None:
        for key, value in self._restore_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._restore_env.clear()
        for path in self._added_paths:
            if path in sys.path:
                sys.path.remove(path)
        self._added_paths.clear()

    def _watch_owner(self, lease: Lease, released: threading.Event) -> None:
        """While `lease` holds this host: exit if its driver's Ray job ended without giving it back."""
        while not released.wait(OWNER_CHECK_SECONDS):
            if job_ended(lease.job_id):
                self._leave(f"the driver of {lease.actor_name} is gone", delay=0.0)
                return

    def _run_threads(self) -> list[threading.Thread]:
        """Threads a run started that are alive (not those there when it became idle, nor Ray's executors)."""
        return [t for t in threading.enumerate() if t.ident not in self.idle_threads and t.name.startswith(RUN_THREADS)]

    def _wait_for_run_threads(self) -> list[str]:
        """The run's threads still alive after THREADS_GRACE_SECONDS."""
        deadline = time.monotonic() + THREADS_GRACE_SECONDS
        while True:
            left = self._run_threads()
            if not left or time.monotonic() > deadline:
                return sorted(t.name for t in left)
            left[0].join(timeout=0.1)


def unpack_working_dir(uri: str, paths: tuple[str, ...]) -> None:
    """Unpack a job's working_dir package (`uri`, in the GCS) where the run's import paths expect it:
    Ray unpacks it per node into the same session directory, `.../working_dir_files/_ray_pkg_<hash>`, but
    only on nodes where the job's own processes run. Ray's DeveloperAPI download; a failure leaves the
    path missing (the run starts a fresh actor there)."""
    import asyncio
    from pathlib import Path

    import ray
    from ray._private.runtime_env.packaging import download_and_unpack_package, get_local_dir_from_uri

    for path in paths:
        parent = os.path.dirname(path)
        if os.path.isdir(path) or get_local_dir_from_uri(uri, parent) != Path(path):
            continue  # there already, or not this package's place
        os.makedirs(parent, exist_ok=True)
        try:
            asyncio.run(download_and_unpack_package(uri, parent, gcs_client=ray._private.worker.global_worker.gcs_client))
        except (OSError, ValueError) as err:
            print(f"raytf pool host: could not unpack {uri} into {parent}: {err}", file=sys.stderr, flush=True)


def job_ended(job_id: str) -> bool:
    """Whether the Ray job `job_id` (hex) is known to the cluster and over. Ray's public API has no
    such question without the dashboard, so this reads the GCS's job table through Ray's private
    `ray._private.state`, as raytf.driver.groups reads its actor table."""
    from ray._private.state import state

    return any(job["JobID"] == job_id and job["IsDead"] for job in state.job_table())


def _flush_tensorflow_caches() -> None:
    """Empty TensorFlow's per-process caches of small constant tensors (ones and zeros that gradients
    reuse): the last run's would otherwise stay reachable. Private API, so where it is missing, nothing."""
    try:
        from tensorflow.python.eager import context

        ctx = context.context()
        for cache in (ctx.ones_rank_cache(), ctx.zeros_cache()):
            cache.flush()
    except (ImportError, AttributeError):
        pass


def _thread_pools() -> int | None:
    import tensorflow as tf

    return tf.config.threading.get_intra_op_parallelism_threads() or None


def _exit_soon(why: str, delay: float = 0.2) -> None:
    """Leave the pool's process after `delay` (the answer of the call under way gets out first);
    Ray starts a fresh one in its place."""
    print(f"raytf pool host exits ({why}); Ray starts a fresh process in its place.", file=sys.stderr, flush=True)
    timer = threading.Timer(delay, os._exit, args=(1,))
    timer.daemon = True
    timer.start()
