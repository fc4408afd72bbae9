"""The image question: the runtime_env that brings raytf to stock rayproject/ray images (inspected as
Ray's real JobSubmissionClient submits it, through the real port-forward), and docker/Dockerfile."""

from __future__ import annotations

import io
import os
import re
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from kubernetes import client as k8s
from rich.console import Console

import raytf
from raytf.cluster.kuberay import commands
from raytf.cluster.kuberay.manifest import PLACEMENT_OVERRIDES, render_raycluster
from raytf.cluster.kuberay.runtime_env import (
    CLIENT_ONLY,
    CLUSTER_PACKAGES,
    job_runtime_env,
    pinned_requirements,
    requirements_txt,
)
from raytf.cluster.kuberay.specfile import load_cluster_spec, parse_cluster_spec
from raytf.cluster.record import save_cluster_record

from .fake_apiserver import FakeApiServer
from .fake_ray_api import FakeRayDashboard
from .helpers import CONFIGS, REPO, output

SHARED = CONFIGS / "kuberay-shared-storage.yaml"
DOCKERFILE = REPO / "docker" / "Dockerfile"
REQUIREMENTS = REPO / "docker" / "requirements.txt"
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def test_runtime_env_brings_this_raytf_and_pins_local_versions() -> None:
    env = job_runtime_env(load_cluster_spec(SHARED))
    assert env["py_modules"] == [str(Path(raytf.__file__).resolve().parent)]
    assert Path(env["py_modules"][0], "cli.py").is_file() and Path(env["py_modules"][0]).name == "raytf"
    pins = dict(p.split("==") for p in env["pip"]["packages"])
    assert pins == {name: metadata.version(name) for name in CLUSTER_PACKAGES}
    assert pins["tensorflow"] == metadata.version("tensorflow") and "ray" not in pins
    assert env["pip"]["pip_check"] is False


def test_image_has_raytf_opts_out() -> None:
    spec = parse_cluster_spec(SHARED.read_text() + "image_has_raytf: true\nimage: registry.example.com/raytf:0.1.0\n")
    assert job_runtime_env(spec) == {}


