"""Checkpoints on disk: round trip, resharding, refusal of another model or optimizer, damaged
files, pruning, a SIGKILL in the middle of a write, and `raytf train --resume/--restart` errors."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from raytf.driver.checkpoints import build_manifest, complete, latest, load, prune, write_manifest
from raytf.errors import ConfigError, TrainingError
from raytf.exchange.shard_state import ShardState, root_of, step_dir, write_shard
from raytf.exchange.sharding import VariableSpec, plan_shards
from tests.badinput.helpers import GOOD_YAML, write
from tests.cli.test_cli_errors import assert_clean_error, home, run  # noqa: F401  (home: autouse fixture)

REPO = Path(__file__).resolve().parents[2]
VARIABLES = [VariableSpec("w1", (5, 3)), VariableSpec("b1", (3,)), VariableSpec("w2", (3, 2)), VariableSpec("b2", (2,))]


def save(root: Path, plan, step: int, optimizer: str = "adam", seed: int = 0) -> list[ShardState]:
    rng = np.random.default_rng(seed + step)

    def values(shard, draw):  # a server's buffer: the variables' values, zero padding between them
        return shard.pack(shard.parts(draw(shard.size).astype(np.float32)))

    states = [ShardState(params=values(s, rng.standard_normal),
                         slots={"m": values(s, rng.standard_normal), "v": values(s, rng.random)},
                         iterations=step, version=step)
              for s in plan.shards]
    directory = step_dir(root, step)
    saved = [write_shard(directory, j, state) for j, state in enumerate(states)]
    write_manifest(directory, build_manifest(step, plan, saved, mode="sync", updates_per_step=1, optimizer=optimizer,
                                             run_id="test"))
    return states


def per_variable(plan, states: list[ShardState], key: str) -> list[np.ndarray]:
    values = [None] * len(plan.variables)
    for shard, state in zip(plan.shards, states):
        flat = state.params if key == "params" else state.slots[key]
        for i, offset, size in zip(shard.variables, shard.offsets, shard.sizes):
            values[i] = flat[offset:offset + size]
    return values


def test_round_trip_restores_parameters_slots_and_step(tmp_path):
    plan = plan_shards(VARIABLES, 2)
    saved = save(root_of(tmp_path), plan, step=40)
    restored = load(latest(root_of(tmp_path)), plan, "adam", updates_per_step=1)
    for before, after in zip(saved, restored):
        np.testing.assert_array_equal(before.params, after.params)
        assert set(after.slots) == {"m", "v"}
        np.testing.assert_array_equal(before.slots["v"], after.slots["v"])
        assert (after.iterations, after.version) == (40, 40)


@pytest.mark.parametrize("servers", [1, 3, 4])
def test_a_checkpoint_restores_into_another_number_of_servers(tmp_path, servers):
    old, new = plan_shards(VARIABLES, 2), plan_shards(VARIABLES, servers)
    saved = save(root_of(tmp_path), old, step=10)
    restored = load(latest(root_of(tmp_path)), new, "adam", updates_per_step=2)
    assert len(restored) == servers and restored[0].version == 20  # async: versions per step = workers
    for key in ("params", "m", "v"):
        for a, b in zip(per_variable(old, saved, key), per_variable(new, restored, key)):
            np.testing.assert_array_equal(a, b)


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    save(root_of(tmp_path), plan_shards(VARIABLES, 1), step=5)
    other = plan_shards([VariableSpec("w1", (5, 4)), *VARIABLES[1:]], 1)
    with pytest.raises(ConfigError, match=r"different model.*\[5, 3\].*\[5, 4\]") as info:
        load(latest(root_of(tmp_path)), other, "adam", 1)
    assert "--resume" in info.value.fix


def test_a_checkpoint_of_another_optimizer_is_refused(tmp_path):
    save(root_of(tmp_path), plan_shards(VARIABLES, 1), step=5)
    with pytest.raises(ConfigError, match=r"optimizer 'adam'.*'sgd'") as info:
        load(latest(root_of(tmp_path)), plan_shards(VARIABLES, 1), "sgd", 1)
    assert "optimizer.name: adam" in info.value.fix


def test_a_shard_that_does_not_match_its_checksum_is_refused(tmp_path):
    plan = plan_shards(VARIABLES, 2)
    root = root_of(tmp_path)
    save(root, plan, step=5)
    stray = save(tmp_path / "elsewhere", plan, step=5, seed=1)  # a valid file with other values
    (step_dir(root, 5) / "ps-1.npz").write_bytes((step_dir(tmp_path / "elsewhere", 5) / "ps-1.npz").read_bytes())
    assert stray
    with pytest.raises(TrainingError, match=r"ps-1.npz does not match its checksum") as info:
        load(latest(root), plan, "adam", 1)
    assert "fall back" in info.value.fix


def test_incomplete_checkpoints_are_ignored_and_pruned(tmp_path):
    plan = plan_shards(VARIABLES, 2)
    root = root_of(tmp_path)
    for step in (10, 20, 30):
        save(root, plan, step)
    write_shard(step_dir(root, 25), 0, ShardState(params=np.zeros(plan.shards[0].size, np.float32)))  # no manifest
    write_shard(step_dir(root, 40), 0, ShardState(params=np.zeros(plan.shards[0].size, np.float32)))
    assert [c.step for c in complete(root)] == [10, 20, 30] and latest(root).step == 30
    removed = prune(root, keep=2)
    assert sorted(p.name for p in removed) == ["step-00000010", "step-00000025"]
    # The newer incomplete one may still be in the making (a server writes before the manifest).
    assert sorted(p.name for p in root.iterdir()) == ["step-00000020", "step-00000030", "step-00000040"]


def test_sigkill_during_a_write_leaves_the_previous_checkpoint_whole(tmp_path):
    from tests.driver.checkpoint_writer import PLAN, state_at

    for attempt in range(3):  # the kill lands at a different point of a write each time
        out = tmp_path / f"attempt-{attempt}"
        process = subprocess.Popen([sys.executable, "-m", "tests.driver.checkpoint_writer", str(out)], cwd=REPO,
                                   stdout=subprocess.PIPE, text=True)
        written = [int(process.stdout.readline()) for _ in range(2 + attempt)]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        newest = latest(root_of(out))
        assert newest is not None and newest.step >= written[-1]
        restored = load(newest, PLAN, "adam", 1)
        for j, state in enumerate(restored):
            expected = state_at(newest.step, j)
            np.testing.assert_array_equal(state.params, expected.params)
            np.testing.assert_array_equal(state.slots["m"], expected.slots["m"])


# -- raytf train --resume / --restart (errors before any cluster) -----------------------------

def config_file(tmp_path: Path, steps: int = 100) -> Path:
    return write(tmp_path, GOOD_YAML + f"steps: {steps}\noutput_dir: {tmp_path / 'run'}\n", "train.yaml")


def test_resume_without_a_checkpoint(tmp_path):
    result = run("train", str(config_file(tmp_path)), "--resume")
    assert_clean_error(result, "--resume: there is no complete checkpoint in", str(tmp_path / "run" / "checkpoints"),
                       fix=("output_dir",))


def test_resume_with_a_checkpoint_of_another_model(tmp_path):
    save(root_of(tmp_path / "run"), plan_shards(VARIABLES, 1), step=5)
    result = run("train", str(config_file(tmp_path)), "--resume")
    assert_clean_error(result, "is of a different model", "step-00000005", fix=("--resume",))


def test_resume_with_nothing_left_to_train(tmp_path):
    from raytf.config import load_config
    from raytf.driver.prepare import prepare

    plan = prepare(load_config(config_file(tmp_path, steps=50))).plan
    save(root_of(tmp_path / "run"), plan, step=50)
    result = run("train", str(config_file(tmp_path, steps=50)), "--resume")
    assert_clean_error(result, "is at step 50, and steps is 50", fix=("--set steps=100",))


def test_a_fresh_start_over_existing_checkpoints_is_refused(tmp_path):
    save(root_of(tmp_path / "run"), plan_shards(VARIABLES, 1), step=5)
    result = run("train", str(config_file(tmp_path)))
    assert_clean_error(result, "holds checkpoints of an earlier run (newest: step 5)", fix=("--resume", "--restart"))
    assert latest(root_of(tmp_path / "run")).step == 5  # nothing was deleted


def test_resume_and_restart_together(tmp_path):
    result = run("train", str(config_file(tmp_path)), "--resume", "--restart")
    assert_clean_error(result, "--resume and --restart contradict each other")


# -- signals -----------------------------------------------------------------------------------

@pytest.mark.parametrize("first", [signal.SIGINT, signal.SIGTERM])
def test_the_first_signal_asks_to_stop_and_the_second_quits(first):
    import os
    import threading

    from raytf.driver.signals import stop_on_signals

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    stop = threading.Event()
    with stop_on_signals(stop):
        os.kill(os.getpid(), first)
        assert stop.wait(timeout=5), "the first signal must only ask to stop"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            stop.wait(timeout=5)  # the handler raises here, at the latest
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_a_checkpoint_from_before_the_aligned_layout_still_restores(tmp_path):
    """Checkpoints written before variables were 64-byte aligned laid them end to end and name no offsets."""
    import json

    plan = plan_shards(VARIABLES, 1)
    assert plan.shards[0].offsets != (0, 15, 18, 24)  # the aligned layout differs from the old one here
    values = [np.full(v.size, k + 1, np.float32) for k, v in enumerate(VARIABLES)]
    old = np.concatenate(values)
    directory = step_dir(root_of(tmp_path), 10)
    saved = [write_shard(directory, 0, ShardState(params=old, slots={"m": old * 2, "v": old * 3}, iterations=10,
                                                  version=10))]
    manifest = build_manifest(10, plan, saved, mode="sync", updates_per_step=1, optimizer="adam", run_id="old")
    for entry in manifest["shards"]:
        del entry["offsets"]
    write_manifest(directory, manifest)
    (restored,) = load(latest(root_of(tmp_path)), plan, "adam", updates_per_step=1)
    for got, want in zip(per_variable(plan, [restored], "params"), values):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(per_variable(plan, [restored], "v"), values):
        np.testing.assert_array_equal(got, want * 3)
    assert json.loads((directory / "manifest.json").read_text())["shards"][0].get("offsets") is None
