"""File specs: listing, splitting between workers, reading Parquet, CSV and TFRecord alike, passes in
which every row is read once, and bad specs refused on the driver with the key and the fix."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raytf.config import config_from_dict
from raytf.data.epochs import FileBatches, passes_steps, resolve_epochs
from raytf.data.files import discover
from raytf.errors import ConfigError

# (rows, row group size) per file: a small file, one of a single group, one of uneven groups.
FILES = [(100, 40), (37, 37), (250, 64)]
ROWS = sum(rows for rows, _ in FILES)


def columns(start: int, rows: int) -> dict[str, np.ndarray]:
    """Row r: row = r, items = r * 10 + 0..4, x = r / 1000, clicked = r odd."""
    row = np.arange(start, start + rows, dtype=np.int64)
    return {"row": row, "items": row[:, None] * 10 + np.arange(5), "x": row / 1000.0, "clicked": row % 2 == 1}


def write_parquet(directory, files=FILES) -> None:
    start = 0
    for i, (rows, group) in enumerate(files):
        c = columns(start, rows)
        table = pa.table({"row": c["row"], "items": pa.array(list(c["items"]), type=pa.list_(pa.int64())),
                          "x": c["x"], "clicked": c["clicked"]})
        pq.write_table(table, directory / f"part-{i}.parquet", row_group_size=group)
        start += rows


def write_csv(directory) -> None:
    start = 0
    for i, (rows, _) in enumerate(FILES):
        c = columns(start, rows)
        lines = ["row,x,clicked"] + [f"{r},{float(x)!r},{int(y)}" for r, x, y in zip(c["row"], c["x"], c["clicked"])]
        (directory / f"part-{i}.csv").write_text("\n".join(lines) + "\n")
        start += rows


def write_tfrecord(directory) -> None:
    import tensorflow as tf

    start = 0
    for i, (rows, _) in enumerate(FILES):
        c = columns(start, rows)
        with tf.io.TFRecordWriter(str(directory / f"part-{i}.tfrecord")) as writer:
            for r in range(rows):
                feature = {"row": tf.train.Feature(int64_list=tf.train.Int64List(value=[c["row"][r]])),
                           "items": tf.train.Feature(int64_list=tf.train.Int64List(value=c["items"][r])),
                           "x": tf.train.Feature(float_list=tf.train.FloatList(value=[c["x"][r]])),
                           "clicked": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(c["clicked"][r])]))}
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
        start += rows


def config(directory, fmt="parquet", **data):
    spec = {"format": fmt, "paths": str(directory / f"part-*.{fmt}"), "label": "clicked", **data.pop("spec", {})}
    return config_from_dict({"model": "m:f", "loss": "binary_crossentropy", "batch_size": 16,
                             "data": {"train": spec, **data}})


def rows_read(layout, cfg, workers: int, epochs: int) -> list[list[int]]:
    """Per epoch, the `row` of every example weighted 1 that the workers' batches hold."""
    steps = passes_steps(layout.shard_rows(workers), cfg.batch_size)
    streams = [FileBatches(layout, w, workers, cfg, steps).passes() for w in range(workers)]
    read = []
    for _ in range(epochs):
        seen = []
        for stream in streams:
            for _ in range(steps):
                features, labels, weights = next(stream)
                assert len(labels) == len(weights) == cfg.batch_size
                seen.extend(features["row"][weights == 1].tolist())
                # the label travels with its row
                assert (labels[weights == 1] == (features["row"][weights == 1] % 2 == 1)).all()
        read.append(seen)
    return read


@pytest.mark.parametrize("workers", [1, 2, 3, 5, 8])
def test_every_row_is_read_exactly_once_per_epoch_by_one_worker(tmp_path, workers):
    write_parquet(tmp_path)
    cfg = config(tmp_path, shuffle_buffer=50)
    layout = discover(cfg.data.train, "data.train")
    assert layout.rows == ROWS and len(layout.units) == 3 + 1 + 4  # row groups
    shares = layout.shard_rows(workers)
    assert sum(shares) == ROWS and max(shares) - min(shares) <= 1
    for seen in rows_read(layout, cfg, workers, epochs=3):
        assert sorted(seen) == list(range(ROWS))


def test_passes_are_reshuffled_every_epoch_and_reproducible_from_the_seed(tmp_path):
    write_parquet(tmp_path)
    cfg = config(tmp_path, shuffle_buffer=50)
    layout = discover(cfg.data.train, "data.train")
    first, second = rows_read(layout, cfg, 2, epochs=2)
    assert first != second and sorted(first) == sorted(second)
    assert rows_read(layout, cfg, 2, epochs=2) == [first, second]
    other_seed = cfg.model_copy(update={"seed": 1})
    assert rows_read(layout, other_seed, 2, epochs=1)[0] != first
    unshuffled = config(tmp_path)  # shuffle_buffer 0: file order, every epoch the same
    in_order = rows_read(layout, unshuffled, 1, epochs=2)
    assert in_order[0] == in_order[1] == list(range(ROWS))


