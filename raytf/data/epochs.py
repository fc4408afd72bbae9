"""Epochs: passes over the training data in which every worker reads each of its rows once.

A pass is `steps_per_epoch` batches on every worker, so that the workers' passes begin and end at
the same step (a sync round never mixes two). A worker whose rows do not fill its last batch
(or whose share is a row short of another's) fills it with copies of rows already in it, weighted
0: they add nothing to the gradient, and the batches keep their shape (one compiled step). Between
passes the order changes: each worker's pieces of files, and rows within a local buffer, shuffled
by a generator seeded with (seed, worker, pass) - reproducible, and different every pass.
"""

from __future__ import annotations

import math
import queue
import threading
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from raytf.config import TrainConfig
from raytf.data.files import FileLayout
from raytf.errors import ConfigError

PREFETCH_BATCHES = 16  # read ahead by the reading thread


def passes_steps(shard_rows: list[int], batch_size: int) -> int:
    """Steps of a pass in which every worker reads all of its rows: the largest share's batches."""
    return max(1, math.ceil(max(shard_rows) / batch_size))


def resolve_epochs(config: TrainConfig, shard_rows: list[int] | None) -> TrainConfig:
    """The config with `steps` set: epochs x steps_per_epoch, deriving steps_per_epoch from the rows each
    worker reads (`shard_rows`: None when the data's size is unknown). A config without epochs is returned as is."""
    if config.epochs is None or config.steps is not None:
        return config
    per_epoch = config.steps_per_epoch
    if per_epoch is None:
        if shard_rows is None:
            raise ConfigError("epochs: the size of data.train's dataset is unknown (its cardinality; e.g. after a "
                              "filter, or from a generator), so how many steps make an epoch is too.",
                              "Set steps_per_epoch, or give steps instead of epochs.")
        if min(shard_rows) == 0:
            raise ConfigError(f"epochs: a worker's share of data.train has no rows (rows per worker: {shard_rows}).",
                              "Use fewer workers, or more data.")
        per_epoch = passes_steps(shard_rows, config.batch_size)
    return config.model_copy(update={"steps": config.epochs * per_epoch, "steps_per_epoch": per_epoch})


def padded_batches(columns: dict[str, np.ndarray], real: int, batch_size: int, steps: int) -> Iterator[tuple[dict, np.ndarray]]:
    """The first `real` rows of `columns` as `steps` batches of `batch_size` with each row's weight: 1 for
    those rows, 0 for the copies (of the columns' rows, last first) that fill the batches past them."""
    rows = len(next(iter(columns.values())))
    wanted = steps * batch_size
    if real > wanted or rows == 0:
        raise RuntimeError(f"{real} rows do not fit {steps} batches of {batch_size}, or no rows to fill them with")
    weights = np.zeros(wanted, np.float32)
    weights[:real] = 1.0
    fill = np.arange(rows - 1, rows - 1 - (wanted - real), -1) % rows
    columns = {name: np.concatenate([values[:real], values[fill]]) for name, values in columns.items()}
    for start in range(0, wanted, batch_size):
        end = start + batch_size
        yield {name: values[start:end] for name, values in columns.items()}, weights[start:end]


class FileBatches:
    """A worker's training batches from files: pass after pass over its rows (`FileLayout.shard`),
    each as `steps_per_pass` batches of (features, label, weight), read by a thread of its own."""

    def __init__(self, layout: FileLayout, worker: int, workers: int, config: TrainConfig, steps_per_pass: int) -> None:
        self.layout = layout
        self.worker = worker
        self.pieces = layout.shard(worker, workers)
        self.batch_size = config.batch_size
        self.shuffle_buffer = config.data.shuffle_buffer
        self.seed = config.seed
        self.steps_per_pass = steps_per_pass

    def passes(self) -> Iterator[tuple[Any, np.ndarray, np.ndarray]]:
        """The batches of every pass, one after another, in this thread."""
        epoch = 0
        while True:
            yield from self.one_pass(epoch)
            epoch += 1

    def one_pass(self, epoch: int) -> Iterator[tuple[Any, np.ndarray, np.ndarray]]:
        rng = np.random.default_rng([self.seed, self.worker, epoch]) if self.shuffle_buffer else None
        order = rng.permutation(len(self.pieces)) if rng is not None else range(len(self.pieces))
        blocks = (block for index in order for block in self.layout.read(self.pieces[index]))
        for columns, weights in pass_batches(blocks, self.layout.label.name, self.batch_size, self.steps_per_pass,
                                             rng, self.shuffle_buffer, f"{self.layout.key}: worker {self.worker}'s share"):
            yield (*self._inputs(columns), weights)

    def _inputs(self, columns: dict[str, np.ndarray]):
        return model_inputs(columns, [c.name for c in self.layout.features], self.layout.label.name)

    def first_batch(self, batch_size: int):
        """The first (features, labels) of this worker's rows in file order, at most `batch_size` of them."""
        blocks, held = [], 0
        for piece in self.pieces:
            for block in self.layout.read(piece):
                blocks.append(block)
                held += len(block[self.layout.label.name])
                if held >= batch_size:
                    break
            if held >= batch_size:
                break
        if not blocks:
            raise ConfigError(f"{self.layout.key}: worker {self.worker}'s share has no rows.",
                              "Use fewer workers, or more data.")
        features, labels = self._inputs({k: v[:batch_size] for k, v in _joined(blocks, None).items()})
        return with_ragged_tensors(features), labels


