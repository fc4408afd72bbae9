"""KubeRay provider: run raytf's Ray cluster on Kubernetes through the KubeRay operator.

Modules, one concept each:
  spec        raytf's cluster spec models       specfile   loading it with line-numbered errors
  manifest    spec -> RayCluster manifest        client     the Kubernetes API boundary
  kubeconfig  building an ApiClient              status     RayCluster status as plain data
  diagnose    why a cluster is not ready         lifecycle  up / down / scale / wait
  portforward 127.0.0.1 port-forward to the head dashboard  dashboard check over it
  versions    local vs cluster Ray/Python        commands   what the CLI calls
  auth        authOptions; the token from the operator's Secret
  storage     shared_storage volumes; output_dir must be on them
  runtime_env py_modules + pinned pip that bring raytf to stock Ray images

Importing this package is cheap: it imports neither Ray nor the Kubernetes client.
"""

from raytf.cluster.kuberay.manifest import PS_RESOURCE, WORKER_RESOURCE

__all__ = ["PS_RESOURCE", "WORKER_RESOURCE"]
