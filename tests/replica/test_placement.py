"""Which cores a worker is pinned to: the rule, and pinning a real process."""

import os
import subprocess
import sys

import pytest

from raytf.replica.placement import cores_for, node_ranks


def test_workers_get_cores_of_their_own_only_where_they_fit_in_the_cores_ray_counts():
    cores = {0, 1, 2, 3}
    assert [cores_for(r, 4, 1, 4, cores) for r in range(4)] == [(0,), (1,), (2,), (3,)]
    assert [cores_for(r, 2, 2, 4, cores) for r in range(2)] == [(0, 1), (2, 3)]  # two CPUs each
    assert cores_for(0, 2, 0.5, 4, {6, 9}) == (6,)  # a fraction of a CPU still gets a core; the allowed ones, sorted
    assert cores_for(0, 5, 1, 4, cores) == ()  # more workers than cores: the kernel places them
    assert cores_for(0, 2, 1, 2, set(range(64))) == ()  # 64 cores allowed, Ray counts 2 (a quota): not ours to pin
    assert cores_for(0, 1, 1, 4, set()) == ()


def test_node_ranks_count_the_workers_of_each_node():
    assert node_ranks(["a", "b", "a", "a", "b"]) == [(0, 3), (0, 2), (1, 3), (2, 3), (1, 2)]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux affinity and two cores")
def test_a_pinned_process_and_the_threads_it_starts_later_run_on_its_core():
    core = max(os.sched_getaffinity(0))
    code = (
        "import os, threading\n"
        "from raytf.replica.placement import pin_process\n"
        "early = threading.Event(); threading.Thread(target=early.wait, daemon=True).start()\n"
        f"print(pin_process(({core},)))\n"
        "seen = []\n"
        "t = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0))); t.start(); t.join()\n"
        "tasks = [os.sched_getaffinity(int(t)) for t in os.listdir('/proc/self/task')]\n"
        "print(sorted(seen[0]), all(mask == {%d} for mask in tasks))\n" % core
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == f"({core},)"
    assert out[1] == f"[{core}] True"


def test_pin_workers_off_pins_nothing():
    from raytf.config import config_from_dict
    from raytf.replica.placement import pin_as_configured

    cfg = config_from_dict({"model": "examples.digits:build_model", "data": {"train": "examples.digits:train_examples"},
                            "loss": "sparse_categorical_crossentropy"})
    assert cfg.distribution.pin_workers == "off"
    assert pin_as_configured(cfg.distribution, 0, 1, 64) == ()
