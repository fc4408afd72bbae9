"""raytf's cluster spec for KubeRay: a small YAML format, not a raw RayCluster.

The models are frozen and reject unknown keys so a typo fails loudly (with a suggestion, see
`specfile.py`) instead of being silently ignored the way Kubernetes prunes unknown fields.
Quantities (cpu, memory) are normalised to the strings Kubernetes stores.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

# Kubernetes quantity grammar (same pattern as the CRD's int-or-string quantities).
_QUANTITY = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# KubeRay derives "<name>-head-svc" and pod names from the cluster name; 63 is the label limit.
MAX_CLUSTER_NAME = 50

Role = Literal["ps", "worker", "any"]


def _quantity(value: object, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{what} must be a Kubernetes quantity such as 2, 500m or 4Gi")
    text = str(value).strip()
    match = _QUANTITY.match(text)
    if not match or text.startswith("-") or float(match.group(2)) == 0:
        raise ValueError(f"{what} must be a positive Kubernetes quantity such as 2, 500m or 4Gi")
    return text


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


class Toleration(_Frozen):
    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None

    @model_validator(mode="after")
    def _exists_has_no_value(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("operator 'Exists' takes no value; drop `value` or use operator 'Equal'")
        if self.operator == "Equal" and not self.key:
            raise ValueError("operator 'Equal' needs a key")
        return self


class SecretRef(_Frozen):
    name: str
    key: str

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _DNS1123_LABEL.match(v.replace(".", "a")) or len(v) > 253:
            raise ValueError("must be a Kubernetes Secret name (lowercase letters, digits, '-', '.')")
        return v


class HeadSpec(_Frozen):
    cpu: str = "1"
    memory: str = "4Gi"
    # False keeps Ray tasks/actors off the head (num-cpus "0"), as KubeRay recommends.
    run_workloads: bool = False
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()

    @field_validator("cpu", "memory", mode="before")
    @classmethod
    def _quantities(cls, v: object, info: ValidationInfo) -> str:
        return _quantity(v, info.field_name)


class WorkerGroup(_Frozen):
    name: str
    role: Role = "any"
    replicas: int = Field(default=1, ge=0)
    min_replicas: int | None = Field(default=None, ge=0)
    max_replicas: int | None = Field(default=None, ge=0)
    cpu: str = "1"
    memory: str = "2Gi"
    gpus: int = Field(default=0, ge=0)
    image: str | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()

    @field_validator("cpu", "memory", mode="before")
    @classmethod
    def _quantities(cls, v: object, info: ValidationInfo) -> str:
        return _quantity(v, info.field_name)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _DNS1123_LABEL.match(v) or len(v) > 40:
            raise ValueError(
                "must be at most 40 lowercase letters, digits or '-', starting and ending with a letter or digit"
            )
        return v

    @model_validator(mode="after")
    def _bounds(self) -> WorkerGroup:
        lo, hi = self.lowest, self.highest
        if not lo <= self.replicas <= hi:
            raise ValueError(
                f"needs min_replicas <= replicas <= max_replicas (got {lo} <= {self.replicas} <= {hi})"
            )
        return self

    @property
    def lowest(self) -> int:
        return self.replicas if self.min_replicas is None else self.min_replicas

    @property
    def highest(self) -> int:
        return self.replicas if self.max_replicas is None else self.max_replicas


class Autoscaling(_Frozen):
    enabled: bool = True
    idle_timeout_seconds: int = Field(default=60, ge=0)
    upscaling_mode: Literal["Default", "Aggressive", "Conservative"] = "Default"


class FaultTolerance(_Frozen):
    redis_address: str
    # Only a Secret reference: an inline password would end up in the manifest and shell history.
    redis_password_secret: SecretRef | None = None
    external_storage_namespace: str | None = None

    @field_validator("redis_address")
    @classmethod
    def _address(cls, v: str) -> str:
        if "@" in v:
            raise ValueError("must not hold credentials; put the Redis password in a Secret and name it in "
                             "fault_tolerance.redis_password_secret")
        if not re.match(r"^(rediss?://)?[^\s:/]+(:[0-9]{1,5})?$", v):
            raise ValueError("must look like host:port, e.g. redis:6379")
        return v


# Volume sources every pod can mount at once (ReadWriteMany-capable). Per-pod (emptyDir, ephemeral),
# per-node (hostPath) and read-only config sources cannot hold one run's shared output_dir.
SHARED_VOLUME_SOURCES = ("persistentVolumeClaim", "nfs", "csi", "cephfs", "azureFile", "glusterfs")
# Mounting over these would hide what the rayproject/ray image or Ray itself needs there.
_RESERVED_PATHS = ("/home/ray", "/tmp", "/tmp/ray", "/dev/shm")
_SYSTEM_ROOTS = ("/bin", "/dev", "/etc", "/lib", "/proc", "/sbin", "/sys", "/usr", "/var")


class SharedStorage(_Frozen):
    """One volume mounted at `path` on the head and every worker pod (checkpoints, models, TensorBoard)."""

    path: str
    claim: str | None = None
    volume: dict[str, Any] | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must be an absolute path inside the pods, e.g. /mnt/raytf")
        norm = posixpath.normpath(v)
        if norm == "/" or any(r == norm or r.startswith(norm + "/") for r in _RESERVED_PATHS):
            raise ValueError(f"must not be /, {', '.join(_RESERVED_PATHS)} or a parent of them (the image and Ray "
                             "use them); use e.g. /mnt/raytf")
        if any(norm == r or norm.startswith(r + "/") for r in _SYSTEM_ROOTS):
            raise ValueError("must not be a system directory; use e.g. /mnt/raytf")
        return norm

    @field_validator("claim")
    @classmethod
    def _claim(cls, v: str | None) -> str | None:
        if v is not None and (not _DNS1123_LABEL.match(v.replace(".", "a")) or len(v) > 253):
            raise ValueError("must be a PersistentVolumeClaim name (lowercase letters, digits, '-', '.')")
        return v

    @field_validator("volume")
    @classmethod
    def _volume(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is None:
            return v
        if len(v) != 1 or not isinstance(next(iter(v.values())), dict):
            raise ValueError("must be one Kubernetes volume source, e.g. {nfs: {server: nfs.example.com, path: /export}}")
        (kind,) = v
        if kind not in SHARED_VOLUME_SOURCES:
            raise ValueError(f"volume source '{kind}' cannot be shared by all pods; use one of "
                             f"{', '.join(SHARED_VOLUME_SOURCES)} (or `claim: <PVC name>`)")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> SharedStorage:
        if (self.claim is None) == (self.volume is None):
            raise ValueError("needs exactly one of `claim` (a ReadWriteMany PersistentVolumeClaim) or `volume` "
                             "(a volume source such as {nfs: {server: ..., path: ...}})")
        return self

    def volume_source(self) -> dict[str, Any]:
        if self.claim is not None:
            return {"persistentVolumeClaim": {"claimName": self.claim}}
        assert self.volume is not None
        return dict(self.volume)


class RayJobOptions(_Frozen):
    """Lifetime of the cluster of a one-shot run (`raytf train --cluster`, a KubeRay RayJob)."""

    # Seconds KubeRay keeps the finished job's cluster before deleting it (time to read logs/dashboard).
    ttl_seconds_after_finished: int = Field(default=300, ge=0)
    # Seconds the cluster may take to start and get its job submitted; after that KubeRay fails the
    # RayJob and deletes the cluster, so an abandoned submission cannot hold pods forever.
    pre_running_deadline_seconds: int = Field(default=1800, ge=1)


class ClusterSpec(_Frozen):
    provider: Literal["kuberay"]
    name: str
    namespace: str = "default"
    ray_version: str
    python_version: str | None = None
    image: str | None = None
    head: HeadSpec = Field(default_factory=HeadSpec)
    worker_groups: tuple[WorkerGroup, ...]
    autoscaling: Autoscaling | None = None
    fault_tolerance: FaultTolerance | None = None
    # Ray token authentication (KubeRay `authOptions`); "none" leaves the Ray APIs open inside Kubernetes.
    auth: Literal["token", "none"] = "token"
    shared_storage: SharedStorage | None = None
    # False: each Ray Job brings raytf (py_modules) and its pinned dependencies (pip) to stock Ray images.
    image_has_raytf: bool = False
    rayjob: RayJobOptions = Field(default_factory=RayJobOptions)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _DNS1035_LABEL.match(v) or len(v) > MAX_CLUSTER_NAME:
            raise ValueError(
                f"must be a Kubernetes name: at most {MAX_CLUSTER_NAME} lowercase letters, digits or '-', "
                "starting with a letter and ending with a letter or digit"
            )
        return v

    @field_validator("auth", mode="before")
    @classmethod
    def _auth(cls, v: object) -> object:
        if isinstance(v, bool):  # YAML 1.1 reads off/no/false/on/yes/true as booleans
            raise ValueError("must be 'token' or 'none' (YAML read a boolean: write `auth: none` to turn it off)")
        return v

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        if not _DNS1123_LABEL.match(v) or len(v) > 63:
            raise ValueError("must be a Kubernetes namespace: lowercase letters, digits or '-', at most 63")
        return v

    @field_validator("ray_version", mode="before")
    @classmethod
    def _ray_version(cls, v: object) -> object:
        if not isinstance(v, str) or not re.match(r"^\d+\.\d+\.\d+$", v.strip()):
            raise ValueError("must be a Ray release such as '2.60.0' (quote it in YAML)")
        return v

    @field_validator("python_version", mode="before")
    @classmethod
    def _python_version(cls, v: object) -> object:
        if v is None:
            return v
        if isinstance(v, float):
            raise ValueError("must be quoted, e.g. '3.11' (unquoted YAML turns 3.10 into 3.1)")
        if not isinstance(v, str) or not re.match(r"^3\.\d+$", v.strip()):
            raise ValueError("must be a Python minor version such as '3.11'")
        return v

    @model_validator(mode="after")
    def _groups(self) -> ClusterSpec:
        if not self.worker_groups:
            raise ValueError("worker_groups needs at least one group")
        names = [g.name for g in self.worker_groups]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"worker group names must be unique; repeated: {', '.join(dupes)}")
        roles = {g.role for g in self.worker_groups}
        if not roles & {"ps", "any"}:
            raise ValueError("no worker group can host parameter servers: give one group role 'ps' or 'any'")
        if not roles & {"worker", "any"}:
            raise ValueError("no worker group can host workers: give one group role 'worker' or 'any'")
        return self

    @property
    def python_tag(self) -> str:
        """The `pyXY` tag of the default image; Ray publishes images per Python minor version."""
        return "py" + (self.python_version or "3.11").replace(".", "")

    @property
    def base_image(self) -> str:
        return self.image or f"rayproject/ray:{self.ray_version}-{self.python_tag}"

    def group_image(self, group: WorkerGroup) -> str:
        if group.image:
            return group.image
        if group.gpus and not self.image:
            return f"{self.base_image}-gpu"  # CUDA variant of the default image
        return self.base_image

    def group(self, name: str) -> WorkerGroup | None:
        return next((g for g in self.worker_groups if g.name == name), None)

    @property
    def autoscaling_enabled(self) -> bool:
        return self.autoscaling is not None and self.autoscaling.enabled
