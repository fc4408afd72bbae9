"""Does this machine's Ray/Python match the cluster's? Ray clients must match both exactly
(Ray release, Python minor version), otherwise connecting fails with obscure errors."""

from __future__ import annotations

import re
import sys
from importlib import metadata

from raytf.cluster.kuberay.spec import ClusterSpec


def local_ray_version() -> str | None:
    # The installed distribution's version equals `ray.__version__` without importing Ray (slow).
    try:
        return metadata.version("ray")
    except metadata.PackageNotFoundError:
        return None


def local_python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def cluster_python_version(spec: ClusterSpec) -> str | None:
    """`python_version` from the spec, else read from a `-pyXY` image tag; None if unknown."""
    if spec.python_version:
        return spec.python_version
    match = re.search(r"-py3(\d+)\b", spec.base_image)
    return f"3.{match.group(1)}" if match else None


def version_mismatch_warning(
    spec: ClusterSpec,
    *,
    local_ray: str | None = None,
    local_python: str | None = None,
) -> str | None:
    """A warning naming both sides of any mismatch, or None when they agree."""
    local_ray = local_ray or local_ray_version()
    local_python = local_python or local_python_version()
    remote_python = cluster_python_version(spec)
    problems = []
    if local_ray is None:
        problems.append(f"Ray is not installed here (the cluster runs Ray {spec.ray_version})")
    elif local_ray != spec.ray_version:
        problems.append(f"the cluster runs Ray {spec.ray_version} but this machine has Ray {local_ray}")
    if remote_python is not None and remote_python != local_python:
        problems.append(f"the cluster runs Python {remote_python} but this machine runs Python {local_python}")
    if not problems:
        return None
    return (
        "Version mismatch: " + "; ".join(problems) + ". Connecting to the cluster from here will fail. "
        f"Fix: use `pip install ray=={spec.ray_version}` under Python {remote_python or local_python} locally, "
        "or set ray_version/python_version (and image) in the spec to match this machine."
    )
