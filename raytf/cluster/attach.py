"""Your own tools on the cluster `raytf up` started: a notebook, a script, `ray status`, `ray job logs`.

That cluster needs two things a plain `ray.init(address=...)` does not know about:

* its token: Ray's token authentication is on, and the token lives in a 0600 file that Ray reads
  by path (`RAY_AUTH_MODE=token`, `RAY_AUTH_TOKEN_PATH`);
* loopback: every address of the cluster is 127.0.0.1. A Ray driver normally swaps 127.0.0.1 for
  the machine's routable address and then retries for minutes; Ray's single-machine mode
  (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`) keeps it on loopback.

`raytf env` prints these as shell exports (`eval "$(raytf env)"`); `raytf.connect()` applies them
to the current Python process and calls `ray.init`.
"""

from __future__ import annotations

import os
import shlex

from raytf.cluster.local import LOOPBACK_ENV, LocalCluster, auth_env
from raytf.errors import ClusterError

# Outranks RAY_AUTH_TOKEN_PATH in Ray, so a value left over from another cluster must go.
STALE_TOKEN_VAR = "RAY_AUTH_TOKEN"


def ray_env(cluster: LocalCluster) -> dict[str, str]:
    """The environment that points Ray's drivers and CLIs at `cluster` (the token by path, never by value)."""
    return {
        "RAY_ADDRESS": cluster.gcs_address,  # ray.init(), ray status
        "RAY_API_SERVER_ADDRESS": cluster.dashboard_url,  # ray job submit/logs/list, the Job SDK
        **auth_env(cluster),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": LOOPBACK_ENV["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"],
    }


def shell_exports(env: dict[str, str]) -> str:
    lines = [f"unset {STALE_TOKEN_VAR}"] + [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
    return "\n".join(lines)


def shell_unsets(env: dict[str, str]) -> str:
    return "\n".join(f"unset {name}" for name in env)


def current_cluster() -> LocalCluster:
    """The running local cluster `raytf up` started, or a ClusterError that says what to do."""
    from raytf.cluster.connection import recorded_local_cluster
    from raytf.cluster.record import load_cluster_record

    cluster = recorded_local_cluster()
    if cluster is not None:
        return cluster
    record = load_cluster_record()
    if record and record.get("provider") == "kuberay":
        raise ClusterError(
            "The current raytf cluster is a KubeRay cluster; its Ray endpoints are inside Kubernetes.",
            "Run `raytf dashboard` (a port-forward to 127.0.0.1) and point your tools at that URL "
            "(RAY_API_SERVER_ADDRESS=http://127.0.0.1:PORT), or use `raytf train` to submit jobs.",
        )
    raise ClusterError("No raytf cluster is up, so there is nothing to connect to.", "Start one with `raytf up`.")


def connect(**init_kwargs):
    """Connect this process to the cluster `raytf up` started, as a Ray driver; returns `ray.init`'s context.

    For notebooks and scripts: `import raytf; raytf.connect()`, then use Ray as usual (tasks, actors,
    `ray.cluster_resources()`). The token and loopback settings stay in this process's environment,
    so Ray's Job SDK and state API work from it too. Keyword arguments go to `ray.init`.
    """
    import ray

    from raytf.cluster.connection import use_loopback_addresses
    from raytf.cluster.local import reload_ray_auth

    cluster = current_cluster()
    os.environ.pop(STALE_TOKEN_VAR, None)
    os.environ.update(ray_env(cluster))
    reload_ray_auth()
    use_loopback_addresses()
    init_kwargs.setdefault("_node_ip_address", cluster.gcs_address.rpartition(":")[0])
    init_kwargs.setdefault("logging_level", "ERROR")
    return ray.init(address=cluster.gcs_address, **init_kwargs)
