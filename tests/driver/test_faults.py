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
import time

import pytest

tf = pytest.importorskip("tensorflow")

import raytf  # noqa: E402
from raytf.driver.restarts import AFTER_WORK, ENDED, REJOINED  # noqa: E402
from raytf.errors import TrainingError  # noqa: E402
from tests.driver.test_training import digits_config, live_actor_names, scrape_raytf_metrics  # noqa: E402

pytestmark = pytest.mark.slow

STEPS = 300
EVERY = 50


def fault_config(tmp_path, name: str, **overrides) -> dict:
    config = digits_config(tmp_path, name=name, steps=STEPS, **overrides)
    config["checkpoint"] = {"every_steps": EVERY, "keep": 2}
    return config


class KillAt:
    """A progress reporter that SIGKILLs one actor's process once training passes `step` (and, with
    `after`, once an event containing that text was seen; with `at_event`, at that event already if
    the last report had passed `step`: no report may follow). It returns once Ray shows the death,
    so the driver is certain to learn of it, whenever it looks."""

    def __init__(self, run_name: str, role: str, index: int, step: int, after: str | None = None,
                 at_event: bool = False) -> None:
        self.run_name, self.role, self.index, self.step = run_name, role, index, step
        self.waiting_for = after
        self.at_event = at_event
        self.run_id = None
        self.reported = 0  # the step of the last report
        self.killed_at = None

    def on_event(self, message: str) -> None:
        match = re.match(r"Run (\S+):", message)
        if match:
            self.run_id = match.group(1)
        if self.waiting_for is not None and self.waiting_for in message:
            self.waiting_for = None
            if self.at_event:
                self._kill_if_due()

    def update(self, snapshot) -> None:
        self.reported = snapshot.step
        self._kill_if_due()

    def actor(self):
        import ray

        from raytf.driver.actors import actor_name

        return ray.get_actor(actor_name(self.run_name, self.role, self.index), namespace=f"raytf-{self.run_id}")

    def _kill_if_due(self) -> None:
        import ray

        from raytf.driver.groups import actor_state

        if self.killed_at is None and self.waiting_for is None and self.reported >= self.step:
            actor = self.actor()
            pid = ray.get(actor.process_id.remote())
            restarts, _ = actor_state(actor)
            os.kill(pid, signal.SIGKILL)
            self.killed_at = self.reported
            deadline = time.monotonic() + 60
            while actor_state(actor) == (restarts, "ALIVE"):
                assert time.monotonic() < deadline, f"Ray did not notice in 60 s that {self.role} {self.index} died"
                time.sleep(0.05)  # polling the GCS until it shows the death


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


class Both:
    """Two progress reporters in one."""

    def __init__(self, *reporters) -> None:
        self.reporters = reporters

    def update(self, snapshot) -> None:
        for reporter in self.reporters:
            reporter.update(snapshot)


