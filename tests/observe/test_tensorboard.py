"""TensorBoard events from the driver: readable by TensorBoard itself, and never the end of a run."""

from __future__ import annotations

from raytf.observe.progress import Snapshot
from raytf.observe.tensorboard import TensorBoardLog


def snapshot(step: int, loss: float = 1.0, staleness: float | None = None) -> Snapshot:
    return Snapshot(step=step, total=10, loss=loss, samples_per_second=100.0 * step, elapsed=1.0, staleness_mean=staleness)


def read_scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    import numpy as np
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    events = EventAccumulator(str(logdir))
    events.Reload()
    return {tag: [(e.step, float(np.asarray(tensor_util.make_ndarray(e.tensor_proto)))) for e in events.Tensors(tag)]
            for tag in events.Tags()["tensors"]}


def test_scalars_read_back_as_tensorboard_sees_them(tmp_path):
    log = TensorBoardLog(tmp_path / "tb")
    log.update(snapshot(1, loss=2.0, staleness=0.5))
    log.update(snapshot(1, loss=9.0))  # the same step again: one point per step
    log.update(snapshot(3, loss=1.0, staleness=1.5))
    log.evaluation({"accuracy": 0.75}, 3)
    log.close()
    scalars = read_scalars(tmp_path / "tb")
    assert scalars["train/loss"] == [(1, 2.0), (3, 1.0)]
    assert scalars["train/samples_per_second"] == [(1, 100.0), (3, 300.0)]
    assert scalars["train/staleness_mean"] == [(1, 0.5), (3, 1.5)]
    assert scalars["eval/accuracy"] == [(3, 0.75)]


def test_a_run_that_logs_nothing_leaves_no_event_file(tmp_path):
    log = TensorBoardLog(tmp_path / "tb")
    log.close()
    assert not (tmp_path / "tb").exists()


def test_a_failing_event_file_warns_once_and_training_goes_on(tmp_path):
    blocked = tmp_path / "tb"
    blocked.write_text("a file where the log directory should be")
    warnings = []
    log = TensorBoardLog(blocked, on_event=warnings.append)
    for step in (1, 2, 3):
        log.update(snapshot(step))  # must not raise
    log.evaluation({"accuracy": 0.5}, 3)
    log.close()
    assert len(warnings) == 1, warnings
    assert str(blocked) in warnings[0] and "training goes on" in warnings[0]