def test_cluster_packages_cover_the_project_dependencies() -> None:
    declared = {_name(d) for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert set(CLUSTER_PACKAGES) | set(CLIENT_ONLY) == declared
    assert not set(CLUSTER_PACKAGES) & set(CLIENT_ONLY)


def test_missing_package_is_a_named_error() -> None:
    from raytf.errors import ClusterError

    with pytest.raises(ClusterError, match="no-such-dist-raytf not installed here") as info:
        pinned_requirements(("numpy", "no-such-dist-raytf"))
    assert "image_has_raytf: true" in info.value.fix


def test_docker_requirements_match_the_runtime_env() -> None:
    text = requirements_txt()
    if os.environ.get("RAYTF_UPDATE_GOLDEN") == "1":
        REQUIREMENTS.write_text(text)
    # The same packages, each pinned; the versions are this machine's when the file was written (a fresh
    # install elsewhere may resolve newer ones, which must not turn the suite red).
    def pins(body: str) -> dict[str, str]:
        lines = [line for line in body.splitlines() if line and not line.startswith("#")]
        assert all("==" in line for line in lines), lines
        return dict(line.split("==") for line in lines)

    assert pins(REQUIREMENTS.read_text()).keys() == pins(text).keys(), \
        "docker/requirements.txt lists other packages than the runtime_env; regenerate it (see its header)"


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", dockerfile)
    lines = [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_builds_on_the_default_image_and_ends_non_root() -> None:
    steps = _instructions(DOCKERFILE.read_text())
    froms = [arg for op, arg in steps if op == "FROM"]
    assert froms == [load_cluster_spec(CONFIGS / "kuberay-cpu.yaml").base_image]  # the shipped specs' default
    assert steps[-1] == ("USER", "1000")
    assert not any(op == "USER" and arg.split(":")[0] in ("root", "0") for op, arg in steps)
    run = " ".join(arg for op, arg in steps if op == "RUN")
    assert "-r /tmp/raytf/requirements.txt" in run and "--no-deps /tmp/raytf/src" in run  # Ray stays the image's
    copied = " ".join(arg for op, arg in steps if op == "COPY")
    assert "docker/requirements.txt" in copied and "raytf /tmp/raytf/src/raytf" in copied
    ignore = (REPO / "docker" / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*"):] and all(f"!{path}" in ignore for path in ("pyproject.toml", "README.md", "raytf/"))


@pytest.fixture
def recorded_shared_cluster(fake: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    fake.add_cluster(render_raycluster(load_cluster_spec(SHARED)), ready=True)
    save_cluster_record({"provider": "kuberay", "name": "raytf-shared", "namespace": "default", "kubeconfig": None,
                         "context": None, "spec_path": str(SHARED)})
    work = tmp_path / "work"
    (work / "examples").mkdir(parents=True)
    (work / "examples" / "digits.yaml").write_text((REPO / "examples" / "digits.yaml").read_text())
    monkeypatch.chdir(work)  # the job uploads the current directory, as from the CLI
    return work


def test_train_submits_token_runtime_env_and_placement_through_the_port_forward(
    fake: FakeApiServer, api_client: k8s.ApiClient, console: Console, recorded_shared_cluster: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with FakeRayDashboard(token=fake.auth_token) as dashboard:
        fake.forward_to = dashboard.port
        code = commands.train("examples/digits.yaml", ["output_dir=/mnt/raytf/runs/digits", "steps=10"], console=console,
                              api_client=api_client, follow=False)
    assert code == 0
    assert fake.calls("GET", "/api/v1/namespaces/default/secrets/raytf-shared")
    assert fake.calls("GET", "/pods/raytf-shared-head-x7k2p/portforward")
    # Every request carried the token from the Secret (the dashboard answers 401/403 otherwise).
    assert dashboard.seen_auth and {auth for _, _, auth in dashboard.seen_auth} == {f"Bearer {fake.auth_token}"}
    (job,) = dashboard.jobs
    env = job["runtime_env"]
    assert env["pip"]["packages"] == pinned_requirements()
    assert env["excludes"] == ["runs/", ".git/", "__pycache__/"]
    # Ray's client replaced the local paths by uploaded packages: find raytf among them.
    assert env["working_dir"].startswith("gcs://") and len(env["py_modules"]) == 1
    module_zip = dashboard.uploads[env["py_modules"][0].rsplit("/", 1)[-1]]
    names = zipfile.ZipFile(io.BytesIO(module_zip)).namelist()
    assert "raytf/__init__.py" in names and "raytf/cluster/kuberay/runtime_env.py" in names
    assert not any("__pycache__" in n for n in names)
    assert all(f"--set {o}" in job["entrypoint"] for o in PLACEMENT_OVERRIDES)
    assert job["entrypoint"].endswith("--set output_dir=/mnt/raytf/runs/digits --set steps=10 --address auto")
    text = output(console)
    assert "Submitted Ray job raytf-digits-" in text
    assert "kubectl exec -n default raytf-shared-head-x7k2p -c ray-head -- ray job logs --follow raytf-digits-" in text
    captured = capsys.readouterr()
    assert fake.auth_token not in text + captured.out + captured.err


def test_train_with_a_wrong_token_is_refused_without_showing_it(
    fake: FakeApiServer, api_client: k8s.ApiClient, console: Console, recorded_shared_cluster: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from raytf.errors import ClusterError

    with FakeRayDashboard(token="the-real-one") as dashboard:
        fake.forward_to = dashboard.port
        with pytest.raises(ClusterError) as info:
            commands.train("examples/digits.yaml", ["output_dir=/mnt/raytf/runs/x"], console=console,
                           api_client=api_client, follow=False)
    assert dashboard.jobs == [] and dashboard.seen_auth[0][2] == f"Bearer {fake.auth_token}"
    message = info.value.problem + info.value.fix + output(console) + "".join(capsys.readouterr())
    assert "refused the token raytf sent (Authentication failed: Forbidden: Invalid authentication token)" in message
    assert "Secret" in info.value.fix and "raytf status" in info.value.fix
    assert fake.auth_token not in message


def test_cli_train_on_a_recorded_kuberay_cluster(
    fake: FakeApiServer, recorded_shared_cluster: Path, tmp_path: Path,
) -> None:
    """`raytf train` itself (always a Ray Job on KubeRay): kubeconfig from the record, the real client,
    port-forward, token and runtime_env. The CLI follows the job's logs, which the fake dashboard does
    not stream, so the run ends with "Lost the log stream" (exit 2) after the submission checked here."""
    from typer.testing import CliRunner

    from raytf import cli
    from raytf.cluster.record import load_cluster_record

    from .test_kuberay_client import write_kubeconfig

    record = load_cluster_record()
    record["kubeconfig"] = str(write_kubeconfig(tmp_path / "kubeconfig", fake.url))
    save_cluster_record(record)
    with FakeRayDashboard(token=fake.auth_token) as dashboard:
        fake.forward_to = dashboard.port
        refused = CliRunner().invoke(cli.app, ["train", "examples/digits.yaml"])
        assert refused.exit_code == 2 and "output_dir 'runs/digits' is relative" in refused.output, refused.output
        assert dashboard.seen_auth == []
        result = CliRunner().invoke(cli.app, ["train", "examples/digits.yaml", "--set", "output_dir=/mnt/raytf/runs/d"])
    print(result.output)
    assert "Submitted Ray job raytf-digits-" in result.output, result.output
    assert result.exit_code == 2 and "Lost the log stream of job raytf-digits-" in result.output
    assert "kubectl exec -n default raytf-shared-head-x7k2p -c ray-head -- ray job logs --follow raytf-digits-" in result.output
    (job,) = dashboard.jobs
    assert job["runtime_env"]["pip"]["packages"] == pinned_requirements()
    assert all(f"--set {o}" in job["entrypoint"] for o in PLACEMENT_OVERRIDES)
    assert fake.auth_token not in result.output