def test_a_killed_server_rolls_back_and_a_killed_worker_is_restarted_and_the_run_ends_like_a_clean_one(
        ray_cluster, tmp_path, clean_accuracy):
    """Server 1 of 2 is killed at step 130: the run rolls back to the last checkpoint. Once that is done,
    worker 1 is killed at step 200: it is restarted and costs no rollback; the survivor goes on meanwhile.
    (One run for both, one fault at a time: a run costs ~20 s here.)"""
    # Frequent reports: each kill lands near its step (300 steps take ~3 s), not after the run's end. 600
    # steps: the restarted worker must live past Ray's metrics export (2 s here) for its restart to be
    # counted in the dashboard; with 300, a machine that ran the last 100 steps in under a second ended
    # the run before (the worker's counter never appeared, 2 runs of 3).
    steps = 2 * STEPS
    config = fault_config(tmp_path, "kill-both", log_every_seconds=0.25, **{"distribution.parameter_servers": 2})
    config["steps"] = steps
    server_killer = KillAt("kill-both", "ps", 1, step=130)
    worker_killer = KillAt("kill-both", "worker", 1, step=200, after="every server rolls back")
    events = []

    def on_event(message: str) -> None:
        events.append(message)
        worker_killer.on_event(message)
        server_killer.on_event(message)

    summary = raytf.fit(config, address=ray_cluster.gcs_address, progress=Both(server_killer, worker_killer),
                        on_event=on_event)
    # The server.
    assert server_killer.killed_at is not None
    # The worker.
    assert worker_killer.killed_at is not None, events
    assert any("Worker 1 was lost" in m for m in events)
    assert sorted((r["role"], r["index"]) for r in summary["restarts"]) == [("ps", 1), ("worker", 1)], events
    (rollback,) = summary["rollbacks"]  # a worker's loss costs no rollback: the one there is the server's
    assert rollback["servers_lost"] == [1]
    # Back to the newest checkpoint both servers had written: the kill lands at the first report past step
    # 130 (every 0.25 s; on a loaded machine the steps run ahead of it), and a step-150 checkpoint the dead
    # server had not finished is no checkpoint (the 20-run loop saw at 151, to 100 once).
    assert rollback["to_step"] % EVERY == 0 and 0 <= rollback["at_step"] - rollback["to_step"] < 2 * EVERY
    assert rollback["to_step"] >= (server_killer.killed_at // EVERY - 1) * EVERY
    assert [s["version"] for s in summary["per_server"]] == [steps, steps]  # both servers ended at the same step
    assert summary["eval"]["accuracy"] >= clean_accuracy - 0.01, (summary["eval"], clean_accuracy)
    assert live_actor_names(ray_cluster) == []
    # The restarted processes count themselves in the dashboard's metrics, too.
    scrape_raytf_metrics(ray_cluster, run="kill-both", wanted={"ray_raytf_restarts_total"})
    # Each process exports on its own schedule: one of the two counters can be seen before the other.
    expected, deadline = {("worker", "1"): 1.0, ("ps", "1"): 1.0}, time.monotonic() + 60
    while restarts_exported(ray_cluster, "kill-both") != expected and time.monotonic() < deadline:
        time.sleep(2)
    assert restarts_exported(ray_cluster, "kill-both") == expected


def test_ctrl_c_writes_a_checkpoint_and_resume_finishes_the_run(ray_cluster, tmp_path, clean_accuracy):
    """The interrupted run runs with --verbose, which lets through what the quiet run holds back, from the
    actors too (they print with a "(Worker(...) pid=N)" prefix); on a machine without a GPU every process
    prints its CUDA probe. (That check of tests/cli/test_cli_train.py rides on this run: a run costs ~20 s.)"""
    import yaml

    from raytf.cluster.local import auth_env
    from raytf.observe.native_logs import is_native_log_line

    path = tmp_path / "digits.yaml"
    steps = 1000  # 300 steps of digits end in ~3 s now: the interrupt would come after the end
    config = fault_config(tmp_path, "interrupt")
    config["steps"] = steps
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k not in ("RAYTF_VERBOSE", "TF_CPP_MIN_LOG_LEVEL")}
    env.update(auth_env(ray_cluster), PYTHONUNBUFFERED="1")
    errors = (tmp_path / "stderr.txt").open("w+")  # a file, not a pipe: the verbose lines could fill a pipe unread
    process = subprocess.Popen(
        [sys.executable, "-m", "raytf.cli", "train", str(path), "--address", ray_cluster.gcs_address, "--plain",
         "--verbose"],
        stdout=subprocess.PIPE, stderr=errors, text=True, env=env, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    before = []
    for line in process.stdout:
        before.append(line)
        match = re.search(r"step (\d+)/", line)
        if match and int(match.group(1)) >= 80:
            process.send_signal(signal.SIGINT)
            break
    stdout, _ = process.communicate(timeout=300)
    errors.seek(0)
    stderr = errors.read()
    errors.close()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    native = [line for line in ("".join(before) + stdout + stderr).splitlines() if is_native_log_line(line)]
    assert any("pid=" not in line for line in native), "the driver's own native lines are missing"
    assert any("Worker(" in line for line in native), "the workers' native lines are missing"
    stopped = int(re.search(rf"Stopped at step (\d+) of {steps}; the checkpoint is in", stderr).group(1))
    assert 80 < stopped < steps
    assert f"raytf train {path} --resume" in " ".join(stderr.split())
    manifest = json.loads((tmp_path / "run" / "checkpoints" / f"step-{stopped:08d}" / "manifest.json").read_text())
    assert manifest["step"] == stopped
    assert not (tmp_path / "run" / "model.keras").exists()
    assert live_actor_names(ray_cluster) == []

    summary = raytf.fit(path, address=ray_cluster.gcs_address, resume=True)
    assert summary["resumed_from_step"] == stopped
    assert summary["per_server"][0]["version"] == steps
    assert summary["per_server"][0]["pushes"] == 2 * (steps - stopped)  # only the remaining steps were trained
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
    pytest.param("kill-backup", {"mode": "sync", "backup_workers": 1}, id="sync-backup"),
    pytest.param("kill-ssp", {"mode": "ssp", "staleness_bound": 1}, id="ssp"),
    pytest.param("kill-async", {"mode": "async"}, id="async"),
])
def test_a_killed_worker_blocks_nobody_under_any_policy(ray_cluster, tmp_path, clean_accuracy, name, distribution):
    """The survivor goes on while the killed worker restarts (the bound and the quorum count live
    workers only), and the restarted worker is admitted back. Once it is back and every step is
    trained, it is killed again: that death, after its work was done, is recorded as well (the
    driver may have no call pending to it any more; Ray's restart count tells). Two restarts are
    within the default max_restarts of 3. (One run for both kills: a run costs ~20 s here.)"""
    config = fault_config(tmp_path, name, log_every_seconds=0.25)  # frequent reports: the first kill lands mid-run
    config["distribution"].update(distribution)
    # 900 steps: with 300, a machine that trained them (sync, 1 backup worker) before the first report
    # past step 60 killed the worker only at the end, once in CI.
    steps = config["steps"] = 3 * STEPS
    mid_run = KillAt(name, "worker", 1, step=60)
    at_end = KillAt(name, "worker", 1, step=steps, after="Worker 1 rejoined", at_event=True)
    events = []

    def on_event(message: str) -> None:
        events.append(message)
        mid_run.on_event(message)
        at_end.on_event(message)

    summary = raytf.fit(config, address=ray_cluster.gcs_address, progress=Both(mid_run, at_end), on_event=on_event)
    assert mid_run.killed_at is not None and mid_run.killed_at < steps, events
    assert at_end.killed_at is not None and at_end.killed_at >= steps, events
    first, second = summary["restarts"]
    # Its run call failed: it rejoined (the step is where the driver noticed: Ray fails the call a second or
    # two after the kill, and the survivor may have trained every step by then).
    assert (first["role"], first["index"], first["recovery"]) == ("worker", 1, REJOINED), summary["restarts"]
    assert first["step"] >= 60
    assert (second["role"], second["index"], second["step"]) == ("worker", 1, steps), summary["restarts"]
    lost = [m for m in events if m.startswith("Worker 1 was lost")]
    assert len(lost) == 2, events  # each death announced once
    if "after its work was done" in lost[1]:
        # Its run had returned (it rejoined after the others had trained every step, or finished with them):
        # Ray's restart count told. Back, or still coming back, when the driver looked last: either is so.
        assert second["recovery"] in (AFTER_WORK, ENDED), summary["restarts"]
    else:
        # It had rejoined while the others trained and was killed before its run returned: the call failed.
        assert second["recovery"] == REJOINED, (summary["restarts"], events)
    assert summary["rollbacks"] == []
    assert summary["updates"] == steps * (1 if distribution["mode"] == "sync" else 2)
    assert [w["index"] for w in summary["per_worker"]] == [0, 1]  # the restarted worker trained to the end
    # The clean run is sync; an async or ssp run applies the same number of gradients in an order no
    # two runs share, and lands up to ~0.02 away without any fault (the eval set is 360 examples: one
    # is 0.0028). 0.03: a run that lost the killed worker's work would be far below.
    assert summary["eval"]["accuracy"] >= clean_accuracy - (0.02 if distribution["mode"] == "sync" else 0.03), (
        summary["eval"], clean_accuracy)
    assert (tmp_path / "run" / "model.keras").exists()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["restarts"] == summary["restarts"]
    assert live_actor_names(ray_cluster) == []


