"""One-shot runs as a KubeRay RayJob (`raytf train CONFIG --cluster SPEC`).

Rendering: golden files, the RayJob CRD (v1.7.0, ../shared) with the strict validator of
test_kuberay_schema.py, and the RayCluster spec inside it. Running: the real `kubernetes` client
against the fake API server, whose simulated operator walks the RayJob through InteractiveMode
(Initializing -> Waiting -> Running once spec.jobId is set); tests drive its status through the
fake's API. The slow tests submit the real job to a real local Ray cluster through the fake's
port-forward, with the token from the cluster's Secret, and mirror Ray's job status into the
RayJob as KubeRay does.

Regenerate golden files with `RAYTF_UPDATE_GOLDEN=1 python -m pytest tests/cluster/kuberay -q`.
"""

from __future__ import annotations

import copy
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

import jsonschema
import pytest
import yaml
from kubernetes import client as k8s
from rich.console import Console

from raytf.cluster.kuberay import oneshot
from raytf.cluster.kuberay.errors import ClusterSpecError, CrdNotInstalled, Forbidden, NotFound
from raytf.cluster.kuberay.manifest import PLACEMENT_OVERRIDES, manifest_yaml, render_raycluster
from raytf.cluster.kuberay.rayjob import (
    DEPLOYMENT_STATUSES,
    JOB_STATUSES,
    MAX_RAYJOB_NAME,
    RayJobState,
    outcome,
    rayjob_name,
)
from raytf.cluster.kuberay.specfile import load_cluster_spec, parse_cluster_spec

from .fake_apiserver import FakeApiServer
from .helpers import CONFIG_NAMES, CONFIGS, REPO, output
from .test_kuberay_schema import SHARED, crd_validator, errors

GOLDEN = Path(__file__).parent / "golden"
CRD = SHARED / "ray.io_rayjobs.yaml"
SAMPLE = SHARED / "ray-job.sample.yaml"
DIGITS = REPO / "examples" / "digits.yaml"
SUFFIX, JOB_ID = "t3st0", "raytf-digits-0000abcd"
NAME = f"raytf-cpu-{SUFFIX}"
SHARED_OUT = "output_dir=/mnt/raytf/runs/digits"

FAILING_DATA = '''
def train_examples(shard_index, num_shards):
    raise RuntimeError("data source unavailable on the cluster")
'''


def spec_with_storage(tmp_path: Path, path: str = "/mnt/raytf", extra: str = "") -> Path:
    """kuberay-cpu.yaml plus shared storage (a KubeRay run refuses an output_dir off it)."""
    text = (CONFIGS / "kuberay-cpu.yaml").read_text() + f"shared_storage: {{path: {path}, claim: raytf-rwx}}\n" + extra
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    return spec


def prepared(name: str, **kw: Any) -> oneshot.Prepared:
    return oneshot.prepare(DIGITS, [], CONFIGS / f"{name}.yaml", working_dir=REPO, suffix=SUFFIX, job_id=JOB_ID,
                           strict_output=False, **kw)


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    if not CRD.exists():
        pytest.skip(f"KubeRay RayJob CRD not found at {CRD} (../shared is absent)")
    return crd_validator(CRD)


