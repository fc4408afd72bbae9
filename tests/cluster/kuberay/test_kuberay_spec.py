"""Cluster spec loading: valid files load; mistakes name file, line, key and what is allowed."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from raytf.cluster.kuberay.errors import ClusterSpecError
from raytf.cluster.kuberay.spec import ClusterSpec
from raytf.cluster.kuberay.specfile import is_kuberay_spec, load_cluster_spec, parse_cluster_spec
from raytf.errors import ConfigError

from .helpers import CONFIG_NAMES, CONFIGS

GOOD = """\
provider: kuberay
name: demo
ray_version: "2.60.0"
worker_groups:
  - name: ps
    role: ps
    replicas: 1
  - name: workers
    role: worker
    replicas: 2
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ClusterSpecError) as info:
        load_cluster_spec(path)
    assert isinstance(info.value, ConfigError)  # the CLI's exit-2 family
    message = str(info.value)
    assert str(path) in message
    return message


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_shipped_configs_load(name: str) -> None:
    spec = load_cluster_spec(CONFIGS / f"{name}.yaml")
    assert spec.provider == "kuberay" and spec.name.startswith("raytf-")
    assert {g.role for g in spec.worker_groups} >= {"ps", "worker"}
    assert is_kuberay_spec(CONFIGS / f"{name}.yaml")


def test_defaults(tmp_path: Path) -> None:
    spec = load_cluster_spec(write(tmp_path, GOOD))
    assert spec.namespace == "default"
    assert spec.base_image == "rayproject/ray:2.60.0-py311"
    assert spec.head.cpu == "1" and spec.head.memory == "4Gi" and not spec.head.run_workloads
    ps = spec.group("ps")
    assert ps is not None and (ps.lowest, ps.replicas, ps.highest) == (1, 1, 1)
    assert spec.autoscaling is None and spec.fault_tolerance is None


def test_models_are_frozen(tmp_path: Path) -> None:
    spec = load_cluster_spec(write(tmp_path, GOOD))
    with pytest.raises(Exception) as info:
        spec.name = "other"  # type: ignore[misc]
    assert "frozen" in str(info.value)


def test_typo_gets_suggestion_and_line(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("    replicas: 2", "    replcas: 2"))
    assert ":10: worker_groups[1].replcas: unknown key. Did you mean 'replicas'?" in message
    assert "Allowed keys: name, role, replicas, min_replicas, max_replicas" in message


def test_top_level_typo(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("name: demo", "name: demo\nnamepsace: team-a"))
    assert ":3: namepsace: unknown key. Did you mean 'namespace'?" in message


def test_inline_redis_password_is_refused_with_secret_suggestion(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD + "fault_tolerance:\n  redis_address: redis:6379\n  redis_password: hunter2\n")
    assert ":13: fault_tolerance.redis_password: unknown key. Did you mean 'redis_password_secret'?" in message


def test_negative_replicas_names_key(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("replicas: 2", "replicas: -1"))
    assert ":10: worker_groups[1].replicas: must be greater than or equal to 0 (got -1)" in message


def test_min_above_max_names_group_and_values(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("replicas: 2", "replicas: 2\n    min_replicas: 3\n    max_replicas: 1"))
    assert ":8: worker_groups[1]: needs min_replicas <= replicas <= max_replicas (got 3 <= 2 <= 1)" in message


def test_bad_role_lists_allowed_values(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("role: worker", "role: chief"))
    assert "worker_groups[1].role: must be one of 'ps', 'worker' or 'any' (got 'chief')" in message


@pytest.mark.parametrize("bad", ["Demo", "demo_1", "1demo", "x" * 51, "demo-"])
def test_bad_cluster_name(tmp_path: Path, bad: str) -> None:
    message = error_of(tmp_path, GOOD.replace("name: demo", f"name: {bad}"))
    assert ":2: name: must be a Kubernetes name" in message


def test_bad_quantities_and_versions(tmp_path: Path) -> None:
    text = GOOD.replace('ray_version: "2.60.0"', 'ray_version: "2.60"\npython_version: 3.10\nhead:\n  cpu: lots\n  memory: 0')
    message = error_of(tmp_path, text)
    assert ":3: ray_version: must be a Ray release such as '2.60.0'" in message
    assert ":4: python_version: must be quoted" in message
    assert ":6: head.cpu: cpu must be a positive Kubernetes quantity" in message
    assert ":7: head.memory: memory must be a positive Kubernetes quantity" in message


def test_missing_required_key(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace('ray_version: "2.60.0"\n', ""))
    assert "ray_version: required key is missing." in message


def test_roles_must_cover_ps_and_worker(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("role: ps", "role: worker"))
    assert "no worker group can host parameter servers" in message


def test_duplicate_group_names(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("name: workers", "name: ps"))
    assert "worker group names must be unique; repeated: ps" in message


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("    replicas: 2", "    replicas: 2\n    replicas: 3"))
    assert ":11: worker_groups[1].replicas: key appears twice" in message


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("  - name: workers", "  - name: [workers"))
    assert f"{tmp_path / 'spec.yaml'}:9: YAML syntax error" in message


def test_not_a_mapping_and_missing_file(tmp_path: Path) -> None:
    assert "must be a YAML mapping" in error_of(tmp_path, "- just\n- a list\n")
    with pytest.raises(ClusterSpecError, match="does not exist"):
        load_cluster_spec(tmp_path / "nope.yaml")


def test_wrong_provider(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("provider: kuberay", "provider: local"))
    assert "provider: must be 'kuberay' (got 'local')" in message
    assert not is_kuberay_spec(write(tmp_path, GOOD.replace("provider: kuberay", "provider: local")))


def test_toleration_rules(tmp_path: Path) -> None:
    text = GOOD + "    tolerations:\n      - key: gpu\n        operator: Exists\n        value: x\n"
    assert "operator 'Exists' takes no value" in error_of(tmp_path, text)


def test_python_version_picks_image_and_gpu_variant() -> None:
    spec = parse_cluster_spec(GOOD.replace("replicas: 2", "replicas: 2\n    gpus: 1") + 'python_version: "3.10"\n')
    assert isinstance(spec, ClusterSpec)
    assert spec.base_image == "rayproject/ray:2.60.0-py310"
    workers = spec.group("workers")
    ps = spec.group("ps")
    assert workers is not None and ps is not None
    assert spec.group_image(workers) == "rayproject/ray:2.60.0-py310-gpu"
    assert spec.group_image(ps) == "rayproject/ray:2.60.0-py310"
