"""Building an `ApiClient` the way kubectl would: --kubeconfig, $KUBECONFIG, ~/.kube/config,
then the in-cluster service account. Nothing here contacts the API server."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.config.config_exception import ConfigException

from raytf.cluster.kuberay.errors import KubeconfigError

_FIX = (
    "Pass --kubeconfig PATH (and --context NAME), set $KUBECONFIG, or create a local cluster "
    "(`kind create cluster`, see docs/kuberay.md)."
)


def build_api_client(kubeconfig: str | None = None, context: str | None = None) -> k8s.ApiClient:
    path = kubeconfig_path(kubeconfig)
    if path is not None:
        configuration = k8s.Configuration()
        try:
            # persist_config=False: never rewrite the user's kubeconfig (token refreshes stay in memory).
            k8s_config.load_kube_config(
                config_file=path, context=context, client_configuration=configuration, persist_config=False
            )
        except (ConfigException, yaml.YAMLError) as err:
            raise KubeconfigError(f"Kubeconfig {path} is unusable: {err}.", _FIX) from None
        return k8s.ApiClient(configuration)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        configuration = k8s.Configuration()
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
        except ConfigException as err:
            raise KubeconfigError(f"In-cluster Kubernetes configuration is unusable: {err}.", _FIX) from None
        return k8s.ApiClient(configuration)
    raise KubeconfigError(
        "No kubeconfig found (looked at --kubeconfig, $KUBECONFIG and ~/.kube/config) and not running in a pod.",
        _FIX,
    )


def kubeconfig_path(kubeconfig: str | None) -> str | None:
    """The kubeconfig to load ($KUBECONFIG may list several files to merge), or None for none."""
    if kubeconfig:
        if not Path(kubeconfig).expanduser().is_file():
            raise KubeconfigError(f"Kubeconfig {kubeconfig} does not exist.", _FIX)
        return str(Path(kubeconfig).expanduser().resolve())
    env = os.environ.get("KUBECONFIG", "")
    if env.strip():
        existing = [p for p in env.split(os.pathsep) if p and Path(p).expanduser().is_file()]
        if not existing:
            raise KubeconfigError(f"$KUBECONFIG names no existing file ({env}).", _FIX)
        return os.pathsep.join(existing)
    default = Path.home() / ".kube" / "config"
    return str(default) if default.is_file() else None


def current_context(path: str | None, context: str | None) -> str | None:
    """The context a kubeconfig selects (the explicit one wins), so later commands reuse it."""
    if context or path is None:
        return context
    try:
        _, active = k8s_config.list_kube_config_contexts(config_file=path)
    except (ConfigException, yaml.YAMLError):
        return None
    return active.get("name") if active else None
