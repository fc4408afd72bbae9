"""TensorBoard event files, written by the driver only (not by every actor).

Scalars go to `output_dir/tensorboard/`: `train/loss`, `train/samples_per_second`,
`train/staleness_mean` (async) at the slowest worker's step, and `eval/<metric>` at the last step.
"""

from __future__ import annotations

from pathlib import Path


class TensorBoardLog:
    def __init__(self, logdir: Path) -> None:
        import tensorflow as tf

        self._tf = tf
        self.logdir = logdir
        self._writer = None  # created with the first scalar: a run that fails before training leaves no file
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
        if self._writer is None:
            self._writer = self._tf.summary.create_file_writer(str(self.logdir))
        with self._writer.as_default():
            for name, value in scalars.items():
                self._tf.summary.scalar(name, value, step=step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
