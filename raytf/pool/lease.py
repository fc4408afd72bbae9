"""The driver's side of the pool: find the hosts that fit a run, reserve the run's CPUs, take the
hosts, and give them back when the run ends.

The run's CPUs are reserved by a placement group of one bundle per actor (a host holds no CPU of
its own): Ray puts the bundles on nodes as it would the actors, and each bundle's actor is an idle
host of that node, or, where the node has none left, a fresh actor started in the bundle as today.
A run the pool cannot serve at all (GPUs, more concurrent calls than a host takes) starts fresh
actors and says why once; hosts made of other packages than the run's job (pip, py_modules, conda)
are passed over.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

from raytf.config import Resources
from raytf.pool.handles import HostedHandle, Lease, code_env, gcs_actor_entry
from raytf.pool.host import MAX_CONCURRENCY, NAME_PREFIX, NAMESPACE, fingerprint

STATE_TIMEOUT = 2.0  # seconds for the hosts to say whether they are idle (a warming one is not yet)
RESERVE_TIMEOUT = 10.0  # seconds for the run's CPUs; a busy cluster falls back to starting actors, which wait
GIVE_BACK_TIMEOUT = 30.0


@dataclass(frozen=True)
class Want:
    """One actor a run needs."""

    role: str  # "ps" or "worker"
    index: int
    description: str
    resources: Resources
    max_concurrency: int


@dataclass
class PoolUse:
    """What a run has of the pool: per wanted actor, its host's handle or None (start a fresh actor
    with `fresh_options[i]`), and the placement group that holds the run's CPUs."""

    hosted: list[HostedHandle | None]
    fresh_options: list[dict[str, Any]]
    placement_group: Any = None
    said: list[str] = field(default_factory=list)  # what the run should tell the user about its actors
    given_back: bool = False

    def give_back(self) -> None:
        """Give every host back (each cleans up, or is replaced when it cannot) and free the CPUs."""
        import ray

        if self.given_back:
            return
        self.given_back = True
        hosted = [h for h in self.hosted if h is not None]
        refs = {h.host.give_back.remote(h.lease): h for h in hosted}
        ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=GIVE_BACK_TIMEOUT)
        for ref in ready:
            try:
                ray.get(ref)
            except ray.exceptions.RayError:
                pass  # its process died: Ray starts a fresh one, which is clean
        for ref in late:
            ray.kill(refs[ref].host, no_restart=False)  # stuck in the run's work: start it afresh
        if self.placement_group is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self.placement_group)
            self.placement_group = None


def pool_hosts() -> dict[str, Any]:
    """Every host of the pool by name (none when `raytf up` started no pool)."""
    import ray

    names = [entry["name"] for entry in ray.util.list_named_actors(all_namespaces=True)
             if entry.get("namespace") == NAMESPACE and entry.get("name", "").startswith(NAME_PREFIX)]
    handles = {}
    for name in sorted(names):
        try:
            handles[name] = ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:  # removed meanwhile
            continue
    return handles


def host_states(hosts: list, timeout: float = STATE_TIMEOUT) -> list[tuple[Any, dict]]:
    """(handle, state) of the hosts that answer within `timeout` (one still importing does not)."""
    import ray

    refs = {h.state.remote(): h for h in hosts}
    ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
    found = []
    for ref in ready:
        try:
            found.append((refs[ref], ray.get(ref)))
        except ray.exceptions.RayError:
            continue  # restarting, or gone
    return found


def why_not_pooled(wants: list[Want]) -> str | None:
    """Why a run cannot use the pool at all, or None."""
    if any(w.resources.num_gpus for w in wants):
        return "the run asks for GPUs, which Ray gives to an actor when it starts"
    if any(w.max_concurrency > MAX_CONCURRENCY for w in wants):
        return f"a parameter server of this many workers serves more calls at once than a pool host ({MAX_CONCURRENCY})"
    return None


def bundle(resources: Resources) -> dict[str, float]:
    """What an actor reserves; {} when nothing (a server of num_cpus 0: Ray refuses empty bundles, so
    it gets none, and a host of the node most of the run is on)."""
    reserve = {"CPU": resources.num_cpus, **dict(resources.resources)}
    return {key: value for key, value in reserve.items() if value}


