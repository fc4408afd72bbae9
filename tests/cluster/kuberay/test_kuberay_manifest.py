"""RayCluster rendering: golden files, role placement, GPUs, autoscaling, fault tolerance, hardening.

Regenerate the golden files after an intended change with
`RAYTF_UPDATE_GOLDEN=1 python -m pytest tests/cluster/kuberay -q` and review the diff.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from raytf.cluster.kuberay.manifest import (
    PS_RESOURCE,
    SPEC_HASH_ANNOTATION,
    WORKER_RESOURCE,
    manifest_yaml,
    render_raycluster,
    role_resources_param,
)
from raytf.cluster.kuberay.specfile import load_cluster_spec, parse_cluster_spec

from .helpers import CONFIG_NAMES, CONFIGS, REPO

GOLDEN = Path(__file__).parent / "golden"


def rendered(name: str) -> dict[str, Any]:
    return render_raycluster(load_cluster_spec(CONFIGS / f"{name}.yaml"))


def decode_resources(param: str) -> dict[str, int]:
    """Undo KubeRay's quoting of the `resources` rayStartParam: '"{\\"R\\": 1}"' -> {"R": 1}."""
    assert param.startswith('"{') and param.endswith('}"'), param
    return json.loads(param[1:-1].replace('\\"', '"'))


def containers(manifest: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = manifest["spec"]
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        yield from group["template"]["spec"]["containers"]


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_golden(name: str) -> None:
    text = manifest_yaml(rendered(name))
    golden = GOLDEN / f"{name}.yaml"
    if os.environ.get("RAYTF_UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert golden.exists(), f"missing {golden}; run with RAYTF_UPDATE_GOLDEN=1 to create it"
    assert text == golden.read_text(), f"{name} renders differently from {golden}; if intended, regenerate it"


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_rendering_is_deterministic_and_round_trips(name: str) -> None:
    first, second = manifest_yaml(rendered(name)), manifest_yaml(rendered(name))
    assert first == second
    assert yaml.safe_load(first) == rendered(name)
    assert list(rendered(name)) == ["apiVersion", "kind", "metadata", "spec"]


def test_node_selector_order_does_not_change_output() -> None:
    base = (CONFIGS / "kuberay-cpu.yaml").read_text()
    a = base.replace("    role: ps\n", "    role: ps\n    node_selector: {zone: a, pool: cpu}\n")
    b = base.replace("    role: ps\n", "    role: ps\n    node_selector: {pool: cpu, zone: a}\n")
    assert manifest_yaml(render_raycluster(parse_cluster_spec(a))) == manifest_yaml(render_raycluster(parse_cluster_spec(b)))


def test_spec_hash_tracks_the_spec() -> None:
    base = (CONFIGS / "kuberay-cpu.yaml").read_text()
    one = render_raycluster(parse_cluster_spec(base))
    two = render_raycluster(parse_cluster_spec(base.replace("replicas: 4", "replicas: 5")))
    hashes = [m["metadata"]["annotations"][SPEC_HASH_ANNOTATION] for m in (one, two)]
    assert re.fullmatch(r"[0-9a-f]{16}", hashes[0]) and hashes[0] != hashes[1]


def test_resources_param_uses_the_sample_quoting() -> None:
    # The KubeRay sample documents the format in a comment: resources: '"{\"Custom1\": 1, \"Custom2\": 5}"'
    sample = (REPO.parent / "shared" / "kuberay" / "ray-cluster.autoscaler.yaml")
    if sample.exists():
        line = next(l for l in sample.read_text().splitlines() if "resources: '\"{" in l)
        documented = yaml.safe_load(line.strip().lstrip("# "))["resources"]
        assert decode_resources(documented) == {"Custom1": 1, "Custom2": 5}
    assert role_resources_param("ps") == '"{\\"raytf_ps\\": 1000}"'
    assert decode_resources(role_resources_param("any")) == {PS_RESOURCE: 1000, WORKER_RESOURCE: 1000}


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_roles_are_placed_by_custom_resources(name: str) -> None:
    manifest = rendered(name)
    spec = load_cluster_spec(CONFIGS / f"{name}.yaml")
    head = manifest["spec"]["headGroupSpec"]
    assert "resources" not in head["rayStartParams"]  # nothing raytf schedules may land on the head
    assert head["rayStartParams"]["num-cpus"] == "0"
    for group, rendered_group in zip(spec.worker_groups, manifest["spec"]["workerGroupSpecs"]):
        assert rendered_group["groupName"] == group.name
        want = {"ps": {PS_RESOURCE}, "worker": {WORKER_RESOURCE}, "any": {PS_RESOURCE, WORKER_RESOURCE}}[group.role]
        assert set(decode_resources(rendered_group["rayStartParams"]["resources"])) == want
        assert rendered_group["template"]["metadata"]["labels"]["raytf.io/role"] == group.role
        assert all(isinstance(v, str) for v in rendered_group["rayStartParams"].values())


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_pods_are_hardened_and_private(name: str) -> None:
    manifest = rendered(name)
    text = manifest_yaml(manifest)
    assert "hostNetwork" not in text and "privileged" not in text and "hostPort" not in text
    assert manifest["spec"]["headGroupSpec"]["serviceType"] == "ClusterIP"
    for container in containers(manifest):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert container["resources"]["limits"] == container["resources"]["requests"]
    if "autoscalerOptions" in manifest["spec"]:
        assert manifest["spec"]["autoscalerOptions"]["securityContext"]["allowPrivilegeEscalation"] is False
    assert "&id" not in text and "*id" not in text  # no YAML anchors: the output must stay kubectl-friendly


def test_gpu_config() -> None:
    manifest = rendered("kuberay-gpu")
    ps, gpu = manifest["spec"]["workerGroupSpecs"]
    gpu_container = gpu["template"]["spec"]["containers"][0]
    assert gpu_container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu_container["image"].endswith("-py311-gpu")
    assert gpu["rayStartParams"]["num-gpus"] == "1"
    assert gpu["template"]["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    ps_container = ps["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in ps_container["resources"]["limits"] and "num-gpus" not in ps["rayStartParams"]
    assert decode_resources(ps["rayStartParams"]["resources"]) == {PS_RESOURCE: 1000}
    assert decode_resources(gpu["rayStartParams"]["resources"]) == {WORKER_RESOURCE: 1000}


def test_autoscaling_config() -> None:
    spec = rendered("kuberay-autoscale")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] == 60
    assert spec["autoscalerOptions"]["upscalingMode"] == "Default"
    workers = spec["workerGroupSpecs"][1]
    assert (workers["minReplicas"], workers["replicas"], workers["maxReplicas"]) == (0, 1, 8)
    for name in ("kuberay-cpu", "kuberay-gpu", "kuberay-fault-tolerant"):
        assert "enableInTreeAutoscaling" not in rendered(name)["spec"]


def test_fault_tolerance_uses_a_secret_reference() -> None:
    spec = rendered("kuberay-fault-tolerant")["spec"]
    assert spec["gcsFaultToleranceOptions"] == {
        "redisAddress": "redis:6379",
        "redisPassword": {"valueFrom": {"secretKeyRef": {"name": "redis-password-secret", "key": "password"}}},
        "externalStorageNamespace": "raytf-ft",
    }
    for name in ("kuberay-cpu", "kuberay-gpu", "kuberay-autoscale"):
        assert "gcsFaultToleranceOptions" not in rendered(name)["spec"]
