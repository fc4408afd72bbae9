"""Faults injected into real runs: SIGKILLed workers and parameter servers, Ctrl-C on the CLI,
non-finite gradients. Each run trains digits on the shared local cluster; the faulted runs must
end like a clean run of the same config (eval accuracy within one point)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest

tf = pytest.importorskip("tensorflow")

import raytf  # noqa: E402
from raytf.errors import TrainingError  # noqa: E402
from tests.test_training import digits_config, live_actor_names, scrape_raytf_metrics  # noqa: E402

pytestmark = pytest.mark.slow

STEPS = 300
EVERY = 50


def fault_config(tmp_path, name: str, **overrides) -> dict:
    config = digits_config(tmp_path, name=name, steps=STEPS, **overrides)
    config["checkpoint"] = {"every_steps": EVERY, "keep": 2}
    return config


class KillAt:
    """A progress reporter that SIGKILLs one actor's process once training passes `step`."""

    def __init__(self, run_name: str, role: str, index: int, step: int) -> None:
        self.run_name, self.role, self.index, self.step = run_name, role, index, step
        self.run_id = None
        self.killed_at = None

    def on_event(self, message: str) -> None:
        match = re.match(r"Run (\S+):", message)
        if match:
            self.run_id = match.group(1)

    def update(self, snapshot) -> None:
        import ray

        from raytf.actors import actor_name

        if self.killed_at is None and snapshot.step >= self.step:
            actor = ray.get_actor(actor_name(self.run_name, self.role, self.index), namespace=f"raytf-{self.run_id}")
            os.kill(ray.get(actor.process_id.remote()), signal.SIGKILL)
            self.killed_at = snapshot.step


