"""A server's checkpoint shards: a periodic one is written by the writer thread while training goes
on, one at a time; the run's last one before `write` returns; a failed write is raised, not lost."""

import threading

import numpy as np
import pytest

from raytf.exchange.shard_state import ShardState, ShardWriter, step_dir, write_shard


def state(version: int, value: float) -> ShardState:
    return ShardState(np.full(16, value, np.float32), version=version)


def params_at(root, version: int) -> np.ndarray:
    with np.load(step_dir(root, version) / "ps-0.npz") as data:
        return data["params"]


def test_a_periodic_shard_is_written_in_the_background_and_the_next_one_waits_for_it(tmp_path):
    release, started = threading.Event(), threading.Event()
    seen = []  # per write: its version, and the shards the writer had recorded when it began

    def slow_write(directory, index, shard):  # a slow disk: the first write holds until the test lets it go
        seen.append((shard.version, set(writer.saved)))
        started.set()
        assert release.wait(60)
        return write_shard(directory, index, shard)

    writer = ShardWriter(0, write=slow_write)
    writer.write(step_dir(tmp_path, 2), state(2, 1.0), last=False)  # returns while the file is not written
    assert started.wait(60)
    writer.collect(wait=False)
    assert writer.saved == {} and not (step_dir(tmp_path, 2) / "ps-0.npz").exists()
    release.set()
    writer.write(step_dir(tmp_path, 4), state(4, 2.0), last=False)
    writer.write(step_dir(tmp_path, 10), state(10, 3.0), last=True)  # the last: written when write returns
    assert seen == [(2, set()), (4, {2}), (10, {2, 4})], "each write began after the one before was recorded"
    assert set(writer.saved) == {2, 4, 10}
    assert [float(params_at(tmp_path, v)[0]) for v in (2, 4, 10)] == [1.0, 2.0, 3.0]
    writer.close()


def test_a_failed_background_write_is_kept_for_collect_and_stops_later_writes(tmp_path):
    """Not raised by the next `write` (a push on a doorbell or wire thread, where nobody would see it:
    the run rolled back to the checkpoint before and failed at the same one, for ever) but by
    `collect`, the driver's statistics call; no checkpoint is written after it."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the checkpoint directory should be")
    writer = ShardWriter(0)
    writer.write(blocker / "step-00000002", state(2, 1.0), last=False)
    writer.write(step_dir(tmp_path, 4), state(4, 1.0), last=False)
    writer.write(step_dir(tmp_path, 6), state(6, 1.0), last=True)
    assert writer.saved == {} and not step_dir(tmp_path, 4).exists() and not step_dir(tmp_path, 6).exists()
    with pytest.raises(OSError):
        writer.collect(wait=False)
    with pytest.raises(OSError):
        writer.reset()  # a rollback after it still ends the run with it
    writer.close()


def test_reset_finishes_the_write_under_way_and_forgets_every_shard(tmp_path):
    writer = ShardWriter(0)
    writer.write(step_dir(tmp_path, 2), state(2, 1.0), last=False)
    writer.reset()
    assert writer.saved == {} and (step_dir(tmp_path, 2) / "ps-0.npz").exists()
    writer.close()
