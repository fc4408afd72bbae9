"""`data.train` and `data.eval` as the driver and the workers use them, whether a function that returns a
`tf.data.Dataset` or a file spec (raytf.data.files).

The driver opens them (`open_train`, `open_eval`: files listed and counted, the function checked) and
hands each worker a `DataPlan`, from which every worker reads its own share the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from raytf.config import FileSpec, TrainConfig
from raytf.data.epochs import FileBatches, passes_steps, read_ahead
from raytf.data.files import FileLayout, discover

NO_WEIGHTS = np.ones(0, np.float32)  # the step's weights argument of a batch whose rows all count


@dataclass(frozen=True)
class DataPlan:
    """What a worker needs to read its share of data.train: the files (None: data.train is a function),
    and the steps of a pass in which each worker reads every row of its share once (None: the share
    is read as a continuous stream, as many steps as the run has)."""

    layout: FileLayout | None = None
    steps_per_pass: int | None = None


class TrainData:
    """data.train for one run: `first_batch` and `shard_rows` on the driver, `batches` on a worker."""

    def __init__(self, config: TrainConfig, plan: DataPlan | None = None) -> None:
        self.config = config
        spec = config.data.train
        self.layout = (plan.layout if plan is not None and plan.layout is not None
                       else discover(spec, "data.train") if isinstance(spec, FileSpec) else None)
        self.fn = None
        if self.layout is None:
            from raytf.config.imports import resolve_callable

            self.fn = resolve_callable(spec, "data.train")

    def dataset(self, worker: int, workers: int):
        from raytf.data.datasets import train_dataset

        return train_dataset(self.fn, worker, workers)

    def first_batch(self, worker: int, workers: int, batch_size: int):
        """(features, labels) of the first `batch_size` examples of the worker's share."""
        if self.layout is not None:
            return FileBatches(self.layout, worker, workers, self.config, 1).first_batch(batch_size)
        from raytf.data.datasets import first_batch

        return first_batch(self.dataset(worker, workers), batch_size, "data.train")

    def shard_rows(self, workers: int) -> list[int] | None:
        """Rows in each worker's share; None when a function's datasets do not know their size."""
        if self.layout is not None:
            return self.layout.shard_rows(workers)
        counts = [int(self.dataset(w, workers).cardinality()) for w in range(workers)]
        return None if any(c < 0 for c in counts) else counts  # tf.data.UNKNOWN/INFINITE_CARDINALITY

    def plan(self, workers: int, shard_rows: list[int] | None) -> DataPlan:
        """How the workers read: in passes over files always, over a function's datasets for epochs whose
        length the data decides (`shard_rows`: rows per worker, None when unknown or not asked)."""
        if self.layout is None and (self.config.epochs is None or shard_rows is None):
            return DataPlan()
        steps = passes_steps(shard_rows, self.config.batch_size)
        if self.layout is None and self.config.steps_per_epoch not in (None, steps):
            return DataPlan()  # epochs of the steps the user gave: a continuous stream
        return DataPlan(self.layout, steps)

    def batches(self, worker: int, workers: int, plan: DataPlan) -> Iterator:
        """The worker's training batches for ever: (features, labels) or, in passes, (features, labels, weights)."""
        if self.layout is not None:
            steps = plan.steps_per_pass or passes_steps(self.layout.shard_rows(workers), self.config.batch_size)
            return read_ahead(FileBatches(self.layout, worker, workers, self.config, steps).passes())
        from raytf.data.datasets import batch_stream, batches

        dataset = self.dataset(worker, workers)
        if plan.steps_per_pass is None:
            return batch_stream(batches(dataset, self.config, worker))
        rows = int(dataset.cardinality())
        return batch_stream(padded_dataset(dataset, rows, plan.steps_per_pass, self.config, worker))


def padded_dataset(dataset, rows: int, steps: int, config: TrainConfig, seed_offset: int):
    """Passes over `dataset` (of `rows` examples) as `steps` batches of (features, labels, weights), the
    last filled with weightless copies of the first example; reshuffled every pass where shuffle_buffer."""
    import tensorflow as tf

    shuffled = dataset
    if config.data.shuffle_buffer:
        shuffled = dataset.shuffle(config.data.shuffle_buffer, seed=config.seed + seed_offset, reshuffle_each_iteration=True)
    weighted = shuffled.map(lambda x, y: (x, y, tf.constant(1.0)))
    fill = dataset.take(1).map(lambda x, y: (x, y, tf.constant(0.0))).repeat(steps * config.batch_size - rows)
    return weighted.concatenate(fill).batch(config.batch_size, drop_remainder=True).repeat().prefetch(2)


class EvalData:
    """data.eval: its first batch (checked on the driver) and its batches for `model.evaluate`."""

    def __init__(self, config: TrainConfig) -> None:
        spec = config.data.eval
        self.layout = discover(spec, "data.eval") if isinstance(spec, FileSpec) else None
        self.fn = None
        if self.layout is None:
            from raytf.config.imports import resolve_callable

            self.fn = resolve_callable(spec, "data.eval")

    def first_batch(self, batch_size: int):
        if self.fn is None:
            return _file_first(self.layout, batch_size)
        from raytf.data.datasets import first_batch

        return first_batch(self.dataset(), batch_size, "data.eval")

    def dataset(self):
        """Every example once, in order, as a tf.data.Dataset of (features, labels)."""
        if self.fn is not None:
            from raytf.data.datasets import eval_dataset

            return eval_dataset(self.fn)
        import tensorflow as tf

        layout = self.layout
        features, labels = _file_first(layout, 1)
        signature = tf.nest.map_structure(lambda a: tf.TensorSpec((None, *a.shape[1:]), tf.as_dtype(a.dtype)),
                                          (features, labels))
        blocks = tf.data.Dataset.from_generator(lambda: _file_blocks(layout), output_signature=signature)
        # Its size known, Keras's evaluate does not take the end of the data for a shortage.
        return blocks.unbatch().apply(tf.data.experimental.assert_cardinality(layout.rows))


def _file_blocks(layout: FileLayout) -> Iterator[tuple[Any, np.ndarray]]:
    names = [c.name for c in layout.features]
    for piece in layout.shard(0, 1):
        for block in layout.read(piece):
            yield (block[names[0]] if len(names) == 1 else {n: block[n] for n in names}), block[layout.label.name]


def _file_first(layout: FileLayout, batch_size: int):
    for features, labels in _file_blocks(layout):
        return (features[:batch_size] if isinstance(features, np.ndarray) else
                {k: v[:batch_size] for k, v in features.items()}), labels[:batch_size]
    from raytf.errors import ConfigError

    raise ConfigError(f"{layout.key}: the files hold no rows.", "Point paths at files with data.")