def with_ragged_tensors(features):
    """Features whose ragged columns (lists of different lengths) are tf.RaggedTensors, as a model takes
    them, and then every other column a tensor too (Keras refuses a mix of tensors and arrays); as they are
    without one. The training batches stay numpy: the worker pads such lists (raytf.replica.key_inputs)."""
    from raytf.data.files import is_ragged, ragged_tensor

    columns = features if isinstance(features, dict) else {None: features}
    if not any(is_ragged(v) for v in columns.values()):
        return features
    import tensorflow as tf

    made = {k: ragged_tensor(v) if is_ragged(v) else tf.convert_to_tensor(v) for k, v in columns.items()}
    return made if isinstance(features, dict) else made[None]


def model_inputs(columns: dict[str, np.ndarray], features: Sequence[str], label: str) -> tuple[Any, np.ndarray]:
    """(features, labels) as the model takes them: one feature as its array, several as a dict by name."""
    inputs = columns[features[0]] if len(features) == 1 else {name: columns[name] for name in features}
    return inputs, columns[label]


def pass_batches(blocks: Iterable[dict[str, np.ndarray]], count_by: str, size: int, steps: int, rng, shuffle_buffer: int,
                 share: str) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """One pass over `blocks` (dicts of columns; `count_by` names one to count rows by) as exactly `steps`
    batches of `size` rows with their weights: every row once, weighted 1, then weightless copies filling the
    last batch (and whole batches, if the rows end short of `steps`). With `rng`, rows are mixed within a buffer
    of `shuffle_buffer` rows. `share` names the rows in errors."""
    keep = shuffle_buffer if rng is not None else 0  # rows held back to mix with the next block
    ones = np.ones(size, np.float32)
    pending: list[dict[str, np.ndarray]] = []  # blocks read, not yet batched
    held = done = 0
    last = None  # the last batch given (its rows fill a pass whose rows ended on a whole batch)
    for block in blocks:
        pending.append(block)
        held += len(block[count_by])
        ready = (held - keep) // size * size
        if ready > 0:
            rows = _joined(pending, rng)
            pending, held = [{k: v[ready:] for k, v in rows.items()}], held - ready
            for last in _batches(rows, size, ready):
                done += 1
                if done > steps:
                    raise RuntimeError(f"{share} takes more than the {steps} batches of a pass")
                yield last, ones
    rows = _joined(pending, rng) if held else {}
    full = held // size * size
    for last in _batches(rows, size, full):
        done += 1
        yield last, ones
    left = steps - done
    if left < 0 or left == 0 and held > full:
        raise RuntimeError(f"{share} takes more than the {steps} batches of a pass")
    if left:  # the last rows, filled up with weightless copies (whole such batches if the share is short)
        source = {k: v[full:] for k, v in rows.items()} if held > full else last
        if source is None:
            raise ConfigError(f"{share} has no rows.", "Use fewer workers, or more data.")
        yield from padded_batches(source, held - full, size, left)


def _joined(blocks: list[dict[str, np.ndarray]], rng) -> dict[str, np.ndarray]:
    """The blocks' rows as one block, shuffled when `rng` is given."""
    joined = blocks[0] if len(blocks) == 1 else {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}
    if rng is None:
        return joined
    order = rng.permutation(len(next(iter(joined.values()))))
    return {k: v[order] for k, v in joined.items()}


def _batches(columns: dict[str, np.ndarray], batch_size: int, rows: int):
    """The first `rows` (a multiple of `batch_size`) of `columns`, batch by batch."""
    for start in range(0, rows, batch_size):
        yield {k: v[start:start + batch_size] for k, v in columns.items()}


def read_ahead(batches: Iterator, depth: int = PREFETCH_BATCHES) -> Iterator:
    """`batches`, produced by a daemon thread up to `depth` ahead (reading and decoding files releases
    the GIL for most of its time). An error in the thread is raised here, where the batch was due.
    Closed (or dropped) before the end, the thread stops too: a pool host's next run must not find it."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    failed = object()
    stop = threading.Event()

    def hand_over(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in batches:
                if not hand_over(item):
                    return
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, which raises it
            hand_over((failed, err))

    threading.Thread(target=produce, name="raytf-read-ahead", daemon=True).start()
    try:
        while True:
            item = items.get()
            if isinstance(item, tuple) and len(item) == 2 and item[0] is failed:
                raise item[1]
            yield item
    finally:
        stop.set()
