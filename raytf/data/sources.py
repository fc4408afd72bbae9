"""`data.train` and `data.eval` as the driver and the workers use them, whether a function that returns a
`tf.data.Dataset`, files (raytf.data.files) or a Ray Data dataset (raytf.data.ray_data).

The driver opens them (`TrainData`, `EvalData`: files listed and counted, the function checked, the Ray
Data dataset sampled and counted) and hands each worker a `DataPlan`, from which every worker reads its
own share the same way.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Iterator, Protocol

import numpy as np

from raytf.config import DataSpec, TrainConfig
from raytf.data.epochs import PREFETCH_BATCHES, FileBatches, model_inputs, passes_steps, read_ahead, with_ragged_tensors
from raytf.data.files import FileLayout, discover, holds_strings
from raytf.data.ray_data import RayDataInput, RayShare
from raytf.errors import ConfigError
from raytf.data.ray_data import passes as ray_passes

NO_WEIGHTS = np.ones(0, np.float32)  # the step's weights argument of a batch whose rows all count


@dataclass(frozen=True)
class DataPlan:
    """What a worker needs to read its share of data.train: the files, or the Ray Data splits (both None:
    data.train is a function), and the steps of a pass in which each worker reads every row of its share
    once (None: the share is read as a continuous stream, as many steps as the run has)."""

    layout: FileLayout | None = None
    steps_per_pass: int | None = None
    ray: RayShare | None = None  # set by the driver once the workers exist (their nodes are the split's hints)


class FeatureTransform(Protocol):
    """What a worker does to the features before its step sees them (raytf.replica.key_inputs.KeyTransform:
    string keys hashed, ragged lists padded), in a dataset's graph and per batch of numpy arrays."""

    def dataset(self, batches): ...

    def batches(self, batches: Iterator) -> Iterator: ...


class TrainData:
    """data.train for one run: `first_batch` and `shard_rows` on the driver, `batches` on a worker."""

    def __init__(self, config: TrainConfig, plan: DataPlan | None = None) -> None:
        self.config = config
        spec = config.data.train
        self.share = plan.ray if plan is not None else None  # a worker's Ray Data split
        ray_data = isinstance(spec, DataSpec) and spec.format == "ray_data"
        self.ray = RayDataInput(spec, "data.train") if ray_data and self.share is None else None  # the driver's
        self.layout = (plan.layout if plan is not None and plan.layout is not None
                       else discover(spec, "data.train") if isinstance(spec, DataSpec) and not ray_data else None)
        self.fn = None
        if self.layout is None and not ray_data:
            from raytf.config.imports import resolve_callable

            self.fn = resolve_callable(spec, "data.train")
        self._datasets: dict[tuple[int, int], Any] = {}

    def dataset(self, worker: int, workers: int):
        """The function's dataset for `worker`: called once (the first batch, the size and the batches
        all read that one)."""
        if (worker, workers) not in self._datasets:
            from raytf.data.datasets import train_dataset

            self._datasets[worker, workers] = train_dataset(self.fn, worker, workers)
        return self._datasets[worker, workers]

    def first_batch(self, worker: int, workers: int, batch_size: int):
        """(features, labels) of the first `batch_size` examples of the worker's share (Ray Data: of the
        dataset, read on the driver: a worker's split is read only to train)."""
        if self.share is not None:
            return self.share.sample
        if self.ray is not None:
            return self.ray.first_batch(batch_size)
        if self.layout is not None:
            return FileBatches(self.layout, worker, workers, self.config, 1).first_batch(batch_size)
        from raytf.data.datasets import first_batch

        return first_batch(self.dataset(worker, workers), batch_size, "data.train")

    def shard_rows(self, workers: int) -> list[int] | None:
        """Rows in each worker's share; None when a function's datasets do not know their size."""
        if self.ray is not None:
            return self.ray.shard_rows(workers)
        if self.layout is not None:
            return self.layout.shard_rows(workers)
        counts = [int(self.dataset(w, workers).cardinality()) for w in range(workers)]
        return None if any(c < 0 for c in counts) else counts  # tf.data.UNKNOWN/INFINITE_CARDINALITY

    def plan(self, workers: int, shard_rows: list[int] | None) -> DataPlan:
        """How the workers read: in passes over files always, over a function's datasets for epochs whose
        length the data decides (`shard_rows`: rows per worker, None when unknown or not asked)."""
        if (self.ray is not None or self.layout is not None) and min(shard_rows) == 0:
            raise ConfigError(f"data.train has {sum(shard_rows)} row(s) for {workers} workers: a worker would read "
                              "nothing.", "Use fewer workers (distribution.workers), or more data.")
        if self.ray is not None:
            return DataPlan(steps_per_pass=passes_steps(shard_rows, self.config.batch_size))
        if self.layout is None and (self.config.epochs is None or shard_rows is None):
            return DataPlan()
        steps = passes_steps(shard_rows, self.config.batch_size)
        if self.layout is None and self.config.steps_per_epoch not in (None, steps):
            return DataPlan()  # epochs of the steps the user gave: a continuous stream
        return DataPlan(self.layout, steps)

    def batches(self, worker: int, workers: int, plan: DataPlan,
                transform: FeatureTransform | None = None) -> Iterator:
        """The worker's training batches for ever: (features, labels) or, in passes, (features, labels, weights);
        with `transform` applied where the data is read (in the read-ahead thread, or the dataset's graph)."""
        batch_map = transform.batches if transform is not None else (lambda batches: batches)
        if self.share is not None:
            return read_ahead(batch_map(ray_passes(self.share, worker, self.config, plan.steps_per_pass)),
                              depth=_ray_depth(self.share.sample, plan.steps_per_pass))
        if self.layout is not None:
            return read_ahead(batch_map(FileBatches(self.layout, worker, workers, self.config, plan.steps_per_pass).passes()))
        from raytf.data.datasets import batch_stream, batches

        dataset = self.dataset(worker, workers)
        if plan.steps_per_pass is None:
            stream = batches(dataset, self.config, worker)
        else:
            stream = padded_dataset(dataset, int(dataset.cardinality()), plan.steps_per_pass, self.config, worker)
        if transform is not None:  # on whole batches: one op each, in the dataset's threads
            stream = transform.dataset(stream).prefetch(2)
        return batch_map(batch_stream(stream))


