"""Ray token authentication on KubeRay: rendering `spec.authOptions` and naming the token's Secret
(reading it back is `raytf.cluster.kuberay.token`, which needs the API client).

How KubeRay v1.7.0 does it (ray-project/kuberay@v1.7.0):
- ray-operator/controllers/ray/raycluster_controller.go, `reconcileAuthSecret`/`createAuthSecret`: with
  `authOptions.mode: token` (and no `secretName`, no `enableK8sTokenAuth`) the operator creates a Secret
  named `utils.CheckName(<cluster name>)` in the cluster's namespace, owned by the RayCluster, holding
  a random token under the key `auth_token` (`utils.RAY_AUTH_TOKEN_SECRET_KEY`, utils/constant.go).
- ray-operator/controllers/ray/common/pod.go, `SetContainerTokenAuthEnvVars`: every Ray container gets
  `RAY_AUTH_MODE=token` and `RAY_AUTH_TOKEN` from that Secret (or from `authOptions.secretName`).
- ray-operator/controllers/ray/utils/util.go, `GetRayDashboardClientFunc`: the operator reads the same
  Secret to call the dashboard. Ray's dashboard takes the token as `Authorization: Bearer <token>`
  (or `X-Ray-Authorization`, ray/_private/authentication/http_token_authentication.py).

raytf reads the Secret with the caller's own Kubernetes credentials and only ever puts the token in
an HTTP header: it is never printed, logged or written to a file.
"""

from __future__ import annotations

from typing import Any

from raytf.cluster.kuberay.spec import ClusterSpec
from raytf.errors import ClusterError

TOKEN_KEY = "auth_token"  # utils.RAY_AUTH_TOKEN_SECRET_KEY
_MAX_NAME = 50  # utils.CheckName's limit


def render_auth_options(spec: ClusterSpec) -> dict[str, Any] | None:
    """`spec.authOptions` of the RayCluster: token mode unless the spec says `auth: none`."""
    return {"mode": "token"} if spec.auth == "token" else None


def auth_disabled_warning(spec: ClusterSpec) -> str | None:
    if spec.auth == "token":
        return None
    return (f"Ray token authentication is OFF for RayCluster '{spec.name}' (auth: none): any pod that can reach "
            "the head inside Kubernetes can submit jobs and run code in it. Remove `auth: none` from the spec "
            "unless a NetworkPolicy keeps everything else away from the head.")


def check_name(name: str) -> str:
    """KubeRay's `utils.CheckName` (utils/util.go): the Secret name it derives from a cluster name.

    Identity for names raytf renders (at most 50 characters, starting with a letter); RayJob clusters
    (`<job>-<suffix>`) can be longer and are then cut from the front."""
    if len(name) > _MAX_NAME:
        name = name[len(name) - _MAX_NAME:]
    if name[:1].isdigit() or (name[:1] and not name[:1].isalnum()):
        name = "r" + name[1:]
    return name


def auth_secret_name(cluster: dict[str, Any]) -> str | None:
    """The Secret holding the token of this live RayCluster object; None when token auth is off."""
    options = (cluster.get("spec") or {}).get("authOptions") or {}
    if options.get("mode") != "token":
        return None  # the operator runs no auth without authOptions or with mode "disabled"
    name = cluster["metadata"]["name"]
    if options.get("enableK8sTokenAuth"):
        raise ClusterError(
            f"RayCluster '{name}' delegates Ray authentication to Kubernetes service-account tokens "
            "(authOptions.enableK8sTokenAuth), which raytf does not support.",
            "Use `authOptions: {mode: token}` (what raytf renders) for clusters raytf talks to.",
        )
    return options.get("secretName") or check_name(name)


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def token_command(cluster: dict[str, Any]) -> str | None:
    """A command that prints the token (for the dashboard's login dialog); raytf never prints it itself."""
    secret = auth_secret_name(cluster)
    if secret is None:
        return None
    namespace = cluster["metadata"].get("namespace", "default")
    return f"kubectl get secret {secret} -n {namespace} -o jsonpath='{{.data.{TOKEN_KEY}}}' | base64 -d"
