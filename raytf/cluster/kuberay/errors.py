"""Named errors of the KubeRay provider.

Each class keeps `RaytfError`'s `(problem, fix)` constructor so it pickles like its parents;
the classmethods build the wording in one place so every message names the problem and the fix.
"""

from __future__ import annotations

from raytf.errors import ClusterError, ConfigError

HELM_INSTALL = (
    "helm repo add kuberay https://ray-project.github.io/kuberay-helm/ && "
    "helm install kuberay-operator kuberay/kuberay-operator --version 1.7.0"
)


class ClusterSpecError(ConfigError):
    """The raytf cluster spec file is unreadable or invalid."""


class UnknownWorkerGroup(ConfigError):
    """`scale` named a worker group the RayCluster does not have."""

    @classmethod
    def make(cls, group: str, cluster: str, groups: list[str]) -> UnknownWorkerGroup:
        listed = ", ".join(groups) if groups else "(none)"
        return cls(
            f"RayCluster '{cluster}' has no worker group '{group}'; its groups are: {listed}.",
            "Pass one of those group names.",
        )


class KubeUnreachable(ClusterError):
    """The Kubernetes API server could not be contacted or configured."""

    @classmethod
    def make(cls, host: str, detail: str) -> KubeUnreachable:
        return cls(
            f"Cannot reach the Kubernetes API server at {host}: {detail}.",
            "Check that the cluster is running (`kubectl cluster-info`) and that --kubeconfig / "
            "--context (or $KUBECONFIG) point at it.",
        )


class KubeconfigError(KubeUnreachable):
    """No usable kubeconfig (or in-cluster service account) was found."""


class CrdNotInstalled(ClusterError):
    """The ray.io API group (the KubeRay CRDs) is not served by the cluster."""

    @classmethod
    def make(cls, host: str, kind: str = "RayCluster") -> CrdNotInstalled:
        return cls(
            f"The Kubernetes cluster at {host} does not serve the ray.io/v1 {kind} API: "
            "the KubeRay operator and its CRDs are not installed.",
            f"Install the operator: `{HELM_INSTALL}`, then retry.",
        )


class Forbidden(ClusterError):
    """RBAC denied a request."""

    @classmethod
    def make(cls, verb: str, resource: str, namespace: str, detail: str) -> Forbidden:
        return cls(
            f"Kubernetes refused to let you {verb} {resource} in namespace '{namespace}' "
            f"(403 Forbidden: {detail}).",
            f"Ask a cluster admin for a Role granting '{verb}' on {resource} in '{namespace}' "
            f"(check with `kubectl auth can-i {verb} {resource} -n {namespace}`), or use another "
            "namespace/context.",
        )


class Unauthorized(ClusterError):
    """The API server rejected the credentials."""

    @classmethod
    def make(cls, host: str) -> Unauthorized:
        return cls(
            f"The Kubernetes API server at {host} rejected your credentials (401 Unauthorized).",
            "Refresh your login (e.g. re-run your cloud provider's `get-credentials` command) or "
            "pick another --context.",
        )


class AlreadyExists(ClusterError):
    """The name is taken."""

    @classmethod
    def make(cls, name: str, namespace: str) -> AlreadyExists:
        return cls(
            f"A RayCluster named '{name}' already exists in namespace '{namespace}' (409 Conflict).",
            "Choose another `name` in the spec, or remove the old one with `raytf down` "
            f"(or `kubectl delete raycluster {name} -n {namespace}`).",
        )


class NotFound(ClusterError):
    """The named object does not exist."""

    @classmethod
    def make(cls, resource: str, name: str, namespace: str, others: list[str] | None = None) -> NotFound:
        seen = f" Existing: {', '.join(others)}." if others else ""
        return cls(
            f"No {resource} named '{name}' in namespace '{namespace}'.{seen}",
            "Create it with `raytf up <spec>`, or check the spec's name/namespace and your --context.",
        )


class Rejected(ClusterError):
    """The API server refused the request as invalid (400/422) or failed (5xx)."""

    @classmethod
    def make(cls, verb: str, resource: str, namespace: str, status: int, detail: str) -> Rejected:
        return cls(
            f"Kubernetes answered {status} to {verb} {resource} in namespace '{namespace}': {detail}",
            "Check the manifest with `raytf up <spec> --dry-run | kubectl apply --dry-run=server -f -` "
            "and that the KubeRay operator is version 1.7.0 or compatible.",
        )


class WaitTimeout(ClusterError):
    """A wait (ready, gone) ran out of time; the message says what is stuck."""


class AuthTokenUnavailable(ClusterError):
    """The Ray token of a token-authenticated RayCluster could not be read from its Secret."""

    @classmethod
    def forbidden(cls, secret: str, namespace: str, cluster: str, refusal: str) -> AuthTokenUnavailable:
        return cls(
            f"RayCluster '{cluster}' requires Ray token authentication, and its token is in Secret '{secret}', "
            f"which you may not read. {refusal}",
            f"Ask a cluster admin for a Role granting 'get' on secrets in '{namespace}' (it may be limited to "
            f"resourceNames: [{secret}]); check with `kubectl auth can-i get secrets/{secret} -n {namespace}`.",
        )

    @classmethod
    def missing(cls, secret: str, namespace: str, cluster: str) -> AuthTokenUnavailable:
        return cls(
            f"RayCluster '{cluster}' requires Ray token authentication, but its token Secret '{secret}' does not "
            f"exist in namespace '{namespace}'.",
            "The KubeRay operator creates it when it first reconciles the cluster: wait and retry (`raytf status`); "
            "if it never appears, check that the operator is 1.7.0 or newer "
            "(`kubectl logs deployment/kuberay-operator`).",
        )

    @classmethod
    def no_key(cls, secret: str, namespace: str, key: str) -> AuthTokenUnavailable:
        return cls(
            f"Secret '{secret}' in namespace '{namespace}' has no key '{key}' holding the Ray token.",
            f"A Secret named by authOptions.secretName must hold the token under '{key}' "
            f"(`kubectl create secret generic {secret} --from-literal={key}=<token>`).",
        )


class OutputNotShared(ConfigError):
    """A KubeRay run's output_dir is not on storage every pod and the driver share."""
