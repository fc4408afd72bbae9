"""The warm pool (raytf.pool) on a real local cluster: runs take its processes and give them back
clean, a process killed between runs or mid-run is replaced, a run that fails or whose driver is
killed returns no broken process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import raytf
from tests.driver.test_training import digits_config

pytestmark = pytest.mark.slow
POOL = 3  # a server and two workers: digits_config's run


@pytest.fixture(scope="module")
def pool(ray_cluster):
    """A warm pool of POOL processes on the shared cluster, removed after this module (the other
    tests' runs start their actors afresh)."""
    from raytf.pool.start import ensure_pool, wait_until_warm

    with _driver(ray_cluster):
        ensure_pool(POOL)
        assert wait_until_warm() == POOL
    yield ray_cluster
    with _driver(ray_cluster):
        import ray

        from raytf.pool.lease import pool_hosts

        for host in pool_hosts().values():
            ray.kill(host, no_restart=True)


def _driver(cluster):
    from raytf.cluster.connection import connect

    return connect(cluster.gcs_address)


def hosts(cluster, leftovers: bool = True) -> dict[str, dict]:
    """Every pool host's state and (idle hosts only) its leftovers, by name (waits for a restarting one)."""
    import ray

    from raytf.pool.lease import pool_hosts

    def answer(method):
        deadline = time.monotonic() + 120
        while True:
            try:
                return ray.get(method.remote(), timeout=120)
            except ray.exceptions.ActorUnavailableError:  # killed just now: Ray is starting it again
                assert time.monotonic() < deadline
                time.sleep(0.2)

    with _driver(cluster):
        found = pool_hosts()
        return {name: {**answer(h.state), **(answer(h.leftovers) if leftovers else {})} for name, h in found.items()}


def assert_clean(found: dict[str, dict], memory: bool = False) -> None:
    """No object, thread or module of past runs in any host; with `memory`, RSS within 10 % of idle too. (After
    many different runs a process's caches, TensorFlow's compiled kernels among them, may pass that bound: the
    host then exits by itself and is replaced, which the memory check of a long series would race with.)"""
    for name, host in found.items():
        assert host["taken_by"] is None, name
        assert (host["variables"], host["keras_objects"], host["roles"], host["tensors"]) == (0, 0, 0, 0), (name, host)
        assert host["threads"] == [] and host["run_modules"] == [] and host["mappings"] == [], (name, host)
        if memory:
            assert host["rss"] <= 1.10 * host["idle_rss"], (name, host["rss"] / 2**20, host["idle_rss"] / 2**20)


def test_two_models_back_to_back_in_the_same_pool_processes_leave_nothing_behind(pool, tmp_path):
    import ray

    with _driver(pool):  # idle, the pool holds no CPU in Ray's accounting
        assert ray.available_resources().get("CPU") == ray.cluster_resources()["CPU"] == 2
    before = hosts(pool)
    big = digits_config(tmp_path / "big", name="pool-big", steps=5, **{"model": "tests.pool.big_model:build_model"})
    summary = raytf.fit(big, address=pool.gcs_address)
    assert summary["warm_pool"] == {"hosted": 3, "fresh": 0} and summary["steps"] == 5
    after_big = hosts(pool)
    assert {n: h["pid"] for n, h in after_big.items()} == {n: h["pid"] for n, h in before.items()}  # reused, not replaced
    assert_clean(after_big, memory=True)
    # A different model and mode in the same processes trains as it does on fresh actors.
    small = digits_config(tmp_path / "small", name="pool-small", steps=800, **{"distribution.mode": "async"})
    summary = raytf.fit(small, address=pool.gcs_address)
    assert summary["warm_pool"] == {"hosted": 3, "fresh": 0} and summary["eval"]["accuracy"] > 0.9
    after_small = hosts(pool)
    assert {n: h["pid"] for n, h in after_small.items()} == {n: h["pid"] for n, h in before.items()}
    assert_clean(after_small, memory=True)
    assert all(h["runs"] == before[n]["runs"] + 2 for n, h in after_small.items())


def test_a_run_larger_than_the_pool_takes_what_there_is_and_says_so(pool, tmp_path):
    events = []
    config = digits_config(tmp_path, name="pool-larger", steps=20, **{"distribution.parameter_servers": 2})
    summary = raytf.fit(config, address=pool.gcs_address, on_event=events.append)
    assert summary["warm_pool"] == {"hosted": 3, "fresh": 1}
    said = [e for e in events if "warm pool has no idle process" in e]
    assert len(said) == 1 and "1 of the run's 4 actors" in said[0]
    assert_clean(hosts(pool))


def test_a_pool_process_killed_between_runs_is_replaced(pool, tmp_path):
    before = hosts(pool)
    victim = sorted(before)[0]
    os.kill(before[victim]["pid"], signal.SIGKILL)
    after = hosts(pool)  # waits for Ray to bring it back
    assert after[victim]["pid"] != before[victim]["pid"] and after[victim]["runs"] == 0
    summary = raytf.fit(digits_config(tmp_path, name="pool-after-kill", steps=20), address=pool.gcs_address)
    assert summary["warm_pool"] == {"hosted": 3, "fresh": 0}


class KillWorkerHost:
    """A progress reporter that SIGKILLs the pool process playing worker 1 once the run reported `step`."""

    def __init__(self, cluster, step: int) -> None:
        self.cluster, self.step, self.killed = cluster, step, {}

    def update(self, snapshot) -> None:
        if self.killed or snapshot.step < self.step:
            return
        for name, host in hosts(self.cluster, leftovers=False).items():
            if (host["taken_by"] or "").endswith(":worker-1"):
                os.kill(host["pid"], signal.SIGKILL)
                self.killed.update(name=name, pid=host["pid"])

    def close(self) -> None:
        pass


def test_a_worker_killed_mid_run_is_a_restarted_pool_process_that_rejoins(pool, tmp_path):
    config = digits_config(tmp_path, name="pool-fault", steps=20_000, log_every_seconds=0.5,
                           **{"distribution.max_restarts": 2})
    killer = KillWorkerHost(pool, step=100)
    summary = raytf.fit(config, address=pool.gcs_address, progress=killer)
    assert killer.killed, "worker 1's pool process was never killed"
    assert summary["steps"] == 20_000 and summary["warm_pool"] == {"hosted": 3, "fresh": 0}
    assert [(r["role"], r["index"], r["recovery"]) for r in summary["restarts"]] == [("worker", 1, "restarted and rejoined")]
    after = hosts(pool)
    assert after[killer.killed["name"]]["pid"] != killer.killed["pid"]
    assert_clean(after)


def test_a_run_that_fails_midway_returns_no_broken_process(pool, tmp_path):
    from raytf.errors import TrainingError

    config = digits_config(tmp_path, name="pool-fails", steps=200, **{"data.train": "tests.badinput.failing_data:train_examples",
                                                                       "data.shuffle_buffer": 0})
    with pytest.raises(TrainingError, match=r"Worker 1 failed.*shard 1 is corrupt"):
        raytf.fit(config, address=pool.gcs_address)
    assert_clean(hosts(pool))
    summary = raytf.fit(digits_config(tmp_path / "next", name="pool-next", steps=20), address=pool.gcs_address)
    assert summary["warm_pool"] == {"hosted": 3, "fresh": 0}


def test_a_killed_driver_leaves_no_process_taken(pool, tmp_path):
    """`raytf train` killed with SIGKILL mid-run (no clean-up of its own): its hosts see its Ray job end,
    exit, and come back fresh."""
    from raytf.cluster.local import auth_env

    config = tmp_path / "long.yaml"
    import yaml

    config.write_text(yaml.safe_dump(digits_config(tmp_path, name="pool-orphan", steps=200_000)))
    env = {**os.environ, **auth_env(pool)}
    log = tmp_path / "driver.log"
    driver = subprocess.Popen([sys.executable, "-m", "raytf.cli", "train", str(config), "--plain",
                               "--address", pool.gcs_address], env=env, stdout=log.open("w"),
                              stderr=subprocess.STDOUT, cwd=os.getcwd())
    try:
        deadline = time.monotonic() + 120
        taken = {}
        while time.monotonic() < deadline and len(taken) < POOL:
            taken = {n: h["pid"] for n, h in hosts(pool, leftovers=False).items() if h["taken_by"]}
            time.sleep(0.5)
        assert len(taken) == POOL, f"the run never took the pool: {log.read_text()[-3000:]}"
        # `raytf status` sees the run on the pool: its actors' tasks carry the run's names.
        from raytf.cluster.run_status import activity

        while time.monotonic() < deadline:  # task events reach the dashboard within a second or two
            seen = activity(pool.dashboard_url)
            run = seen.runs.get("pool-orphan")
            if run is not None and (run.workers, run.servers) == (2, 1):
                break
            time.sleep(0.5)
        assert (seen.runs["pool-orphan"].workers, seen.runs["pool-orphan"].servers) == (2, 1)
        assert sorted(h.playing for h in seen.pool) == ["raytf:pool-orphan:ps-0", "raytf:pool-orphan:worker-0",
                                                         "raytf:pool-orphan:worker-1"]
    finally:
        driver.kill()
        driver.wait()
        found = _hosts_given_back(pool)  # (also when the run was not seen: the next test needs the pool warm)
    assert all(found[n]["pid"] != pid for n, pid in taken.items())  # each exited and was started afresh
    assert_clean(found)


def _hosts_given_back(pool, seconds: float = 60) -> dict[str, dict]:
    """Every host once none is taken any more (each answers once warm again), with its leftovers."""
    deadline = time.monotonic() + seconds
    while True:
        found = hosts(pool, leftovers=False)
        if all(h["taken_by"] is None for h in found.values()):
            return hosts(pool)
        assert time.monotonic() < deadline, {n: h["taken_by"] for n, h in found.items()}
        time.sleep(0.5)


def test_the_driver_checks_and_saves_the_model_in_the_pool_without_tensorflow(pool, tmp_path):
    """A run on the pool: the model check before training and the final model after it are made by pool
    processes, so the driver never imports TensorFlow; the saved model is the one a driver-made run saves."""
    import json

    import yaml

    config = tmp_path / "digits.yaml"
    config.write_text(yaml.safe_dump(digits_config(tmp_path, name="pool-driver", steps=200)))
    script = ("import json, sys, raytf; s = raytf.fit(sys.argv[1], address=sys.argv[2], on_event=print); "
              "print(json.dumps({'tf': 'tensorflow' in sys.modules, 'pool': s['warm_pool'], "
              "'breakdown': s['startup_breakdown'], 'eval': s['eval']}))")
    from raytf.cluster.local import auth_env

    done = subprocess.run([sys.executable, "-c", script, str(config), pool.gcs_address], capture_output=True, text=True,
                          env={**os.environ, **auth_env(pool)}, cwd=os.getcwd(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["tf"] is False and seen["pool"] == {"hosted": 3, "fresh": 0}, done.stdout[-3000:]
    assert seen["breakdown"]["pool_model_check"] > 0 and seen["breakdown"]["driver_imports"] == 0
    import keras

    model = keras.models.load_model(tmp_path / "run" / "model.keras")
    from examples.digits import eval_examples

    features = next(iter(eval_examples().batch(360)))[0]
    driver_made = raytf.fit(digits_config(tmp_path / "here", name="pool-driver-here", steps=200),
                            address=pool.gcs_address)  # the same run, for the evaluation to compare with
    # Not bit for bit: a pool process keeps the TensorFlow thread count of its first run, which changes sums' order.
    assert abs(seen["eval"]["accuracy"] - driver_made["eval"]["accuracy"]) < 0.02
    assert model.predict(features, verbose=0).shape == (360, 10)
    assert_clean(hosts(pool))


@pytest.mark.parametrize("overrides, error", [
    ({"model": "examples.digits:build_modle"}, r"model: module 'examples.digits' has no attribute 'build_modle'"),
    ({"data.train": "tests.badinput.failing_data:no_such"}, r"data.train: module 'tests.badinput.failing_data' has no attribute"),
])
def test_bad_input_checked_in_the_pool_fails_with_the_driver_s_error_before_training(pool, tmp_path, overrides, error):
    from raytf.errors import ConfigError

    with pytest.raises(ConfigError, match=error):
        raytf.fit(digits_config(tmp_path, name="pool-bad", steps=20, **overrides), address=pool.gcs_address)
    assert not (tmp_path / "run" / "checkpoints").exists()
    found = hosts(pool)
    assert all(h["taken_by"] is None for h in found.values())
    assert_clean(found)


def test_a_submitted_run_takes_the_pool_and_imports_its_code_from_the_job_s_working_dir(pool, tmp_path):
    """`raytf train --submit`: the job's code is uploaded as its working_dir (here a copy of examples/ with a
    model of its own); the pool's processes take the run and import that code from where Ray unpacked it."""
    import json
    import shutil
    from pathlib import Path

    from rich.console import Console

    from raytf.cluster.jobs import submit_training_job

    work = tmp_path / "job"
    shutil.copytree(Path(__file__).resolve().parents[2] / "examples", work / "examples",
                    ignore=shutil.ignore_patterns("__pycache__", "bench*", "benchmark*"))
    (work / "jobs_own_model.py").write_text("from examples.digits import build_model\n")
    out = tmp_path / "out"
    console = Console(file=(tmp_path / "console.txt").open("w"), width=120)
    code = submit_training_job(pool.dashboard_url, str(work / "examples" / "digits.yaml"),
                               ["steps=30", "model=jobs_own_model:build_model", f"output_dir={out}"],
                               working_dir=str(work), console=console)
    console.file.close()
    assert code == 0, (tmp_path / "console.txt").read_text()[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["warm_pool"] == {"hosted": 3, "fresh": 0} and summary["steps"] == 30
    assert summary["startup_breakdown"]["pool_model_check"] > 0
    assert_clean(hosts(pool))  # jobs_own_model and examples.* forgotten

    # On a node where Ray did not unpack the job's working_dir (a KubeRay pod the job's driver is not on), a
    # host unpacks it from the GCS where the run's import paths expect it, before it takes the run.
    import ray
    from ray.job_submission import JobSubmissionClient
    from ray._private.runtime_env.packaging import get_local_dir_from_uri

    from raytf.pool.handles import Lease
    from raytf.pool.host import fingerprint
    from raytf.pool.lease import pool_hosts

    job_id = next(line.split()[3] for line in (tmp_path / "console.txt").read_text().splitlines()
                  if line.startswith("Submitted Ray job"))
    uri = JobSubmissionClient(pool.dashboard_url).get_job_info(job_id).runtime_env["working_dir"]
    elsewhere = get_local_dir_from_uri(uri, str(tmp_path / "other-node" / "working_dir_files"))
    with _driver(pool):
        host = next(iter(pool_hosts().values()))
        lease = Lease(run_id="unpack-1", run_name="unpack", role="worker", index=0, description="",
                      job_id=ray.get_runtime_context().get_job_id(), paths=(str(elsewhere),), working_dir=uri)
        taken = ray.get(host.take.remote(lease, fingerprint()))
        ray.get(host.give_back.remote(lease))
    assert taken is not None and (elsewhere / "jobs_own_model.py").read_text().startswith("from examples.digits")
