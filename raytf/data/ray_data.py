"""data.train as a Ray Data dataset: `{format: ray_data, dataset: module:function, label, features}`.

The driver calls the function (connected to the cluster: Ray Data runs there), checks the columns on a
sample, counts the rows, and once the workers exist splits the dataset with
`streaming_split(workers, equal=True)`, with the workers' nodes as locality hints. Each worker reads
its split pass after pass (`passes`), through the same batching as files (raytf.data.epochs): every
row of its split once per pass, the last batch filled with rows weighted 0.

Ray Data's traps, and what raytf does about them:
- Its tasks need CPUs that the run's actors do not hold. Where the actors would hold every CPU of
  the cluster, the dataset is read into the object store before they start (`materialize`), so that
  nothing of it has to run beside them; the run says so.
- Its split is equal: every worker gets the same number of rows, `rows // workers`, and Ray Data
  leaves out the remainder (fewer than `workers` rows per epoch).
- A split starts an epoch only when every split does. A restarted worker reads its split from the
  next epoch on (its replica is built from the driver's sample, not from its split), so it waits for
  the others to end the epoch under way rather than holding them up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from raytf.config import DataSpec
from raytf.data.epochs import model_inputs, pass_batches
from raytf.data.files import Column, checked_columns
from raytf.errors import ConfigError

READ_ROWS = 4096  # rows per batch asked of Ray Data (raytf batches them again, to batch_size)


@dataclass(frozen=True)
class RayShare:
    """What every worker gets: its part of the dataset (streaming splits, or of a materialized dataset the
    blocks' rows), the columns, and a sample to build on."""

    splits: tuple | None  # streaming: ray.data.DataIterator per worker
    pieces: tuple | None  # materialized: per worker, its (block ref, first row, end row) runs
    features: tuple[str, ...]
    label: str
    sample: tuple  # (features, labels): the first rows of the dataset, for the replica's build


class RayDataInput:
    """A Ray Data data.train on the driver."""

    def __init__(self, spec: DataSpec, key: str) -> None:
        from raytf.config.imports import resolve_callable

        self.spec = spec
        self.key = key
        self.fn = resolve_callable(spec.dataset, f"{key}.dataset")
        self.dataset = None
        self.rows = 0
        self.features: tuple[str, ...] = ()
        self.held: dict[str, np.ndarray] | None = None  # data.eval: every row, read into this process

    def open(self) -> None:
        """Call the function and check what it returns (needs the Ray connection)."""
        import logging

        import ray.data

        if "RAY_DATA_LOG_LEVEL" not in os.environ:  # as in the actors (raytf.cluster.connection): warnings only
            logging.getLogger("ray.data").setLevel(logging.WARNING)
        from raytf.data.datasets import call_user

        context = ray.data.DataContext.get_current()  # captured by the datasets made now, run wherever they run
        context.print_on_execution_start = False  # a log line per epoch and split, in the middle of the progress
        context.enable_progress_bars = False
        dataset = call_user(self.fn, f"{self.key}.dataset")
        if not isinstance(dataset, ray.data.Dataset):
            raise ConfigError(f"{self.key}.dataset returned a {type(dataset).__name__}, not a ray.data.Dataset.",
                              "Return a Ray Data dataset (e.g. ray.data.read_parquet(...)), or use format parquet/csv/"
                              "tfrecord, or a function returning a tf.data.Dataset.")
        sample = self._take(dataset, 64)
        kinds = {"i": "int", "u": "int", "f": "float", "b": "bool"}
        schema = {name: Column(name, kinds[values.dtype.kind], None) if values.dtype.kind in kinds
                  else f"{values.dtype} values" for name, values in sample.items()}
        features, _ = checked_columns(schema, self.spec, self.key, "dataset")
        self.dataset, self.features = dataset, tuple(column.name for column in features)
        self.rows = dataset.count()

    def _take(self, dataset, rows: int) -> dict[str, np.ndarray]:
        try:
            batch = dataset.take_batch(rows, batch_format="numpy")
        except ValueError as err:  # Ray Data's "The dataset is empty."
            raise ConfigError(f"{self.key}: reading the dataset's first rows failed: {err}",
                              "Check the dataset function (e.g. ds.take(3) by hand).") from None
        return {name: column(values, name, self.key) for name, values in batch.items()}

    def hold(self) -> None:
        """Read every row into this process (data.eval: evaluated after the run's connection is closed too)."""
        blocks = [{name: column(values, name, self.key) for name, values in batch.items()}
                  for batch in self.dataset.iter_batches(batch_size=READ_ROWS, batch_format="numpy")]
        self.held = {name: np.concatenate([block[name] for block in blocks]) for name in blocks[0]}

    def first_batch(self, batch_size: int):
        if self.held is not None:
            return self._item({name: values[:batch_size] for name, values in self.held.items()})
        return self._item(self._take(self.dataset, batch_size))

    def _item(self, columns: dict[str, np.ndarray]):
        return model_inputs(columns, self.features, self.spec.label)

    def blocks(self) -> Iterator[tuple[Any, np.ndarray]]:
        """Every row once, in blocks of (features, labels): data.eval, held (`hold`) on the driver."""
        for start in range(0, self.rows, READ_ROWS):
            yield self._item({name: values[start:start + READ_ROWS] for name, values in self.held.items()})

    @property
    def materialized(self) -> bool:
        from ray.data.dataset import MaterializedDataset

        return isinstance(self.dataset, MaterializedDataset)

    def shard_rows(self, workers: int) -> list[int]:
        if self.materialized:  # runs of the blocks' rows, equal within one row: every row
            return [(w + 1) * self.rows // workers - w * self.rows // workers for w in range(workers)]
        return [self.rows // workers] * workers  # streaming_split's equal split leaves out the remainder

    def materialize_if_needed(self, config, cluster_cpus: float) -> str | None:
        """Where the run's actors would hold every CPU, Ray Data's tasks could not run beside them (a run that
        never starts): read the dataset into the object store now, before they start. Returns what to say."""
        d = config.distribution
        held = d.workers * d.worker_resources.num_cpus + d.parameter_servers * d.ps_resources.num_cpus
        if self.materialized or cluster_cpus - held >= 1:
            return None
        self.dataset = self.dataset.materialize()
        self.rows = self.dataset.count()
        return (f"Ray Data: the run's actors hold {held:g} of the cluster's {cluster_cpus:g} CPUs, and Ray Data's tasks "
                f"need one besides them: the dataset was read into the object store first "
                f"({(self.dataset.size_bytes() or 0) / 2**20:,.1f} MB), and each worker reads its blocks' rows from "
                "there. Lower distribution.worker_resources.num_cpus (e.g. 0.5) to stream it instead.")

    def share(self, workers: int, nodes: list[str] | None, batch_size: int) -> RayShare:
        """Each worker's part: of a materialized dataset, runs of its blocks' rows (no Ray Data execution
        per epoch, no task: blocks are fetched from the object store); else a streaming split."""
        sample = self.first_batch(batch_size)
        if not self.materialized:
            splits = self.dataset.streaming_split(workers, equal=True, locality_hints=nodes)
            return RayShare(tuple(splits), None, self.features, self.spec.label, sample)
        blocks = [(ref, meta.num_rows) for bundle in self.dataset.iter_internal_ref_bundles()
                  for ref, meta in zip(bundle.block_refs, bundle.metadata)]
        pieces = []
        for worker in range(workers):
            start, stop = worker * self.rows // workers, (worker + 1) * self.rows // workers
            mine, offset = [], 0
            for ref, rows in blocks:
                lo, hi = max(start, offset), min(stop, offset + rows)
                if lo < hi:
                    mine.append((ref, lo - offset, hi - offset))
                offset += rows
            pieces.append(tuple(mine))
        return RayShare(None, tuple(pieces), self.features, self.spec.label, sample)


def column(values: np.ndarray, name: str, key: str) -> np.ndarray:
    """A column of a Ray Data numpy batch as raytf feeds it: lists of one length as a 2-D array (Ray Data
    gives lists as an array of arrays), floats and booleans as float32, integers as they are (ids)."""
    if values.dtype == object:
        try:
            values = np.stack(values)
        except ValueError:
            raise ConfigError(f"{key}: the dataset's column '{name}' holds lists of different lengths.",
                              "Pad or cut them to one length in the dataset (e.g. in a map_batches).") from None
    if values.dtype.kind in "fb":
        return values.astype(np.float32, copy=False)
    return values


def arrow_column(array, name: str, key: str) -> np.ndarray:
    """A column of a Ray Data pyarrow batch as `column` gives it, without a Python object per row: lists of
    one length are flattened and reshaped (in numpy format Ray Data would make an array of arrays)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    kind = array.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        lengths = pc.list_value_length(array)
        shortest, longest = pc.min(lengths).as_py(), pc.max(lengths).as_py()
        if shortest != longest:
            raise ConfigError(f"{key}: the dataset's column '{name}' holds lists of different lengths ({shortest} to "
                              f"{longest}).", "Pad or cut them to one length in the dataset (e.g. in a map_batches).")
        return column(array.flatten().to_numpy(zero_copy_only=False).reshape(len(array), longest or 0), name, key)
    return column(array.to_numpy(zero_copy_only=False), name, key)  # numbers, and Ray Data's tensor columns


def passes(share: RayShare, worker: int, config, steps_per_pass: int) -> Iterator[tuple[Any, np.ndarray, np.ndarray]]:
    """Worker `worker`'s batches (features, labels, weights): pass after pass over its split."""
    names = (*share.features, share.label)
    epoch = 0
    while True:
        rng = np.random.default_rng([config.seed, worker, epoch]) if config.data.shuffle_buffer else None
        if share.pieces is not None:
            blocks = _pieces(share.pieces[worker], names, rng)
        else:  # whole blocks, as Arrow (raytf batches them itself, and converts lists of ids without an object per row)
            blocks = ({name: arrow_column(batch.column(name), name, "data.train") for name in names}
                      for batch in share.splits[worker].iter_batches(batch_size=None, batch_format="pyarrow",
                                                                     prefetch_batches=2))
        for columns, weights in pass_batches(blocks, share.label, config.batch_size, steps_per_pass, rng,
                                             config.data.shuffle_buffer, f"data.train: worker {worker}'s split"):
            yield (*model_inputs(columns, share.features, share.label), weights)
        epoch += 1


def _pieces(pieces: tuple, names: tuple[str, ...], rng) -> Iterator[dict[str, np.ndarray]]:
    """A worker's runs of a materialized dataset's blocks (in an order of `rng`'s, if given), as columns."""
    import ray
    from ray.data.block import BlockAccessor

    order = rng.permutation(len(pieces)) if rng is not None else range(len(pieces))
    for index in order:
        ref, start, stop = pieces[index]
        table = BlockAccessor.for_block(ray.get(ref)).to_arrow().slice(start, stop - start)
        yield {name: arrow_column(table.column(name), name, "data.train") for name in names}