RAY_AHEAD_BYTES = 256 * 2**20


def _ray_depth(sample, steps_per_pass: int) -> int:
    """Batches to read ahead of a Ray Data split: two passes, within RAY_AHEAD_BYTES. A split's epoch starts
    only when every split's does, and each start is a new execution of the dataset (~0.2-0.3 s here, as
    long as a pass of the click model trains); read that far ahead, the next pass is under way while this
    one trains."""
    import tensorflow as tf

    batch_bytes = max(1, sum(np.asarray(a).nbytes for a in tf.nest.flatten(sample)))  # the sample is a batch
    return int(max(PREFETCH_BATCHES, min(2 * steps_per_pass, RAY_AHEAD_BYTES // batch_bytes)))


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
        self.config = config
        spec = config.data.eval
        ray_data = isinstance(spec, DataSpec) and spec.format == "ray_data"
        self.ray = RayDataInput(spec, "data.eval") if ray_data else None  # opened by the driver once connected
        self.layout = discover(spec, "data.eval") if isinstance(spec, DataSpec) and not ray_data else None
        self.fn = None
        if self.layout is None and not ray_data:
            from raytf.config.imports import resolve_callable

            self.fn = resolve_callable(spec, "data.eval")

    def first_batch(self, batch_size: int):
        if self.ray is not None:
            return self.ray.first_batch(batch_size)
        if self.fn is None:
            return FileBatches(self.layout, 0, 1, self.config, 1).first_batch(batch_size)
        from raytf.data.datasets import first_batch

        return first_batch(self.dataset(), batch_size, "data.eval")

    def dataset(self):
        """Every example once, in order, as a tf.data.Dataset of (features, labels)."""
        if self.fn is not None:
            from raytf.data.datasets import eval_dataset

            return eval_dataset(self.fn)
        import tensorflow as tf

        if self.ray is not None:  # a function making the generator, as from_generator takes it
            read, rows = self.ray.blocks, self.ray.rows
        else:
            read, rows = functools.partial(_file_blocks, self.layout), self.layout.rows
        first = self.first_batch(1)
        signature = tf.nest.map_structure(_spec, first)
        blocks = tf.data.Dataset.from_generator(read, output_signature=signature)
        # Its size known, Keras's evaluate does not take the end of the data for a shortage.
        return blocks.unbatch().apply(tf.data.experimental.assert_cardinality(rows))


def _spec(values):
    """The tf.data spec of a batch's column: a ragged tensor's, or a dense one's with any number of rows."""
    import tensorflow as tf

    if isinstance(values, tf.RaggedTensor):
        return tf.RaggedTensorSpec((None, None), values.dtype, ragged_rank=1, row_splits_dtype=values.row_splits.dtype)
    return tf.TensorSpec((None, *values.shape[1:]), tf.string if holds_strings(values) else tf.as_dtype(values.dtype))


def _file_blocks(layout: FileLayout) -> Iterator[tuple[Any, np.ndarray]]:
    names = [c.name for c in layout.features]
    for piece in layout.shard(0, 1):
        for block in layout.read(piece):
            features, labels = model_inputs(block, names, layout.label.name)
            yield with_ragged_tensors(features), labels