def take(wants: list[Want], run_id: str, run_name: str, on_event: Callable[[str], None]) -> PoolUse | None:
    """Hosts for the run's actors (see the module's docstring); None when there is no pool, or the run
    cannot use it (said once through `on_event`)."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    hosts = list(pool_hosts().values())
    if not hosts:
        return None
    context = ray.get_runtime_context()
    runtime_env = dict(context.runtime_env or {})
    why = why_not_pooled(wants)
    if why is not None:
        on_event(f"Not using the warm pool: {why}; starting the run's actors afresh.")
        return None
    code, made_of = fingerprint(), code_env(runtime_env)
    idle: dict[str, list[tuple[Any, dict]]] = {}
    stale = other_env = 0
    for handle, state in host_states(hosts):
        if state["taken_by"] is not None:
            continue
        if state["code_env"] != made_of:  # started with other packages (pip, py_modules, conda)
            other_env += 1
            continue
        if state["code"] != code:
            handle.recycle.remote()  # it restarts with the code the driver has
            stale += 1
            continue
        idle.setdefault(state["node"], []).append((handle, state))
    reserved = _reserve(wants, idle, f"raytf:{run_name}:{run_id}", on_event)
    if reserved is None:
        return None
    pg, bundle_of, nodes = reserved
    env_vars = dict(runtime_env.get("env_vars", {}))
    paths = tuple(p for p in env_vars.pop("PYTHONPATH", "").split(os.pathsep) if p)
    leases, picks = [], []
    for i, want in enumerate(wants):
        lease = Lease(run_id=run_id, run_name=run_name, role=want.role, index=want.index, description=want.description,
                      job_id=context.get_job_id(), paths=paths, env=tuple(sorted(env_vars.items())),
                      working_dir=runtime_env.get("working_dir"))
        free = idle.get(nodes[i], [])
        threads = max(1, int(want.resources.num_cpus))
        free.sort(key=lambda hs: (hs[1]["threads"] not in (None, threads), hs[1]["threads"] is not None))
        picks.append(free.pop(0) if free else None)
        leases.append(lease)
    refs = {i: pick[0].take.remote(lease, code) for i, (pick, lease) in enumerate(zip(picks, leases)) if pick}
    hosted: list[HostedHandle | None] = [None] * len(wants)
    for i, ref in refs.items():
        try:
            state = ray.get(ref)
        except ray.exceptions.RayError:
            continue  # it died meanwhile: a fresh actor takes its place
        if state is not None:  # None: another run took it first
            hosted[i] = HostedHandle(picks[i][0], leases[i], _restarts(picks[i][0]))
            picks[i][0].hold.options(name=f"{leases[i].actor_name}.taken").remote(leases[i])
    fresh = [{"scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=bundle_of[i])}
             if i in bundle_of else {} for i in range(len(wants))]
    use = PoolUse(hosted=hosted, fresh_options=fresh, placement_group=pg)
    missing = sum(h is None for h in hosted)
    if missing:
        use.said.append(f"The warm pool has no idle process for {missing} of the run's {len(wants)} actors"
                        + (f" ({stale} still ran an older raytf and restart with this one)" if stale else "")
                        + (f" ({other_env} were started with another runtime_env: pip, py_modules or conda)"
                           if other_env else "")
                        + "; those start afresh (`raytf up --warm N` keeps N per node).")
    return use


def _reserve(wants: list[Want], idle: dict[str, list], name: str, on_event: Callable[[str], None]):
    """The run's CPUs as a placement group of one bundle per actor that reserves something: (the group or
    None, wanted actor -> its bundle, wanted actor -> the node its host is taken from). None (said) when
    the cluster has no room for them now."""
    import ray
    from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

    bundles = [bundle(w.resources) for w in wants]
    slots = [i for i, b in enumerate(bundles) if b]  # the wanted actors that get a bundle, in bundle order
    pg = None
    if slots:
        pg = placement_group([bundles[i] for i in slots], strategy="PACK", name=name)
        try:
            ray.get(pg.ready(), timeout=RESERVE_TIMEOUT)
        except ray.exceptions.GetTimeoutError:
            remove_placement_group(pg)
            on_event("Not using the warm pool: the cluster has no room for the run's CPUs now; starting the run's "
                     "actors afresh (they wait for it).")
            return None
    placed = placement_group_table(pg)["bundles_to_node_id"] if pg is not None else {}
    bundle_of = {want: k for k, want in enumerate(slots)}
    busiest = max(set(placed.values()), key=list(placed.values()).count) if placed else None
    nodes = [placed[bundle_of[i]] if i in bundle_of else (busiest or _roomiest(idle)) for i in range(len(wants))]
    return pg, bundle_of, nodes


def _roomiest(idle: dict[str, list]) -> str | None:
    """The node with the most idle hosts."""
    return max(idle, key=lambda node: len(idle[node])) if idle else None


def _restarts(handle) -> int:
    """Ray's restart count of a host (the run counts only its own deaths)."""
    entry = gcs_actor_entry(handle)
    return entry[0] if entry else 0
