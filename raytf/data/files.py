"""Training and evaluation data read from files: Parquet, CSV, TFRecord (`tf.train.Example`).

The driver lists the files and counts their rows once (`discover`): a `FileLayout`, handed to every
worker. Each worker reads its own rows (`FileLayout.shard`): the files (Parquet: their row groups)
in a fixed order, cut into as many runs of equal length as there are workers. The workers' rows are
therefore disjoint, together complete, and equal in number within one row; a worker's run is made
of whole files (row groups) wherever the counts allow, and begins or ends inside one otherwise.
Everything a bad spec can get wrong (no file matches, a missing column, a label that is text, lists
of varying length) is found here, on the driver, before any actor starts.
"""

from __future__ import annotations

import difflib
import glob
import os
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from raytf.config import DataSpec
from raytf.errors import ConfigError

READ_ROWS = 65_536  # rows per block read (Parquet and CSV batches, TFRecord parse batches)


@dataclass(frozen=True)
class Unit:
    """What is read as one: a Parquet row group, or a whole CSV or TFRecord file."""

    path: str
    group: int  # Parquet row group; 0 otherwise
    rows: int


@dataclass(frozen=True)
class Piece:
    """Rows [start, stop) of unit `unit` of a layout."""

    unit: int
    start: int
    stop: int


def _tfrecord_dtypes():
    import tensorflow as tf

    return {"int": tf.int64, "float": tf.float32, "string": tf.string}


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # "int", "float", "bool" or "string" (keys of a DynamicEmbedding(key_dtype="string"); a feature only)
    width: int | None  # a list column's length; None: one value per row (or a ragged list)
    ragged: bool = False  # lists of different lengths (int or string keys): a numpy object array of arrays