class BlockCheckpoint:
    """A progress reporter that puts a plain file where a coming checkpoint is to go, so the server's
    writer thread fails to create that directory (a full or broken disk, in effect). The checkpoint
    is chosen from the first step it sees, `ahead` intervals on: a step ~10 ms, and reports every
    0.2 s, the one at `every` may be written already."""

    def __init__(self, root, every: int, ahead: int = 5) -> None:
        self.root, self.every, self.ahead = root, every, ahead
        self.step = None  # the checkpoint blocked

    def update(self, snapshot) -> None:
        if snapshot.step >= 1 and self.step is None:
            self.step = (snapshot.step // self.every + self.ahead) * self.every
            path = self.root / "checkpoints" / f"step-{self.step:08d}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("in the way")


def test_a_checkpoint_file_the_server_cannot_write_fails_the_run_with_its_error(ray_cluster, tmp_path):
    """The server writes a periodic checkpoint in a thread of its own; its failure is not lost
    there: the run ends with a TrainingError that names it (and no actor is left)."""
    config = digits_config(tmp_path, name="ckpt-fail", steps=400, batch_size=32, log_every_seconds=0.2)
    config["checkpoint"] = {"every_steps": 20, "keep": 2}
    blocker = BlockCheckpoint(tmp_path / "run", 20)
    with pytest.raises(TrainingError, match="FileExistsError|File exists") as err:
        raytf.fit(config, address=ray_cluster.gcs_address, progress=blocker)
    assert blocker.step is not None and blocker.step < 400  # it blocked one the run was still to write
    assert f"step-{blocker.step:08d}" in str(err.value)
    assert live_actor_names(ray_cluster) == []


class KillAll:
    """Kills every worker of a run at once (their node went) once training passes `step`, and
    returns once Ray shows every death."""

    def __init__(self, run_name: str, workers: int, step: int) -> None:
        self.kills = [KillAt(run_name, "worker", index, step) for index in range(workers)]

    def on_event(self, message: str) -> None:
        for kill in self.kills:
            kill.on_event(message)

    def update(self, snapshot) -> None:
        import ray

        from raytf.driver.groups import actor_state

        if snapshot.step < self.kills[0].step or self.kills[0].killed_at is not None:
            return
        actors = [kill.actor() for kill in self.kills]
        before = [actor_state(actor) for actor in actors]
        for actor in actors:
            os.kill(ray.get(actor.process_id.remote()), signal.SIGKILL)
        for kill in self.kills:
            kill.killed_at = snapshot.step
        deadline = time.monotonic() + 60
        while any(actor_state(actor) == state for actor, state in zip(actors, before)):
            assert time.monotonic() < deadline, "Ray did not notice in 60 s that the workers died"
            time.sleep(0.05)


def test_every_worker_of_a_sync_run_killed_at_once_rejoins_without_a_rollback(ray_cluster, tmp_path, clean_accuracy):
    """Both workers lost together: nobody is left to finish the round in flight, nor the one before
    the rejoiners' first; those pass empty and the restarted workers train to the end."""
    config = fault_config(tmp_path, "kill-all", log_every_seconds=0.25)
    steps = config["steps"] = 3 * STEPS
    kill = KillAll("kill-all", 2, step=60)
    summary = raytf.fit(config, address=ray_cluster.gcs_address, progress=kill, on_event=kill.on_event)
    assert kill.kills[0].killed_at is not None and kill.kills[0].killed_at < steps
    assert sorted((r["role"], r["index"], r["recovery"]) for r in summary["restarts"]) == [
        ("worker", 0, REJOINED), ("worker", 1, REJOINED)], summary["restarts"]
    assert summary["rollbacks"] == []
    # Up to two rounds passed empty (the one in flight and the one before the rejoiners' first).
    assert steps - 2 <= summary["updates"] <= steps, summary["updates"]
    assert summary["eval"]["accuracy"] >= clean_accuracy - 0.02, (summary["eval"], clean_accuracy)
    assert live_actor_names(ray_cluster) == []