def restarts_exported(cluster, run: str) -> dict[tuple[str, str], float]:
    """(role, index) -> value of raytf_restarts on the node's Prometheus endpoint, for `run`."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{cluster.metrics_port}/metrics", timeout=10) as response:
        body = response.read().decode()
    found = {}
    for labels, value in re.findall(r'^ray_raytf_restarts_total\{([^}]*)\}\s+(\S+)', body, re.M):
        tags = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if tags.get("run") == run and float(value) > 0:
            found[(tags["role"], tags["index"])] = float(value)
    return found


@pytest.fixture(scope="module")
def clean_accuracy(ray_cluster, tmp_path_factory) -> float:
    """Eval accuracy of an uninterrupted run of the config the faulted runs use."""
    summary = raytf.fit(fault_config(tmp_path_factory.mktemp("clean"), "clean"), address=ray_cluster.gcs_address)
    assert summary["restarts"] == [] and summary["rollbacks"] == []
    return summary["eval"]["accuracy"]


def test_a_killed_worker_is_restarted_and_the_run_ends_like_a_clean_one(ray_cluster, tmp_path, clean_accuracy):
    killer = KillAt("kill-worker", "worker", 1, step=60)
    events = []
    summary = raytf.fit(fault_config(tmp_path, "kill-worker"), address=ray_cluster.gcs_address, progress=killer,
                        on_event=lambda m: (events.append(m), killer.on_event(m)))
    assert killer.killed_at is not None
    assert [(r["role"], r["index"]) for r in summary["restarts"]] == [("worker", 1)], events
    assert summary["rollbacks"] == []  # a worker's loss costs no rollback
    assert summary["per_server"][0]["version"] == STEPS
    assert any("Worker 1 was lost" in m for m in events)
    assert summary["eval"]["accuracy"] >= clean_accuracy - 0.01, (summary["eval"], clean_accuracy)
    assert live_actor_names(ray_cluster) == []
    # The restarted process counts itself in the dashboard's metrics, too.
    scrape_raytf_metrics(ray_cluster, run="kill-worker", wanted={"ray_raytf_restarts_total"})
    assert restarts_exported(ray_cluster, "kill-worker") == {("worker", "1"): 1.0}


def test_a_killed_server_rolls_back_to_the_last_checkpoint(ray_cluster, tmp_path, clean_accuracy):
    config = fault_config(tmp_path, "kill-ps", **{"distribution.parameter_servers": 2})
    killer = KillAt("kill-ps", "ps", 1, step=130)
    summary = raytf.fit(config, address=ray_cluster.gcs_address, progress=killer, on_event=killer.on_event)
    assert killer.killed_at is not None
    assert [(r["role"], r["index"]) for r in summary["restarts"]] == [("ps", 1)]
    (rollback,) = summary["rollbacks"]
    assert rollback["servers_lost"] == [1]
    assert rollback["to_step"] % EVERY == 0 and 0 <= rollback["at_step"] - rollback["to_step"] <= EVERY
    assert [s["version"] for s in summary["per_server"]] == [STEPS, STEPS]  # both servers ended at the same step
    assert summary["eval"]["accuracy"] >= clean_accuracy - 0.01, (summary["eval"], clean_accuracy)
    assert live_actor_names(ray_cluster) == []
    scrape_raytf_metrics(ray_cluster, run="kill-ps", wanted={"ray_raytf_restarts_total"})
    assert restarts_exported(ray_cluster, "kill-ps") == {("ps", "1"): 1.0}


def test_ctrl_c_writes_a_checkpoint_and_resume_finishes_the_run(ray_cluster, tmp_path, clean_accuracy):
    import yaml

    from raytf.local_cluster import auth_env

    path = tmp_path / "digits.yaml"
    path.write_text(yaml.safe_dump(fault_config(tmp_path, "interrupt")))
    env = {**os.environ, **auth_env(ray_cluster), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "raytf.cli", "train", str(path), "--address", ray_cluster.gcs_address, "--plain"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    for line in process.stdout:
        match = re.search(r"step (\d+)/", line)
        if match and int(match.group(1)) >= 80:
            process.send_signal(signal.SIGINT)
            break
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    stopped = int(re.search(r"Stopped at step (\d+) of 300; the checkpoint is in", stderr).group(1))
    assert 80 < stopped < STEPS
    assert f"raytf train {path} --resume" in " ".join(stderr.split())
    manifest = json.loads((tmp_path / "run" / "checkpoints" / f"step-{stopped:08d}" / "manifest.json").read_text())
    assert manifest["step"] == stopped
    assert not (tmp_path / "run" / "model.keras").exists()
    assert live_actor_names(ray_cluster) == []

    summary = raytf.fit(path, address=ray_cluster.gcs_address, resume=True)
    assert summary["resumed_from_step"] == stopped
    assert summary["per_server"][0]["version"] == STEPS
    assert summary["per_server"][0]["pushes"] == 2 * (STEPS - stopped)  # only the remaining steps were trained
    assert summary["eval"]["accuracy"] >= clean_accuracy - 0.01, (summary["eval"], clean_accuracy)


def test_non_finite_gradients_are_skipped_and_counted(ray_cluster, tmp_path):
    events = []
    config = fault_config(tmp_path, "nan-skip", **{"data.train": "tests.badinput.nan_data:train_examples",
                                                   "data.shuffle_buffer": 0})
    summary = raytf.fit(config, address=ray_cluster.gcs_address, on_event=events.append)
    # Shard 1 has 719 examples: 11 batches of 64 per pass, one of them holds the NaN.
    passes = STEPS // 11
    assert passes <= summary["nonfinite_skipped"] <= passes + 1
    assert any("non-finite gradient" in m for m in events)
    assert summary["eval"]["accuracy"] >= 0.9  # the skipped pushes did not poison the parameters


def test_non_finite_gradient_with_abort_names_the_step_and_worker(ray_cluster, tmp_path):
    config = fault_config(tmp_path, "nan-abort", **{"data.train": "tests.badinput.nan_data:train_examples",
                                                    "data.shuffle_buffer": 0})
    config["on_nonfinite"] = "abort"
    with pytest.raises(TrainingError, match=r"worker 1: the gradient of step 2 is not finite.*on_nonfinite"):
        raytf.fit(config, address=ray_cluster.gcs_address)
    assert live_actor_names(ray_cluster) == []


@pytest.mark.parametrize("name, distribution", [
    pytest.param("kill-ssp", {"mode": "ssp", "staleness_bound": 1}, id="ssp"),
    pytest.param("kill-backup", {"mode": "sync", "backup_workers": 1}, id="sync-backup"),
])
def test_a_killed_worker_blocks_nobody_under_any_policy(ray_cluster, tmp_path, clean_accuracy, name, distribution):
    """The survivor goes on while the killed worker restarts (the bound and the quorum count live
    workers only), and the restarted worker is admitted back."""
    config = fault_config(tmp_path, name)
    config["distribution"].update(distribution)
    killer = KillAt(name, "worker", 1, step=60)
    summary = raytf.fit(config, address=ray_cluster.gcs_address, progress=killer, on_event=killer.on_event)
    assert killer.killed_at is not None
    assert [(r["role"], r["index"]) for r in summary["restarts"]] == [("worker", 1)]
    assert summary["rollbacks"] == []
    assert summary["updates"] == STEPS * (2 if distribution["mode"] == "ssp" else 1)
    assert [w["index"] for w in summary["per_worker"]] == [0, 1]  # the restarted worker trained to the end
    assert summary["eval"]["accuracy"] >= clean_accuracy - 0.02, (summary["eval"], clean_accuracy)
    assert live_actor_names(ray_cluster) == []
