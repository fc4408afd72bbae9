"""Getting raytf onto stock `rayproject/ray` images without building one: the Ray Job's runtime_env.

- `py_modules: [<local raytf package directory>]`: Ray's job client zips the directory (with the
  directory itself at the top, `include_parent_dir`, ray/_private/runtime_env/py_modules.py), uploads
  it to the cluster and puts it on the PYTHONPATH of the job's driver and of every actor, so
  `python -m raytf.cli` imports this machine's raytf on the cluster.
- `pip: [tensorflow==X, ...]`: what raytf needs beyond Ray, pinned to the versions installed here
  (`importlib.metadata`), so the cluster trains with the same code and numbers as a local run. Ray
  installs them once per node into a virtualenv that still sees the image's Ray; the pods need access to
  a package index (PyPI or a mirror set through `PIP_INDEX_URL` in the image).

`image_has_raytf: true` in the spec turns both off, for images built from docker/Dockerfile.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

from raytf.cluster.kuberay.spec import ClusterSpec
from raytf.errors import ClusterError

# raytf's dependencies (pyproject.toml) that the job needs on the cluster. Left out: Ray (the image has
# it, and it must be the image's), and the Kubernetes client with its urllib3 (used only on this side).
CLUSTER_PACKAGES = (
    "tensorflow", "keras", "tensorboard", "numpy", "scikit-learn",
    "pydantic", "pydantic-core", "pyyaml", "typer", "rich", "psutil", "cryptography", "pyarrow",
)
CLIENT_ONLY = ("ray", "kubernetes", "urllib3")


def pinned_requirements(packages: tuple[str, ...] = CLUSTER_PACKAGES) -> list[str]:
    """`name==version` for each package, at the version installed here."""
    pins, missing = [], []
    for name in packages:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            missing.append(name)
    if missing:
        raise ClusterError(
            f"Cannot pin raytf's cluster dependencies to local versions: {', '.join(missing)} not installed here.",
            "Install raytf with its dependencies here (`pip install -e .`), or set `image_has_raytf: true` in the "
            "cluster spec when the image already has them (docker/Dockerfile).",
        )
    return pins


def raytf_package_dir() -> str:
    """The directory of the `raytf` package this process runs (a checkout or site-packages)."""
    # The package directory, found from this file (raytf/cluster/kuberay/runtime_env.py): importing
    # the top-level package from here would point an arrow against the layout's direction.
    return str(Path(__file__).resolve().parents[2])


def job_runtime_env(spec: ClusterSpec) -> dict[str, Any]:
    """The runtime_env keys that bring raytf and its dependencies to the spec's image ({} when it has them)."""
    if spec.image_has_raytf:
        return {}
    # pip_check off: the image's own packages (Ray's) need not agree with pip's resolver to import.
    return {"py_modules": [raytf_package_dir()], "pip": {"packages": pinned_requirements(), "pip_check": False}}


def requirements_txt() -> str:
    """docker/requirements.txt: the same pins, for images built with docker/Dockerfile."""
    header = ("# raytf's dependencies on the cluster, pinned to the versions of the machine raytf was tested on.\n"
              "# Same list as a Ray Job's runtime_env pip (raytf/cluster/kuberay/runtime_env.py). Regenerate with\n"
              "#   RAYTF_UPDATE_GOLDEN=1 python -m pytest tests/cluster/kuberay/test_kuberay_runtime_env.py\n")
    return header + "\n".join(pinned_requirements()) + "\n"
