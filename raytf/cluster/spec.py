"""Cluster spec files: which provider a spec is for, and the embedded (local) provider's spec.

A spec file says `provider: local` (a Ray head on this machine) or `provider: kuberay`
(a RayCluster on Kubernetes, see raytf/cluster/kuberay/spec.py).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from raytf.config.yaml_source import read_yaml_file
from raytf.errors import ConfigError

PROVIDERS = ("local", "kuberay")


class LocalSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: str = "local"
    num_cpus: int | None = Field(None, ge=1, description="CPUs the head offers; default: this machine's cores")
    timeout_seconds: float = Field(90.0, gt=0, description="how long `raytf up` waits for the head")


def spec_provider(path: str | Path) -> str:
    source = read_yaml_file(path)
    data = source.data
    provider = data.get("provider") if isinstance(data, dict) else None
    if provider not in PROVIDERS:
        line = source.line_of(("provider",))
        where = f"{path}:{line}" if line else str(path)
        raise ConfigError(
            f"{where}: provider is {provider!r}; a cluster spec needs `provider: local` or `provider: kuberay`.",
            "See cluster-configs/ for examples of both.",
        )
    return provider


def load_local_spec(path: str | Path) -> LocalSpec:
    source = read_yaml_file(path)
    try:
        return LocalSpec.model_validate(source.data)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        loc = tuple(first["loc"])
        line = source.line_of(loc)
        key = ".".join(str(p) for p in loc)
        valid = ", ".join(LocalSpec.model_fields)
        raise ConfigError(
            f"{path}:{line or '?'}: {key}: {first['msg']}.", f"Valid keys of a local spec: {valid}."
        ) from None