def test_the_last_batch_is_filled_with_rows_of_weight_zero(tmp_path):
    write_parquet(tmp_path, files=[(40, 40)])
    cfg = config(tmp_path)
    layout = discover(cfg.data.train, "data.train")
    batches = list(FileBatches(layout, 0, 1, cfg, 3).one_pass(0))
    weights = np.concatenate([w for _, _, w in batches])
    assert len(batches) == 3 and weights.sum() == 40 and (weights[:40] == 1).all() and (weights[40:] == 0).all()
    # a share that fills fewer batches than the pass gets whole weightless batches of its rows
    batches = list(FileBatches(layout, 0, 1, cfg, 5).one_pass(0))
    assert len(batches) == 5 and sum(w.sum() for _, _, w in batches) == 40


@pytest.mark.parametrize("fmt", ["csv", "tfrecord"])
def test_csv_and_tfrecord_read_the_same_rows_as_parquet(tmp_path, fmt):
    (tmp_path / "pq").mkdir()
    (tmp_path / fmt).mkdir()
    write_parquet(tmp_path / "pq")
    {"csv": write_csv, "tfrecord": write_tfrecord}[fmt](tmp_path / fmt)
    features = ["row", "x"] if fmt == "csv" else ["row", "items", "x"]
    reference = discover(config(tmp_path / "pq", spec={"features": features}).data.train, "data.train")
    layout = discover(config(tmp_path / fmt, fmt, spec={"features": features}).data.train, "data.train")
    assert layout.rows == ROWS and layout.shard_rows(3) == reference.shard_rows(3)
    for worker in range(3):
        got, want = _all(layout, worker), _all(reference, worker)
        assert set(got) == set(want) == {*features, "clicked"}
        for name in got:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-6)


def _all(layout, worker: int) -> dict[str, np.ndarray]:
    blocks = [block for piece in layout.shard(worker, 3) for block in layout.read(piece)]
    return {name: np.concatenate([b[name] for b in blocks]).astype(np.float64) for name in blocks[0]}


def test_epochs_take_their_steps_from_the_largest_share():
    cfg = config_from_dict({"model": "m:f", "loss": "mse", "batch_size": 16, "epochs": 3, "data": {"train": "a:b"}})
    assert cfg.steps is None
    resolved = resolve_epochs(cfg, [193, 194])
    assert (resolved.steps, resolved.steps_per_epoch) == (3 * 13, 13)
    config_from_dict(resolved.to_dict())  # what the workers validate again: no contradiction
    with pytest.raises(ConfigError, match="steps_per_epoch"):
        resolve_epochs(cfg, None)