@dataclass(frozen=True)
class FileLayout:
    """The files of `data.train` or `data.eval`, their rows, and the columns read from them."""

    key: str  # data.train or data.eval: named in errors
    format: str
    units: tuple[Unit, ...]
    features: tuple[Column, ...]
    label: Column
    tfrecord_kinds: tuple[tuple[str, str], ...] = ()  # TFRecord: every feature's kind, to parse the records

    @property
    def rows(self) -> int:
        return sum(unit.rows for unit in self.units)

    def shard(self, worker: int, workers: int) -> list[Piece]:
        """Worker `worker`'s rows of `workers`: rows [worker * N // workers, (worker + 1) * N // workers)
        of the units in order."""
        total = self.rows
        start, stop = worker * total // workers, (worker + 1) * total // workers
        pieces, offset = [], 0
        for index, unit in enumerate(self.units):
            lo, hi = max(start, offset), min(stop, offset + unit.rows)
            if lo < hi:
                pieces.append(Piece(index, lo - offset, hi - offset))
            offset += unit.rows
        return pieces

    def shard_rows(self, workers: int) -> list[int]:
        total = self.rows
        return [(w + 1) * total // workers - w * total // workers for w in range(workers)]

    def read(self, piece: Piece) -> Iterator[dict[str, np.ndarray]]:
        """The piece's rows in blocks of at most READ_ROWS: per column read, its values as numpy
        (a list column as a (rows, width) array)."""
        unit = self.units[piece.unit]
        names = [c.name for c in self.features] + [self.label.name]
        reader = {"parquet": _parquet_batches, "csv": _csv_batches, "tfrecord": self._tfrecord_batches}[self.format]
        offset = 0
        for batch in reader(unit, names):
            count = _length(batch)
            lo, hi = max(piece.start - offset, 0), min(piece.stop - offset, count)
            offset += count
            if lo < hi:
                yield {c.name: self._values(batch, c, lo, hi, unit) for c in (*self.features, self.label)}
            if offset >= piece.stop:
                return

    def _values(self, batch, column: Column, lo: int, hi: int, unit: Unit) -> np.ndarray:
        values = batch[column.name]
        if not isinstance(values, np.ndarray):  # an Arrow column
            values = _arrow_values(values.slice(lo, hi - lo), column, self.key, unit.path)
        else:
            values = values[lo:hi]
        return _normalized(values, column)

    def _tfrecord_batches(self, unit: Unit, names: list[str]) -> Iterator[dict[str, np.ndarray]]:
        import tensorflow as tf

        columns = {c.name: c for c in (*self.features, self.label)}
        kinds = dict(self.tfrecord_kinds)
        spec = {name: tf.io.FixedLenFeature([columns[name].width] if columns[name].width else [],
                                            _tfrecord_dtypes()[kinds[name]]) for name in names}
        dataset = tf.data.TFRecordDataset(unit.path).batch(READ_ROWS).map(lambda s: tf.io.parse_example(s, spec))
        try:
            for block in dataset.as_numpy_iterator():
                yield block
        except tf.errors.InvalidArgumentError as err:
            raise ConfigError(f"{self.key}: {unit.path}: a record does not fit the features of the first record "
                              f"({_first_line(err)}).", "Give every record the same features, each list of the same "
                              "length (pad them when writing).") from None

    def describe(self) -> str:
        files = len({unit.path for unit in self.units})
        return f"{self.rows:,} rows in {files} {self.format} file{'s' if files != 1 else ''}"


def discover(spec: DataSpec, key: str) -> FileLayout:
    """List `spec`'s files, count their rows and check its columns (ConfigError naming `key`'s part)."""
    if spec.make is not None:
        from raytf.config.imports import resolve_callable
        from raytf.data.datasets import call_user

        call_user(resolve_callable(spec.make, f"{key}.make"), f"{key}.make")
    paths = _matching(spec, key)
    lister = {"parquet": _parquet_units, "csv": _csv_units, "tfrecord": _tfrecord_units}[spec.format]
    units, schema = lister(paths, key)
    if not sum(unit.rows for unit in units):
        raise ConfigError(f"{key}: the {len(paths)} file(s) matching {', '.join(spec.paths)} hold no rows.",
                          "Point paths at files with data.")
    features, label = checked_columns(schema, spec, key, "files")
    kinds = tuple((name, column.kind) for name, column in schema.items()) if spec.format == "tfrecord" else ()
    return FileLayout(key=key, format=spec.format, units=tuple(units), features=features, label=label,
                      tfrecord_kinds=kinds)


def _matching(spec: DataSpec, key: str) -> list[str]:
    paths: list[str] = []
    for pattern in spec.paths:
        found = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
        if not found:
            raise ConfigError(f"{key}.paths: no file matches '{pattern}' (relative paths are taken from {os.getcwd()}).",
                              "Check the pattern (e.g. data/train-*.parquet) and that the files exist on this machine"
                              + (", or that the make function writes them." if spec.make else "."))
        paths.extend(p for p in found if p not in paths)
    return paths


# What holds the columns, in errors: (its name with its verb, where its columns are made).
_HOLDERS = {"files": ("the files have", "when writing the files"), "dataset": ("the dataset has", "in the dataset")}


def checked_columns(schema: dict[str, Column | str], spec: DataSpec, key: str,
                    holder: str) -> tuple[tuple[Column, ...], Column]:
    """`spec`'s features (default: every column but the label) and label in `schema` (per column what it is
    read as, or why a model cannot take it), each checked; `holder`: "files" or "dataset", for the errors."""
    label = _column(schema, spec.label, f"{key}.label", holder)
    names = spec.features if spec.features is not None else tuple(n for n in schema if n != spec.label)
    if not names:
        raise ConfigError(f"{key}: {_HOLDERS[holder][0]} no column besides the label '{spec.label}'.",
                          "Add feature columns, or name them in features.")
    return tuple(_column(schema, name, f"{key}.features", holder) for name in names), label


def _column(schema: dict[str, Column | str], name: str, where: str, holder: str) -> Column:
    has, made = _HOLDERS[holder]
    found = schema.get(name)
    if found is None:
        guess = difflib.get_close_matches(name, list(schema), n=1)
        raise ConfigError(f"{where}: {has} no column '{name}'.",
                          (f"Did you mean '{guess[0]}'? " if guess else "") + f"Its columns: {', '.join(schema)}.")
    what = "label" if where.endswith(".label") else "feature"
    if what == "label" and not isinstance(found, str) and found.kind == "string":
        found = "text (strings)"
    if isinstance(found, str):  # why it cannot be trained on
        raise ConfigError(f"{where}: the column '{name}' holds {found}, which a model cannot take as its {what}.",
                          f"Turn it into numbers {made} (class names into integer ids, strings hashed "
                          "to int64), or leave it out" + (" of features." if what == "feature" else "."))
    return found


# -- Parquet -----------------------------------------------------------------------------------
def _parquet_units(paths: list[str], key: str) -> tuple[list[Unit], dict[str, Column | str]]:
    import pyarrow.parquet as pq

    units: list[Unit] = []
    schema: dict[str, Column | str] | None = None
    for path in paths:
        try:
            file = pq.ParquetFile(path)
        except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
            raise ConfigError(f"{key}: {path} is not a readable Parquet file ({err}).",
                              "Check the file, or the format key (parquet, csv or tfrecord).") from None
        if schema is None:
            schema = _arrow_schema(file.schema_arrow, lambda name: _first_values(file, name))
        units.extend(Unit(path, g, file.metadata.row_group(g).num_rows) for g in range(file.metadata.num_row_groups))
    return units, schema or {}


def _first_values(file, name: str):
    return file.read_row_group(0, columns=[name]).column(name) if file.metadata.num_row_groups else None


def _parquet_batches(unit: Unit, names: list[str]):
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(unit.path).iter_batches(batch_size=READ_ROWS, row_groups=[unit.group], columns=names):
        yield {name: batch.column(name) for name in names}


# -- CSV -------------------------------------------------------------------------------------
def _csv_reader(path: str):
    import pyarrow.csv as pacsv

    return pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=1 << 22))


