"""Rendered manifests against the KubeRay v1.7.0 RayCluster CRD schema (from ../shared).

The CRD is a structural schema: a real API server silently prunes unknown fields, so a typo in a
field name would "validate" yet do nothing. The validator here adds `additionalProperties: false`
wherever the schema lists properties (like `kubectl apply --validate=strict`), so such typos
fail. Not checked: CEL rules (`x-kubernetes-validations`) and int32 bounds.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from raytf.cluster.kuberay.manifest import render_raycluster
from raytf.cluster.kuberay.specfile import load_cluster_spec, parse_cluster_spec

from .helpers import CONFIG_NAMES, CONFIGS

# The repo's sibling folder `../shared` (beside the clone, also in CI).
SHARED = Path(__file__).resolve().parents[4] / "shared" / "kuberay"
CRD = SHARED / "ray.io_rayclusters.yaml"
SAMPLES = sorted(SHARED.glob("ray-cluster*.yaml"))

pytestmark = pytest.mark.skipif(not CRD.exists(), reason=f"KubeRay CRD not found at {CRD} (../shared is absent)")

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRD is 17k lines; libyaml is much faster


def _strict(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


def crd_validator(path: Path) -> jsonschema.Draft7Validator:
    """The strict validator of the v1 schema of the CRD at `path` (RayClusters here, RayJobs too)."""
    crd = yaml.load(path.read_text(), Loader=_Loader)
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = _strict(v1["schema"]["openAPIV3Schema"])
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    return crd_validator(CRD)


def errors(validator: jsonschema.Draft7Validator, manifest: dict[str, Any]) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(manifest)]


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_rendered_configs_validate(validator: jsonschema.Draft7Validator, name: str) -> None:
    manifest = render_raycluster(load_cluster_spec(CONFIGS / f"{name}.yaml"))
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayCluster"
    assert errors(validator, manifest) == []


VARIANTS = {
    "auth none": "auth: none\n",
    "nfs volume": "shared_storage:\n  path: /data/raytf\n  volume: {nfs: {server: nfs.example.com, path: /exports/raytf, readOnly: false}}\n",
    "csi volume": "shared_storage:\n  path: /mnt/raytf\n  volume: {csi: {driver: efs.csi.aws.com, volumeAttributes: {fs: x}}}\n",
    "image has raytf": "image_has_raytf: true\nimage: registry.example.com/raytf:0.1.0\n",
}


@pytest.mark.parametrize("extra", VARIANTS.values(), ids=list(VARIANTS))
def test_spec_variants_validate(validator: jsonschema.Draft7Validator, extra: str) -> None:
    manifest = render_raycluster(parse_cluster_spec((CONFIGS / "kuberay-cpu.yaml").read_text() + extra))
    assert errors(validator, manifest) == []


def test_misspelled_volume_source_field_fails(validator: jsonschema.Draft7Validator) -> None:
    # The spec passes a volume source through as written; the CRD (like the API server) catches typos in it.
    extra = "shared_storage:\n  path: /mnt/raytf\n  volume: {nfs: {server: nfs.example.com, pth: /exports}}\n"
    found = errors(validator, render_raycluster(parse_cluster_spec((CONFIGS / "kuberay-cpu.yaml").read_text() + extra)))
    assert any("'pth' was unexpected" in e for e in found) and any("'path' is a required property" in e for e in found), found


def test_shared_samples_validate(validator: jsonschema.Draft7Validator) -> None:
    clusters = [
        doc for path in SAMPLES for doc in yaml.safe_load_all(path.read_text())
        if isinstance(doc, dict) and doc.get("kind") == "RayCluster"
    ]
    assert len(clusters) >= 4, SAMPLES
    for doc in clusters:
        assert errors(validator, doc) == [], doc["metadata"]["name"]


def broken_variants() -> list[tuple[str, Any, str]]:
    def typo(m: dict[str, Any]) -> None:
        m["spec"]["workerGroupSpecs"][0]["replica"] = m["spec"]["workerGroupSpecs"][0].pop("replicas")

    def wrong_type(m: dict[str, Any]) -> None:
        m["spec"]["workerGroupSpecs"][0]["replicas"] = "two"

    def missing_required(m: dict[str, Any]) -> None:
        del m["spec"]["workerGroupSpecs"][0]["groupName"]

    def bad_enum(m: dict[str, Any]) -> None:
        m["spec"]["enableInTreeAutoscaling"] = True
        m["spec"]["autoscalerOptions"] = {"upscalingMode": "Whenever"}

    def non_string_param(m: dict[str, Any]) -> None:
        m["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0

    def bad_quantity(m: dict[str, Any]) -> None:
        m["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = "lots"

    return [
        ("typo", typo, "Additional properties are not allowed ('replica' was unexpected)"),
        ("wrong type", wrong_type, "'two' is not of type 'integer'"),
        ("missing required", missing_required, "'groupName' is a required property"),
        ("bad enum", bad_enum, "'Whenever' is not one of"),
        ("non-string rayStartParams", non_string_param, "0 is not of type 'string'"),
        ("bad quantity", bad_quantity, "does not match"),
    ]


@pytest.mark.parametrize(("label", "breaker", "expected"), broken_variants(), ids=[b[0] for b in broken_variants()])
def test_broken_manifests_fail(validator: jsonschema.Draft7Validator, label: str, breaker: Any, expected: str) -> None:
    manifest = copy.deepcopy(render_raycluster(load_cluster_spec(CONFIGS / "kuberay-cpu.yaml")))
    breaker(manifest)
    found = errors(validator, manifest)
    assert any(expected in e for e in found), found