# -- bad specs --------------------------------------------------------------------------------------
def test_no_matching_file_names_the_key_and_the_pattern(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.train\.paths: no file matches '.*part-\*\.parquet'"):
        discover(config(tmp_path).data.train, "data.train")


def test_a_missing_column_is_named_with_a_suggestion(tmp_path):
    write_parquet(tmp_path)
    with pytest.raises(ConfigError, match=r"data\.train\.label: the files have no column 'clickd'") as err:
        discover(config(tmp_path, spec={"label": "clickd"}).data.train, "data.train")
    assert "Did you mean 'clicked'" in err.value.fix
    with pytest.raises(ConfigError, match=r"data\.train\.features: the files have no column 'itemz'"):
        discover(config(tmp_path, spec={"features": ["itemz"]}).data.train, "data.train")


def test_a_label_of_text_and_lists_of_varying_length_are_refused(tmp_path):
    pq.write_table(pa.table({"x": [1.0, 2.0], "y": ["yes", "no"]}), tmp_path / "part-0.parquet")
    with pytest.raises(ConfigError, match=r"data\.train\.label: the column 'y' holds text \(strings\)") as err:
        discover(config(tmp_path, spec={"label": "y"}).data.train, "data.train")
    assert "integer ids" in err.value.fix
    pq.write_table(pa.table({"x": pa.array([[1.0, 2.0], [3.0]]), "clicked": [True, False]}), tmp_path / "part-0.parquet")
    with pytest.raises(ConfigError, match=r"'x' holds lists of different lengths \(1 to 2\)"):
        discover(config(tmp_path).data.train, "data.train")


def test_int_and_string_lists_of_different_lengths_are_ragged_columns(tmp_path):
    """The keys of a DynamicEmbedding on a ragged input: a row's list as an array of its own; the model's
    first batch has them as a tf.RaggedTensor (and every other column a tensor)."""
    import tensorflow as tf

    from raytf.data.epochs import FileBatches

    pq.write_table(pa.table({"ids": pa.array([[1, 2], [3], [], [4, 5, 6]]), "names": [["a"], ["b", "c"], [], ["d"]],
                             "clicked": [True, False, True, False]}), tmp_path / "part-0.parquet")
    cfg = config(tmp_path)
    layout = discover(cfg.data.train, "data.train")
    assert [(c.name, c.kind, c.ragged) for c in layout.features] == [("ids", "int", True), ("names", "string", True)]
    (block,) = list(layout.read(layout.shard(0, 1)[0]))
    assert [row.tolist() for row in block["ids"]] == [[1, 2], [3], [], [4, 5, 6]]
    features, labels = FileBatches(layout, 0, 1, cfg, 1).first_batch(4)
    assert isinstance(features["ids"], tf.RaggedTensor) and features["ids"].to_list() == [[1, 2], [3], [], [4, 5, 6]]
    assert features["names"].to_list() == [[b"a"], [b"b", b"c"], [], [b"d"]]


def test_the_make_function_runs_before_the_files_are_listed(tmp_path, monkeypatch):
    import sys
    import types

    module = types.ModuleType("raytf_test_make")
    module.write = lambda: write_parquet(tmp_path)
    monkeypatch.setitem(sys.modules, "raytf_test_make", module)
    layout = discover(config(tmp_path, spec={"make": "raytf_test_make:write"}).data.train, "data.train")
    assert layout.rows == ROWS


@pytest.mark.parametrize("data, key", [
    ({"epochs": 2, "steps": 100}, "epochs"),
    ({"steps_per_epoch": 10}, "steps_per_epoch"),
])
def test_steps_and_epochs_contradicting_are_refused_naming_the_key(data, key):
    with pytest.raises(ConfigError, match=rf"^<config>: {key}: "):
        config_from_dict({"model": "m:f", "loss": "mse", "data": {"train": "a:b"}, **data})


def test_a_misspelt_file_spec_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown key 'data\.train\.path'") as err:
        config_from_dict({"model": "m:f", "loss": "mse", "data": {"train": {"format": "parquet", "path": "x", "label": "y"}}})
    assert "data.train.paths" in err.value.fix


def test_more_workers_than_rows_is_refused_before_any_actor(tmp_path):
    from raytf.data.sources import TrainData

    write_parquet(tmp_path, files=[(3, 3)])
    cfg = config(tmp_path)
    train = TrainData(cfg)
    assert train.plan(3, train.shard_rows(3)).steps_per_pass == 1  # one row each
    with pytest.raises(ConfigError, match="data.train has 3 row\\(s\\) for 4 workers") as err:
        train.plan(4, train.shard_rows(4))
    assert "fewer workers" in err.value.fix


@pytest.mark.parametrize("fmt", ["parquet", "tfrecord"])
def test_string_columns_are_read_as_strings_for_string_keyed_tables(tmp_path, fmt):
    """Text features (a DynamicEmbedding(key_dtype="string")'s keys), one per row or a list of them, come
    as numpy object arrays (Parquet: str, TFRecord: bytes; both hash to the same keys)."""
    import tensorflow as tf

    names = [f"item-{r}" for r in range(6)]
    tags = [[f"t{r}", f"t{r + 1}"] for r in range(6)]
    if fmt == "parquet":
        pq.write_table(pa.table({"name": names, "tags": pa.array(tags, type=pa.list_(pa.string())),
                                 "clicked": [r % 2 == 1 for r in range(6)]}), tmp_path / "part-0.parquet")
    else:
        with tf.io.TFRecordWriter(str(tmp_path / "part-0.tfrecord")) as writer:
            for r in range(6):
                feature = {"name": tf.train.Feature(bytes_list=tf.train.BytesList(value=[names[r].encode()])),
                           "tags": tf.train.Feature(bytes_list=tf.train.BytesList(value=[t.encode() for t in tags[r]])),
                           "clicked": tf.train.Feature(int64_list=tf.train.Int64List(value=[r % 2]))}
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    layout = discover(config(tmp_path, fmt).data.train, "data.train")
    assert [(c.name, c.kind, c.width) for c in layout.features] == [("name", "string", None), ("tags", "string", 2)]
    (block,) = list(layout.read(layout.shard(0, 1)[0]))
    text = np.vectorize(lambda v: v.decode() if isinstance(v, bytes) else v)
    np.testing.assert_array_equal(text(block["name"]), names)
    np.testing.assert_array_equal(text(block["tags"]), tags)
    np.testing.assert_array_equal(tf.strings.to_hash_bucket_fast(block["name"], 2**62),
                                  tf.strings.to_hash_bucket_fast(names, 2**62))
