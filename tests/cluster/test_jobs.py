"""`raytf train` as a Ray Job on a real local cluster (the session's `ray_cluster`).

The job's working directory is a small temp copy holding only `examples/` and the configs;
raytf itself comes from the cluster's Python (it is installed there).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from rich.console import Console

from raytf.cluster.jobs import job_entrypoint, submit_training_job
from raytf.errors import ClusterError

REPO = Path(__file__).resolve().parents[2]

FAILING_DATA = '''
def train_examples(shard_index, num_shards):
    raise RuntimeError("data source unavailable on the cluster")
'''


@pytest.fixture
def workdir(tmp_path) -> Path:
    work = tmp_path / "job"
    shutil.copytree(REPO / "examples", work / "examples", ignore=shutil.ignore_patterns("__pycache__", "bench*", "benchmark*"))
    (work / "failing_data.py").write_text(FAILING_DATA)
    return work


def _console(tmp_path) -> tuple[Console, Path]:
    log = tmp_path / "console.txt"
    return Console(file=log.open("w"), width=120, highlight=False, force_terminal=False), log


def test_entrypoint_quotes_arguments():
    line = job_entrypoint("examples/digits.yaml", ["name=my run", "steps=30"])
    assert line == "python -m raytf.cli train examples/digits.yaml --plain --set 'name=my run' --set steps=30 --address auto"


@pytest.mark.slow
def test_a_detached_failing_job_is_attached_to_and_returns_2(ray_cluster, workdir, tmp_path):
    from raytf.cluster.jobs import job_logs

    console, log = _console(tmp_path)
    code = submit_training_job(
        ray_cluster.dashboard_url, str(workdir / "examples" / "digits.yaml"),
        ["steps=5", "data.train=failing_data:train_examples", f"output_dir={tmp_path / 'out'}"],
        working_dir=str(workdir), console=console, follow=False,
    )
    assert code == 0  # submitted, not followed
    job_id = next(line.split()[3] for line in log.read_text().splitlines() if line.startswith("Submitted Ray job"))
    assert f"raytf attach {job_id}" in log.read_text()
    code = job_logs(ray_cluster.dashboard_url, job_id, console=console, follow=True)  # `raytf attach ID`
    console.file.close()
    text = log.read_text()
    print(text)
    assert code == 2, text
    assert "FAILED" in text and "data source unavailable on the cluster" in text


def test_unreachable_dashboard_is_a_cluster_error(workdir, tmp_path):
    console, _ = _console(tmp_path)
    with pytest.raises(ClusterError) as info:
        submit_training_job("http://127.0.0.1:1", str(workdir / "examples" / "digits.yaml"), [],
                            working_dir=str(workdir), console=console)
    assert "http://127.0.0.1:1" in info.value.problem
    assert "raytf up" in info.value.fix


def test_cli_submit_without_a_cluster_says_how_to_start_one(raytf_home, monkeypatch):
    from typer.testing import CliRunner

    from raytf import cli

    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(cli.app, ["train", "examples/digits.yaml", "--submit"])
    assert result.exit_code == 2, result.output
    assert "none is up" in result.output and "raytf up" in result.output
    assert not (raytf_home / "cluster.json").exists()


@pytest.mark.slow
def test_cli_submit_runs_on_the_recorded_local_cluster(ray_cluster, raytf_home, workdir, monkeypatch):
    from ray.job_submission import JobStatus, JobSubmissionClient
    from typer.testing import CliRunner

    from raytf import cli
    from raytf.cluster.record import save_cluster_record

    save_cluster_record(ray_cluster.record())
    monkeypatch.chdir(workdir)
    result = CliRunner().invoke(cli.app, ["train", "examples/digits.yaml", "--submit", "--set", "steps=10"])
    assert result.exit_code == 0, result.output
    assert "Submitted Ray job raytf-digits-" in result.output and "[raytf] step 10/10" in result.output
    assert (workdir / "runs" / "digits" / "summary.json").is_file()  # relative output_dir: resolved here
    # The submitted run streamed its output and ended SUCCEEDED (one job for the CLI and the library call
    # under it, submit_training_job: a job costs ~30 s here).
    text = result.output
    assert "raytf summary" in text and "final training loss" in text
    job_id = next(line.split()[3] for line in text.splitlines() if line.startswith("Submitted Ray job"))
    assert job_id.startswith("raytf-digits-")
    assert f"{ray_cluster.dashboard_url}/#/jobs/{job_id}" in text
    client = JobSubmissionClient(ray_cluster.dashboard_url)
    assert client.get_job_status(job_id) == JobStatus.SUCCEEDED
    assert client.get_job_info(job_id).metadata.get("raytf_run") == "digits"
    # Coming back to it: `raytf logs` (the newest raytf job, or by id), `raytf attach` of an ended job.
    newest = CliRunner().invoke(cli.app, ["logs"])
    assert newest.exit_code == 0 and job_id in newest.output and "final training loss" in newest.output, newest.output
    attached = CliRunner().invoke(cli.app, ["attach", job_id])
    assert attached.exit_code == 0 and "SUCCEEDED" in attached.output and "[raytf] step 10/10" in attached.output
    typo = CliRunner().invoke(cli.app, ["logs", job_id[:-1] + "x"])
    assert typo.exit_code == 2 and f"Did you mean {job_id}?" in typo.output, typo.output
    # Submitted with the token over HTTP, its driver connected with the inherited one: neither the output,
    # raytf's files nor Ray's session logs (the job's driver log included) hold the token.
    from tests.cluster.test_security import files_holding

    token = Path(ray_cluster.token_path).read_text().strip()
    assert token not in result.output
    assert files_holding(raytf_home, token) == [] and files_holding(workdir, token) == []
    assert files_holding(Path(ray_cluster.temp_dir), token) == []


# `raytf train` on a recorded KubeRay cluster (port-forward, token from the Secret, runtime_env, placement
# overrides) runs for real against the fake API server in
# tests/cluster/kuberay/test_kuberay_runtime_env.py::test_cli_train_on_a_recorded_kuberay_cluster.


def test_kuberay_placement_requests_the_resources_the_manifest_offers():
    from raytf.cluster.kuberay.manifest import PLACEMENT_OVERRIDES, render_raycluster
    from raytf.cluster.kuberay.specfile import load_cluster_spec
    from raytf.config import config_from_dict
    from tests.conftest import ROOT

    config = {"model": "a:b", "data": {"train": "a:c"}, "loss": "mse",
              "distribution": {"worker_resources": {"num_cpus": 1, "resources": {"accelerator_x": 1}}}}
    cfg = config_from_dict(config, PLACEMENT_OVERRIDES)
    assert cfg.distribution.ps_resources.resources == {"raytf_ps": 1}
    assert cfg.distribution.worker_resources.resources == {"accelerator_x": 1, "raytf_worker": 1}  # merged, not replaced
    manifest = render_raycluster(load_cluster_spec(ROOT / "cluster-configs" / "kuberay-gpu.yaml"))
    offered = {g["groupName"]: g["rayStartParams"].get("resources", "") for g in manifest["spec"]["workerGroupSpecs"]}
    assert any("raytf_ps" in r and "raytf_worker" not in r for r in offered.values()), offered
    assert any("raytf_worker" in r and "raytf_ps" not in r for r in offered.values()), offered
    assert "raytf_" not in str(manifest["spec"]["headGroupSpec"]["rayStartParams"])


@pytest.mark.slow
def test_kuberay_token_and_py_modules_on_a_real_ray_head(ray_cluster, workdir):
    """A real Ray 2.60 head behind the fake Kubernetes API server's port-forward: it accepts the token
    raytf reads from the (fake) operator's Secret and refuses a wrong one, and `py_modules` with the local
    raytf package directory makes the job's driver import the uploaded copy, not this checkout."""
    import asyncio
    from urllib.parse import urlparse

    from kubernetes import client as k8s
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobStatus, JobSubmissionClient

    from raytf.cluster.kuberay.auth import bearer
    from raytf.cluster.kuberay.client import KubeClient
    from raytf.cluster.kuberay.manifest import render_raycluster
    from raytf.cluster.kuberay.portforward import forward_dashboard
    from raytf.cluster.kuberay.runtime_env import job_runtime_env
    from raytf.cluster.kuberay.specfile import load_cluster_spec
    from raytf.cluster.kuberay.token import cluster_token
    from tests.cluster.kuberay.fake_apiserver import FakeApiServer

    spec = load_cluster_spec(REPO / "cluster-configs" / "kuberay-shared-storage.yaml")
    token = Path(ray_cluster.token_path).read_text().strip()
    with FakeApiServer(auth_token=token) as fake, k8s.ApiClient(k8s.Configuration(host=fake.url)) as api:
        fake.forward_to = urlparse(ray_cluster.dashboard_url).port
        fake.forward_idle_timeout = 180  # the log stream idles while the job's runtime_env is set up
        fake.add_cluster(render_raycluster(spec), ready=True)
        kube = KubeClient(api)
        headers = bearer(cluster_token(kube, spec.name, spec.namespace))
        with forward_dashboard(kube, spec.name, spec.namespace) as forward:
            # Control: this process has the cluster's token in RAY_AUTH_* too, but an explicit header wins.
            with pytest.raises(AuthenticationError):
                JobSubmissionClient(forward.url, headers={"Authorization": "Bearer not-the-token"})
            client = JobSubmissionClient(forward.url, headers=headers)
            job_id = client.submit_job(
                entrypoint="python -c 'import raytf; print(\"RAYTF_FROM\", raytf.__file__)'",
                # As raytf submits: a working_dir (the job's cwd, here without raytf) plus py_modules; pip would need PyPI.
                runtime_env={"working_dir": str(workdir), "py_modules": job_runtime_env(spec)["py_modules"]},
            )

            async def logs() -> str:
                return "".join([chunk async for chunk in client.tail_job_logs(job_id)])

            text = asyncio.run(asyncio.wait_for(logs(), timeout=180))
            status = client.get_job_status(job_id)
    print(text)
    assert status == JobStatus.SUCCEEDED, text
    (line,) = [l for l in text.splitlines() if l.startswith("RAYTF_FROM ")]
    imported = Path(line.split(" ", 1)[1])
    assert imported.name == "__init__.py" and imported.parent.name == "raytf"
    assert REPO not in imported.parents  # the uploaded copy, not the editable install of this checkout
    assert imported.parents[2].name == "py_modules_files"  # Ray's directory of unpacked py_modules packages