# -- rendering ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_golden(name: str) -> None:
    text = manifest_yaml(prepared(name).manifest)
    golden = GOLDEN / f"rayjob-{name}.yaml"
    if os.environ.get("RAYTF_UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert golden.exists(), f"missing {golden}; run with RAYTF_UPDATE_GOLDEN=1 to create it"
    assert text == golden.read_text(), f"{name} renders differently from {golden}; if intended, regenerate it"


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_rendered_rayjobs_validate_and_shut_their_cluster_down(validator: jsonschema.Draft7Validator, name: str) -> None:
    manifest = prepared(name).manifest
    assert errors(validator, manifest) == []
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayJob")
    body = manifest["spec"]
    assert body["shutdownAfterJobFinishes"] is True and body["ttlSecondsAfterFinished"] == 300
    assert body["submissionMode"] == "InteractiveMode" and "jobId" not in body  # set once raytf submitted
    assert body["preRunningDeadlineSeconds"] == 1800
    # The same cluster `raytf up` renders for the spec, token auth included.
    spec = load_cluster_spec(CONFIGS / f"{name}.yaml")
    assert body["rayClusterSpec"] == render_raycluster(spec)["spec"]
    assert body["rayClusterSpec"]["authOptions"] == {"mode": "token"}
    # Placement: servers on ps-capable groups, workers on worker-capable ones.
    assert all(f"--set {o}" in body["entrypoint"] for o in PLACEMENT_OVERRIDES)
    assert body["entrypoint"].startswith("python -m raytf.cli train examples/digits.yaml --plain")
    assert manifest["metadata"]["name"] == f"{spec.name}-{SUFFIX}"


def test_the_shared_sample_validates_and_a_typo_does_not(validator: jsonschema.Draft7Validator) -> None:
    (sample,) = [d for d in yaml.safe_load_all(SAMPLE.read_text()) if d and d.get("kind") == "RayJob"]
    assert errors(validator, sample) == []
    broken = copy.deepcopy(prepared("kuberay-cpu").manifest)
    broken["spec"]["shutdownAfterJobFinish"] = broken["spec"].pop("shutdownAfterJobFinishes")
    broken["spec"]["ttlSecondsAfterFinished"] = "300"
    found = errors(validator, broken)
    assert any("'shutdownAfterJobFinish' was unexpected" in e for e in found), found
    assert any("'300' is not of type 'integer'" in e for e in found), found


def test_ttl_comes_from_the_flag_then_the_spec(tmp_path: Path) -> None:
    assert prepared("kuberay-cpu", ttl_seconds=0).manifest["spec"]["ttlSecondsAfterFinished"] == 0
    spec = spec_with_storage(tmp_path, extra="rayjob: {ttl_seconds_after_finished: 60, pre_running_deadline_seconds: 900}\n")
    job = oneshot.prepare(DIGITS, [SHARED_OUT], spec, working_dir=REPO, suffix=SUFFIX).manifest["spec"]
    assert (job["ttlSecondsAfterFinished"], job["preRunningDeadlineSeconds"]) == (60, 900)
    with pytest.raises(ClusterSpecError) as info:
        parse_cluster_spec(spec.read_text().replace("ttl_seconds_after_finished", "ttl_seconds_after_finish"), "spec.yaml")
    assert "spec.yaml:" in info.value.problem and "rayjob.ttl_seconds_after_finish:" in info.value.problem
    assert "Did you mean 'ttl_seconds_after_finished'?" in info.value.problem


def test_names_fit_kuberay_limits() -> None:
    long = "a" + "-b" * 24 + "c"  # 50 characters, the longest spec name
    name = rayjob_name(long, "x1y2z")
    assert len(name) <= MAX_RAYJOB_NAME and name.endswith("-x1y2z") and "--" not in name
    with pytest.raises(ValueError):
        rayjob_name("ok", "UPPER")


def test_outcomes_follow_kuberay_states() -> None:
    def state(deployment: str, job: str, message: str = "", reason: str = "") -> RayJobState:
        return RayJobState("j", "ns", deployment, job, "j-x", "id", reason, message, False)

    assert "Waiting" in DEPLOYMENT_STATUSES and "SUCCEEDED" in JOB_STATUSES
    assert outcome(state("Running", "RUNNING")) is None
    assert outcome(state("Waiting", "")) is None
    assert outcome(state("Complete", "SUCCEEDED")).code == 0
    assert outcome(state("Running", "SUCCEEDED")).code == 0  # the job ended; the deployment follows
    assert outcome(state("Complete", "STOPPED")).code == 2
    failed = outcome(state("Failed", "FAILED", "Job entrypoint command failed with exit code 2", "AppFailed"))
    assert failed.code == 2 and "FAILED (AppFailed: Job entrypoint command failed with exit code 2)" in failed.summary
    deadline = outcome(state("Failed", "", "The RayJob has passed the preRunningDeadlineSeconds.", "PreRunningDeadlineExceeded"))
    assert deadline.code == 2 and "PreRunningDeadlineExceeded: The RayJob has passed" in deadline.summary
    assert outcome(state("ValidationFailed", "", "BackoffLimit is incompatible")).code == 2


def test_dry_run_prints_a_valid_rayjob_and_touches_nothing(validator: jsonschema.Draft7Validator, monkeypatch) -> None:
    from typer.testing import CliRunner

    from raytf import cli

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("KUBECONFIG", str(REPO / "does-not-exist"))  # a dry run must not even read it
    result = CliRunner().invoke(cli.app, ["train", "examples/digits.yaml", "--cluster", "cluster-configs/kuberay-cpu.yaml",
                                          "--dry-run", "--ttl", "120"])
    assert result.exit_code == 0, result.output
    manifest = yaml.safe_load(result.stdout)
    assert errors(validator, manifest) == []
    assert manifest["spec"]["shutdownAfterJobFinishes"] is True and manifest["spec"]["ttlSecondsAfterFinished"] == 120
    assert "mounts no shared storage" in result.stderr  # the real run would refuse runs/digits; the dry run warns


def test_cli_refuses_conflicting_options(monkeypatch) -> None:
    from typer.testing import CliRunner

    from raytf import cli

    monkeypatch.chdir(REPO)
    runner = CliRunner()
    local = runner.invoke(cli.app, ["train", "examples/digits.yaml", "--cluster", "cluster-configs/local.yaml"])
    assert local.exit_code == 2 and "takes a KubeRay cluster spec" in local.output
    both = runner.invoke(cli.app, ["train", "examples/digits.yaml", "--cluster", "cluster-configs/kuberay-cpu.yaml",
                                   "--address", "auto"])
    assert both.exit_code == 2 and "Drop --address" in both.output


# -- running against the fake API server ------------------------------------------------------------------


def run(api_client: k8s.ApiClient, console: Console, spec: Path, *, overrides: list[str] | None = None,
        sleep: Callable[[float], None] = lambda s: None, **kw: Any) -> int:
    return oneshot.train(DIGITS, overrides if overrides is not None else [SHARED_OUT], spec, console=console,
                         api_client=api_client, working_dir=REPO, suffix=SUFFIX, job_id=JOB_ID, sleep=sleep, **kw)


def test_create_body_is_the_dry_run_and_a_failed_deployment_exits_2(fake: FakeApiServer, api_client, console, tmp_path, capsys) -> None:
    spec = spec_with_storage(tmp_path)
    assert run(api_client, console, spec, dry_run=True) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert fake.requests == []  # the dry run sent nothing
    message = "The RayJob has passed the preRunningDeadlineSeconds. StartTime: 2025-01-01. PreRunningDeadlineSeconds: 1800"
    fake.set_job_status("default", NAME, jobDeploymentStatus="Failed", reason="PreRunningDeadlineExceeded", message=message)
    assert run(api_client, console, spec) == 2
    (create,) = fake.calls("POST", "/rayjobs")
    assert create.body == printed
    text = output(console)
    assert f"Created RayJob '{NAME}' in namespace 'default'" in text
    assert f"RayJob '{NAME}' in namespace 'default' Failed: PreRunningDeadlineExceeded: {message}" in text
    assert fake.calls("PATCH") == []  # never submitted


def test_a_run_off_shared_storage_is_refused_before_anything_is_created(fake: FakeApiServer, api_client, console, tmp_path) -> None:
    from raytf.cluster.kuberay.errors import OutputNotShared

    with pytest.raises(OutputNotShared):
        run(api_client, console, spec_with_storage(tmp_path), overrides=[])  # runs/digits: relative
    assert fake.requests == []


@pytest.mark.parametrize(("setup", "error", "words"), [
    (lambda f: f.forbidden.add(("create", "rayjobs")), Forbidden,
     ["refused to let you create rayjobs.ray.io in namespace 'default'", "kubectl auth can-i create rayjobs.ray.io -n default"]),
    (lambda f: setattr(f, "rayjobs_installed", False), CrdNotInstalled, ["ray.io/v1 RayJob API", "helm install kuberay-operator"]),
    (lambda f: f.missing_namespaces.add("default"), NotFound, ["Namespace 'default' does not exist", "kubectl create namespace default"]),
], ids=["forbidden", "no-crd", "no-namespace"])
def test_api_errors_on_create_name_the_fix(fake: FakeApiServer, api_client, console, tmp_path, setup, error, words) -> None:
    setup(fake)
    with pytest.raises(error) as info:
        run(api_client, console, spec_with_storage(tmp_path))
    text = f"{info.value.problem} {info.value.fix}"
    for word in words:
        assert word in text, text


def test_ctrl_c_before_submission_deletes_the_rayjob(fake: FakeApiServer, api_client, console, tmp_path) -> None:
    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    assert run(api_client, console, spec_with_storage(tmp_path), sleep=interrupt, on_interrupt="detach") == 2
    assert fake.calls("DELETE", f"/rayjobs/{NAME}") and fake.jobs == {}
    assert "Interrupted before the job was submitted: deleted RayJob" in output(console)


def test_a_job_that_cannot_be_submitted_frees_its_cluster(fake: FakeApiServer, api_client, console, tmp_path) -> None:
    from raytf.cluster.kuberay.errors import AuthTokenUnavailable

    fake.forbidden.add(("get", "secrets"))  # the Ray token of the RayJob's cluster cannot be read
    with pytest.raises(AuthTokenUnavailable) as info:
        run(api_client, console, spec_with_storage(tmp_path))
    assert f"RayCluster '{NAME}-x2k9q'" in info.value.problem and f"secrets/{NAME}-x2k9q" in info.value.fix
    assert fake.calls("DELETE", f"/rayjobs/{NAME}") and fake.jobs == {}
    assert f"Deleted RayJob '{NAME}' in namespace 'default': its job could not be submitted." in output(console)


def test_progress_lines_follow_the_status(fake: FakeApiServer, api_client, console, tmp_path) -> None:
    fake.job_ready_after = 99  # stays Initializing: the test ends it
    steps = iter(range(100))

    def tick(seconds: float) -> None:
        if next(steps) == 2:
            fake.set_job_status("default", NAME, jobDeploymentStatus="Complete", jobStatus="STOPPED", message="stopped by user")

    assert run(api_client, console, spec_with_storage(tmp_path), sleep=tick) == 2
    lines = output(console).splitlines()
    assert f"RayJob {NAME}: Initializing, cluster {NAME}-x2k9q" in lines
    assert lines.count(f"RayJob {NAME}: Initializing, cluster {NAME}-x2k9q") == 1  # printed on change only
    assert f"RayJob '{NAME}' in namespace 'default' ended STOPPED (stopped by user)." in lines


# -- the real job on a real local Ray cluster, through the fake's port-forward ----------------------------


@pytest.fixture
def live(fake: FakeApiServer, ray_cluster, tmp_path: Path):
    """The fake's pods forward to the local Ray dashboard, its Secret holds that cluster's token,
    and its operator reads job status from that Ray, as KubeRay does from the cluster it created."""
    from ray.job_submission import JobSubmissionClient

    from raytf.cluster.local import auth_headers

    host, port = ray_cluster.dashboard_url.rsplit(":", 1)
    fake.forward_to = int(port)
    fake.auth_token = Path(ray_cluster.token_path).read_text().strip()
    ray = JobSubmissionClient(ray_cluster.dashboard_url, headers=auth_headers(ray_cluster))

    def status(job_id: str) -> tuple[str, str]:
        info = ray.get_job_info(job_id)
        return str(info.status.value), info.message or ""

    fake.ray_job_status = status
    work = tmp_path / "job"
    shutil.copytree(REPO / "examples", work / "examples", ignore=shutil.ignore_patterns("__pycache__", "bench*", "benchmark*"))
    (work / "failing_data.py").write_text(FAILING_DATA)
    shared = tmp_path / "shared"
    # The local cluster has raytf and its dependencies: no py_modules/pip (no package index here).
    spec = spec_with_storage(tmp_path, path=str(shared), extra="image_has_raytf: true\n")
    job_id = f"raytf-digits-{uuid.uuid4().hex[:8]}"  # Ray job ids are unique per (session-wide) cluster
    yield work, spec, shared, job_id
    if not ray.get_job_status(job_id).is_terminal():
        ray.stop_job(job_id)


# The local cluster offers no raytf_ps/raytf_worker resources: the user's --set win over placement.
LOCAL_PLACEMENT = ["distribution.ps_resources={num_cpus: 0}", "distribution.worker_resources.resources={}"]


def live_run(api_client, console, live: tuple, overrides: list[str], **kw: Any) -> int:
    work, spec, shared, job_id = live
    return oneshot.train(work / "examples" / "digits.yaml", [*LOCAL_PLACEMENT, *overrides, f"output_dir={shared}/runs/digits"],
                         spec, console=console, api_client=api_client, working_dir=work, suffix=SUFFIX, job_id=job_id,
                         poll_interval=0.5, **kw)


@pytest.mark.slow
def test_a_succeeding_job_streams_its_logs_and_exits_0(fake: FakeApiServer, api_client, console, live) -> None:
    _, _, shared, job_id = live
    code = live_run(api_client, console, live, ["steps=5"])
    text = output(console)
    print(text)
    assert code == 0, text
    assert "[raytf] step 5/5" in text and "raytf summary" in text  # the job's own output, streamed
    assert f"Submitted Ray job {job_id} to cluster {NAME}-x2k9q" in text
    assert f"RayJob '{NAME}' in namespace 'default' succeeded." in text
    assert (shared / "runs" / "digits" / "summary.json").is_file()
    (patch,) = fake.calls("PATCH", f"/rayjobs/{NAME}")
    assert patch.body == [{"op": "add", "path": "/spec/jobId", "value": job_id}]
    assert fake.calls("GET", f"/secrets/{NAME}-x2k9q")  # the token came from the cluster's Secret...
    assert fake.auth_token not in text  # ...and was never printed


@pytest.mark.slow
def test_a_failing_job_exits_2_with_kuberays_message(fake: FakeApiServer, api_client, console, live) -> None:
    code = live_run(api_client, console, live, ["steps=5", "data.train=failing_data:train_examples"])
    text = output(console)
    print(text)
    assert code == 2, text
    assert "data source unavailable on the cluster" in text  # from the streamed logs
    assert f"RayJob '{NAME}' in namespace 'default' ended FAILED (AppFailed: " in text


@pytest.mark.slow
@pytest.mark.parametrize("choice", ["ask", "stop"])
def test_ctrl_c_after_submission_detaches_or_stops(fake: FakeApiServer, api_client, console, live, choice: str) -> None:
    def interrupt_once_submitted(seconds: float) -> None:
        if fake.calls("PATCH", f"/rayjobs/{NAME}"):
            raise KeyboardInterrupt

    code = live_run(api_client, console, live, ["steps=500"], sleep=interrupt_once_submitted, on_interrupt=choice, interactive=lambda: False)
    text = output(console)
    if choice == "ask":  # stdin is no terminal: detach
        assert code == 130, text
        assert "stdin is not a terminal: detaching" in text
        assert f"kubectl get rayjob {NAME} -n default -w" in text
        assert fake.calls("DELETE") == [] and ("default", NAME) in fake.jobs
    else:
        assert code == 2, text
        assert f"Deleted RayJob '{NAME}' in namespace 'default'" in text
        assert ("default", NAME) not in fake.jobs
