"""`raytf train` as a Ray Job on a real local cluster (the session's `ray_cluster`).

The job's working directory is a small temp copy holding only `examples/` and the configs;
raytf itself comes from the cluster's Python (it is installed there).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from rich.console import Console

from raytf.errors import ClusterError
from raytf.jobs import job_entrypoint, submit_training_job

REPO = Path(__file__).resolve().parents[1]

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
def test_submitted_run_succeeds_and_streams_its_output(ray_cluster, workdir, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    console, log = _console(tmp_path)
    out_dir = tmp_path / "out"
    code = submit_training_job(
        ray_cluster.dashboard_url, str(workdir / "examples" / "digits.yaml"),
        ["steps=30", f"output_dir={out_dir}"], working_dir=str(workdir), console=console,
    )
    console.file.close()
    text = log.read_text()
    print(text)
    assert code == 0, text
    assert "[raytf] step 30/30" in text
    assert "raytf summary" in text and "final training loss" in text
    assert (out_dir / "summary.json").is_file()
    job_id = next(line.split()[3] for line in text.splitlines() if line.startswith("Submitted Ray job"))
    assert job_id.startswith("raytf-digits-")
    assert f"{ray_cluster.dashboard_url}/#/jobs/{job_id}" in text
    client = JobSubmissionClient(ray_cluster.dashboard_url)
    assert client.get_job_status(job_id) == JobStatus.SUCCEEDED
    assert client.get_job_info(job_id).metadata.get("raytf_run") == "digits"


@pytest.mark.slow
def test_failing_job_returns_2(ray_cluster, workdir, tmp_path):
    console, log = _console(tmp_path)
    code = submit_training_job(
        ray_cluster.dashboard_url, str(workdir / "examples" / "digits.yaml"),
        ["steps=5", "data.train=failing_data:train_examples", f"output_dir={tmp_path / 'out'}"],
        working_dir=str(workdir), console=console,
    )
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
    from typer.testing import CliRunner

    from raytf import cli
    from raytf.state import save_cluster_record

    save_cluster_record(ray_cluster.record())
    monkeypatch.chdir(workdir)
    result = CliRunner().invoke(cli.app, ["train", "examples/digits.yaml", "--submit", "--set", "steps=10"])
    assert result.exit_code == 0, result.output
    assert "Submitted Ray job raytf-digits-" in result.output and "[raytf] step 10/10" in result.output
    assert (workdir / "runs" / "digits" / "summary.json").is_file()  # relative output_dir: resolved here


def test_cli_on_kuberay_always_submits_through_the_port_forward(raytf_home, workdir, monkeypatch):
    from typer.testing import CliRunner

    from raytf import cli, jobs
    from raytf.kuberay import commands as kuberay

    calls = []
    monkeypatch.setattr(cli, "_recorded_provider", lambda: "kuberay")
    monkeypatch.setattr(kuberay, "dashboard", lambda spec, *, until, **kw: until("http://127.0.0.1:45678"))
    monkeypatch.setattr(jobs, "submit_training_job", lambda url, config, overrides, **kw: calls.append((url, config, overrides, kw["working_dir"])) or 2)
    monkeypatch.chdir(workdir)
    result = CliRunner().invoke(cli.app, ["train", "examples/digits.yaml", "--set", "steps=10"])
    assert result.exit_code == 2, result.output
    from raytf.kuberay.manifest import PLACEMENT_OVERRIDES

    assert calls == [("http://127.0.0.1:45678", "examples/digits.yaml", [*PLACEMENT_OVERRIDES, "steps=10"], str(workdir))]


def test_kuberay_placement_requests_the_resources_the_manifest_offers():
    from raytf.config import config_from_dict
    from raytf.kuberay.manifest import PLACEMENT_OVERRIDES, render_raycluster
    from raytf.kuberay.specfile import load_cluster_spec
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