def _csv_units(paths: list[str], key: str) -> tuple[list[Unit], dict[str, Column | str]]:
    import pyarrow as pa

    units: list[Unit] = []
    schema: dict[str, Column | str] | None = None
    for path in paths:
        try:
            reader = _csv_reader(path)
            if schema is None:
                schema = _arrow_schema(reader.schema, lambda name: None)
            units.append(Unit(path, 0, sum(batch.num_rows for batch in reader)))
        except (pa.ArrowInvalid, OSError) as err:
            raise ConfigError(f"{key}: {path} could not be read as CSV ({_first_line(err)}).",
                              "Check the file (a header row, then one row per example, the same columns in every "
                              "row), or the format key.") from None
    return units, schema or {}


def _csv_batches(unit: Unit, names: list[str]):
    for batch in _csv_reader(unit.path):
        yield {name: batch.column(name) for name in names}


# -- TFRecord ----------------------------------------------------------------------------------
def _tfrecord_units(paths: list[str], key: str) -> tuple[list[Unit], dict[str, Column | str]]:
    import tensorflow as tf

    units: list[Unit] = []
    schema: dict[str, Column | str] | None = None
    for path in paths:
        records = tf.data.TFRecordDataset(path)
        try:
            if schema is None:
                first = next(iter(records.take(1)), None)
                if first is not None:
                    schema = _example_schema(first.numpy(), key, path)
            count = int(records.reduce(np.int64(0), lambda n, _: n + 1))
        except tf.errors.OpError as err:
            raise ConfigError(f"{key}: {path} could not be read as TFRecord ({_first_line(err)}).",
                              "Check the file, or the format key (parquet, csv or tfrecord).") from None
        units.append(Unit(path, 0, count))
    return units, schema or {}


def _example_schema(record: bytes, key: str, path: str) -> dict[str, Column | str]:
    import tensorflow as tf

    try:
        example = tf.train.Example.FromString(record)
    except Exception as err:  # noqa: BLE001 - protobuf's DecodeError; a file that is not Examples
        raise ConfigError(f"{key}: the first record of {path} is not a tf.train.Example ({err}).",
                          "Write the records as serialized tf.train.Example protos.") from None
    schema: dict[str, Column | str] = {}
    for name, feature in sorted(example.features.feature.items()):
        kind = feature.WhichOneof("kind")
        values = getattr(feature, kind).value
        width = None if len(values) == 1 else len(values)
        schema[name] = Column(name, {"int64_list": "int", "float_list": "float", "bytes_list": "string"}[kind], width)
    return schema


