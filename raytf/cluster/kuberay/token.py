"""Reading a RayCluster's Ray token back from the Secret KubeRay made for it (see `auth` for how
KubeRay v1.7.0 creates it), with the caller's own Kubernetes credentials. The token only ever goes
into an HTTP header: never printed, logged or written to a file."""

from __future__ import annotations

from kubernetes import client as k8s

from raytf.cluster.kuberay.auth import TOKEN_KEY, auth_secret_name, check_name
from raytf.cluster.kuberay.client import KubeClient
from raytf.cluster.kuberay.errors import AuthTokenUnavailable, Forbidden
from raytf.cluster.kuberay.status import get_cluster_or_raise


def read_token(kube: KubeClient | k8s.ApiClient, namespace: str, cluster_name: str, *,
               secret_name: str | None = None) -> str:
    """The Ray token of a token-mode RayCluster (raises `AuthTokenUnavailable` with the fix)."""
    if not hasattr(kube, "read_secret"):  # a bare kubernetes ApiClient
        kube = KubeClient(kube)
    secret = secret_name or check_name(cluster_name)
    try:
        data = kube.read_secret(secret, namespace)
    except Forbidden as err:
        raise AuthTokenUnavailable.forbidden(secret, namespace, cluster_name, err.problem) from None
    if data is None:
        raise AuthTokenUnavailable.missing(secret, namespace, cluster_name)
    token = data.get(TOKEN_KEY, "").strip()
    if not token:
        raise AuthTokenUnavailable.no_key(secret, namespace, TOKEN_KEY)
    return token


def cluster_token(kube: KubeClient, name: str, namespace: str) -> str | None:
    """The token the live RayCluster `name` requires, or None when it runs without token auth."""
    secret = auth_secret_name(get_cluster_or_raise(kube, name, namespace))
    return None if secret is None else read_token(kube, namespace, name, secret_name=secret)
