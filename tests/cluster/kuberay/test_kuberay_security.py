"""Security of what raytf renders for KubeRay: hardened pods for every shipped spec, and the Redis
password only ever referenced by Secret (in the manifest and in `raytf up --dry-run` output)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from typer.testing import CliRunner

from raytf import cli
from raytf.cluster.kuberay.manifest import manifest_yaml, render_raycluster
from raytf.cluster.kuberay.specfile import load_cluster_spec

from .helpers import CONFIGS

# Every spec shipped now or later, not a fixed list.
SPECS = sorted(CONFIGS.glob("kuberay-*.yaml"))
PASSWORD = "Hunter2-TopSecret"


def pod_specs(manifest: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    spec = manifest["spec"]
    yield "head", spec["headGroupSpec"]["template"]["spec"]
    for group in spec["workerGroupSpecs"]:
        yield group["groupName"], group["template"]["spec"]


def all_containers(manifest: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for group, pod in pod_specs(manifest):
        for kind in ("initContainers", "containers", "ephemeralContainers"):
            for container in pod.get(kind, []):
                yield f"{group}/{container['name']}", container
    if "autoscalerOptions" in manifest["spec"]:  # KubeRay injects it into the head pod as a sidecar
        yield "autoscaler", manifest["spec"]["autoscalerOptions"]


def test_every_shipped_spec_is_checked() -> None:
    assert {p.stem for p in SPECS} >= {"kuberay-cpu", "kuberay-gpu", "kuberay-autoscale", "kuberay-fault-tolerant"}


@pytest.mark.parametrize("spec_path", SPECS, ids=[p.stem for p in SPECS])
def test_containers_run_unprivileged(spec_path: Path) -> None:
    manifest = render_raycluster(load_cluster_spec(spec_path))
    checked = 0
    for name, container in all_containers(manifest):
        context = container.get("securityContext") or {}
        assert context.get("allowPrivilegeEscalation") is False, name
        assert context.get("capabilities") == {"drop": ["ALL"]}, name
        assert context.get("runAsNonRoot") is True, name
        assert context.get("seccompProfile") == {"type": "RuntimeDefault"}, name
        assert not context.get("privileged"), name
        assert "runAsUser" not in context or context["runAsUser"] != 0, name
        assert not any(port.get("hostPort") for port in container.get("ports", [])), name
        checked += 1
    assert checked >= 1 + len(manifest["spec"]["workerGroupSpecs"])
    for group, pod in pod_specs(manifest):
        for field in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(field), f"{group}: {field}"
        assert not any("hostPath" in volume for volume in pod.get("volumes", [])), group
    assert manifest["spec"]["headGroupSpec"]["serviceType"] == "ClusterIP"


def test_dry_run_references_the_redis_secret_and_holds_no_password() -> None:
    spec_path = CONFIGS / "kuberay-fault-tolerant.yaml"
    result = CliRunner().invoke(cli.app, ["up", "--cluster", str(spec_path), "--dry-run"])
    assert result.exit_code == 0, result.output
    options = yaml.safe_load(result.stdout)["spec"]["gcsFaultToleranceOptions"]
    assert options["redisPassword"] == {"valueFrom": {"secretKeyRef": {"name": "redis-password-secret", "key": "password"}}}
    assert result.stdout == manifest_yaml(render_raycluster(load_cluster_spec(spec_path)))
    # No literal password anywhere in the manifest: every password-like key holds a Secret reference.
    found = list(password_values(yaml.safe_load(result.stdout)))
    assert found and all(value.keys() == {"valueFrom"} and "secretKeyRef" in value["valueFrom"] for value in found), found


def password_values(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        for key, value in node.items():
            if "password" in str(key).lower():
                yield value
            yield from password_values(value)
    elif isinstance(node, list):
        for item in node:
            yield from password_values(item)


def test_an_inline_redis_password_is_refused_without_echoing_it(tmp_path: Path) -> None:
    text = (CONFIGS / "kuberay-fault-tolerant.yaml").read_text()
    spec = tmp_path / "inline.yaml"
    spec.write_text(text.replace("  redis_password_secret:", f"  redis_password: {PASSWORD}\n  redis_password_secret:"))
    result = CliRunner().invoke(cli.app, ["up", "--cluster", str(spec), "--dry-run"])
    assert result.exit_code == 2
    assert "redis_password_secret" in result.output
    assert PASSWORD not in result.output


def test_a_password_inside_the_redis_address_is_refused_without_echoing_it(tmp_path: Path) -> None:
    import re

    text = (CONFIGS / "kuberay-fault-tolerant.yaml").read_text()
    spec = tmp_path / "url.yaml"
    spec.write_text(re.sub(r"redis_address: .*", f"redis_address: redis://:{PASSWORD}@redis:6379", text))
    result = CliRunner().invoke(cli.app, ["up", "--cluster", str(spec), "--dry-run"])
    assert result.exit_code == 2, result.output
    assert "redis_password_secret" in result.output and "credentials" in result.output
    assert PASSWORD not in result.output