# -- Arrow columns -----------------------------------------------------------------------------
def _arrow_schema(schema, first_values) -> dict[str, Column | str]:
    """Per column: what it is read as, or (a string) why a model cannot take it."""
    import pyarrow as pa
    import pyarrow.compute as pc

    columns: dict[str, Column | str] = {}
    for field in schema:
        kind = _kind(field.type)
        if kind is not None:
            columns[field.name] = Column(field.name, kind, None)
        elif pa.types.is_list(field.type) or pa.types.is_large_list(field.type) or pa.types.is_fixed_size_list(field.type):
            inner = _kind(field.type.value_type)
            if inner is None:
                columns[field.name] = f"lists of {field.type.value_type}"
            elif pa.types.is_fixed_size_list(field.type):
                columns[field.name] = Column(field.name, inner, field.type.list_size)
            else:
                values = first_values(field.name)
                lengths = set() if values is None else set(pc.list_value_length(values).to_pylist())
                if len(lengths) == 1:
                    columns[field.name] = Column(field.name, inner, lengths.pop())
                elif lengths and inner in ("int", "string"):  # keys of a DynamicEmbedding on a ragged input
                    columns[field.name] = Column(field.name, inner, None, ragged=True)
                else:
                    columns[field.name] = (f"lists of different lengths ({min(lengths)} to {max(lengths)})" if lengths
                                           else "lists of unknown length")
        else:
            columns[field.name] = f"{field.type} values"
    return columns


def _kind(arrow_type) -> str | None:
    import pyarrow as pa

    if pa.types.is_integer(arrow_type):
        return "int"
    if pa.types.is_floating(arrow_type):
        return "float"
    if pa.types.is_boolean(arrow_type):
        return "bool"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "string"
    return None


def _arrow_values(array, column: Column, key: str, path: str) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if array.null_count:
        raise ConfigError(f"{key}: column '{column.name}' of {path} has missing values.",
                          "Fill them when writing the files (e.g. 0, or a separate id for 'unknown').")
    if column.ragged:
        return _ragged_rows(array)
    if column.width is None:
        return array.to_numpy(zero_copy_only=False)
    lengths = pc.list_value_length(array) if not pa.types.is_fixed_size_list(array.type) else None
    if lengths is not None and (pc.min(lengths).as_py() != column.width or pc.max(lengths).as_py() != column.width):
        raise ConfigError(f"{key}: column '{column.name}' of {path} has lists of length {pc.min(lengths).as_py()} to "
                          f"{pc.max(lengths).as_py()}; the first file's are {column.width} long.",
                          "Pad or cut every list to one length when writing the files.")
    return array.flatten().to_numpy(zero_copy_only=False).reshape(-1, column.width)


def _ragged_rows(array) -> np.ndarray:
    """A list column of varying lengths as a numpy object array of one array per row (numpy slices, joins
    and shuffles it as any column; `ragged_tensor` makes a tf.RaggedTensor of a batch of it)."""
    import pyarrow.compute as pc

    lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(array).to_numpy(zero_copy_only=False)
    rows = np.empty(len(lengths), object)
    for i, part in enumerate(np.split(flat, np.cumsum(lengths)[:-1])):  # (assigned one by one: equal lengths
        rows[i] = part                                                  # would make numpy broadcast a 2-d array)
    return rows


def holds_strings(values) -> bool:
    """Whether a column (numpy, a tensor or a ragged tensor) holds strings: TensorFlow's or numpy's (str,
    bytes or objects; a ragged column of the file reader is an object array too, made a tensor first)."""
    dtype = values.dtype if hasattr(values, "dtype") else np.asarray(values).dtype
    return np.dtype(getattr(dtype, "as_numpy_dtype", dtype)).kind in "OSU"


def is_ragged(values) -> bool:
    """Whether `values` is a ragged column as the file reader makes it (an object array of arrays)."""
    return isinstance(values, np.ndarray) and values.dtype == object and values.ndim == 1 and len(values) > 0 \
        and isinstance(values[0], np.ndarray)


def ragged_tensor(values: np.ndarray):
    """A ragged column's rows (`is_ragged`) as a tf.RaggedTensor (examples, None)."""
    import tensorflow as tf

    lengths = np.fromiter((len(row) for row in values), np.int64, len(values))
    flat = np.concatenate(list(values)) if len(values) else np.zeros(0, np.int64)
    if holds_strings(flat):
        flat = flat.astype(object)
    return tf.RaggedTensor.from_row_lengths(flat, lengths)


def _normalized(values: np.ndarray, column: Column) -> np.ndarray:
    """Floats and booleans as float32 (what the model computes in); integers (ids) and strings (keys) as they are."""
    if column.kind in ("int", "string"):
        return values
    return values.astype(np.float32, copy=False)


def _length(batch: dict[str, Any]) -> int:
    first = next(iter(batch.values()))
    return len(first)


def _first_line(err: BaseException) -> str:
    text = getattr(err, "message", None) or str(err)
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__
