"""TensorBoard event files, written by the driver only (not by every actor).

Scalars go to `output_dir/tensorboard/`: `train/loss`, `train/samples_per_second`,
`train/staleness_mean` (async, ssp) at the slowest worker's step, and `eval/<metric>` at the last step.

The events are written with the `tensorboard` package's own record writer, in the format
`tf.summary.scalar` writes (a float tensor tagged for the scalars plugin), so the driver needs no
TensorFlow op to log a number. Logging is a by-product of training: if writing fails (disk full,
a file where the directory should be), one warning is printed and training goes on without it.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Callable


class TensorBoardLog:
    def __init__(self, logdir: Path, on_event: Callable[[str], None] = lambda message: None) -> None:
        self.logdir = logdir
        self._on_event = on_event
        self._records = None  # opened with the first scalar: a run that fails before training leaves no file
        self._failed = False
        self._last_step = 0

    def update(self, snapshot) -> None:
        if snapshot.step <= self._last_step:
            return  # one point per step: the monitor can see the same step twice
        self._last_step = snapshot.step
        scalars = {"train/loss": snapshot.loss, "train/samples_per_second": snapshot.samples_per_second}
        if snapshot.staleness_mean is not None:
            scalars["train/staleness_mean"] = snapshot.staleness_mean
        self._write(scalars, snapshot.step)

    def evaluation(self, results: dict[str, float], step: int) -> None:
        self._write({f"eval/{name}": value for name, value in results.items()}, step)

    def _write(self, scalars: dict[str, float], step: int) -> None:
        if self._failed or not scalars:
            return
        try:
            if self._records is None:
                self._records = _open_event_file(self.logdir)
            for name, value in scalars.items():
                self._records.write(_scalar_event(name, float(value), step).SerializeToString())
            self._records.flush()
        except (OSError, ImportError) as error:
            self._failed = True
            self._on_event(f"Warning: cannot write TensorBoard events to {self.logdir} ({error}); "
                           "training goes on without them.")

    def close(self) -> None:
        if self._records is not None:
            try:
                self._records.close()
            except OSError:
                pass  # already warned, or nothing left to lose


def _open_event_file(logdir: Path):
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    logdir.mkdir(parents=True, exist_ok=True)
    now = time.time()
    path = logdir / f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}.0.v2"
    records = RecordWriter(open(path, "wb"))
    records.write(Event(wall_time=now, file_version="brain.Event:2").SerializeToString())
    return records


def _scalar_event(tag: str, value: float, step: int):
    """What `tf.summary.scalar` writes: a float32 scalar tensor tagged for the scalars plugin."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.types_pb2 import DT_FLOAT

    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="scalars"))
    tensor = TensorProto(dtype=DT_FLOAT, float_val=[value])
    return Event(wall_time=time.time(), step=step,
                 summary=Summary(value=[Summary.Value(tag=tag, tensor=tensor, metadata=metadata)]))
