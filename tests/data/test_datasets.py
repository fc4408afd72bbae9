"""data.train as a function with epochs: passes in which every example of each shard is read once,
the last batch filled with weightless copies; of unknown size, epochs need steps_per_epoch."""

from __future__ import annotations

import pytest

from raytf.config import config_from_dict
from raytf.data.epochs import resolve_epochs
from raytf.data.sources import DataPlan, TrainData
from raytf.errors import ConfigError
from tests.data.sample_data import EXAMPLES


def config(**extra):
    return config_from_dict({"model": "m:f", "loss": "mse", "batch_size": 16, "epochs": 2,
                             "data": {"train": "tests.data.sample_data:train", "shuffle_buffer": 30}, **extra})


def test_a_functions_shards_are_read_once_per_pass_with_the_last_batch_filled():
    cfg = config()
    train = TrainData(cfg)
    rows = train.shard_rows(2)
    assert rows == [51, 50]
    plan = train.plan(2, rows)
    assert plan == DataPlan(None, 4)  # ceil(51 / 16)
    assert resolve_epochs(cfg, rows).steps == 8
    streams = [train.batches(w, 2, plan) for w in range(2)]
    passes = []
    for _ in range(3):
        seen = []
        for stream in streams:
            for _ in range(plan.steps_per_pass):
                x, y, w = next(stream)
                assert x.shape == (16, 1) and w.shape == (16,)
                seen.extend(x[w == 1, 0].astype(int).tolist())
        assert sorted(seen) == list(range(EXAMPLES))
        passes.append(seen)
    assert passes[0] != passes[1]  # reshuffled every pass


def test_without_epochs_a_function_is_read_as_a_stream_of_full_batches():
    cfg = config_from_dict({"model": "m:f", "loss": "mse", "batch_size": 16, "data": {"train": "tests.data.sample_data:train"}})
    train = TrainData(cfg)
    plan = train.plan(2, None)
    assert plan == DataPlan()
    batch = next(train.batches(0, 2, plan))
    assert len(batch) == 2 and batch[0].shape == (16, 1)


def test_a_dataset_of_unknown_size_needs_steps_per_epoch():
    cfg = config(data={"train": "tests.data.sample_data:filtered"})
    train = TrainData(cfg)
    rows = train.shard_rows(2)
    assert rows is None and train.plan(2, rows) == DataPlan()
    with pytest.raises(ConfigError, match="epochs: the size of data.train's dataset is unknown") as err:
        resolve_epochs(cfg, rows)
    assert "steps_per_epoch" in err.value.fix
    given = config(data={"train": "tests.data.sample_data:filtered"}, steps_per_epoch=5)
    assert resolve_epochs(given, rows).steps == 10


def test_ray_data_columns_become_what_the_model_takes():
    import numpy as np

    from raytf.data.ray_data import column

    lists = np.empty(2, dtype=object)
    lists[:] = [np.array([1, 2, 3]), np.array([4, 5, 6])]
    assert column(lists, "ids", "data.train").tolist() == [[1, 2, 3], [4, 5, 6]]  # lists of one length: 2-D
    assert column(np.array([True, False]), "clicked", "data.train").dtype == np.float32
    assert column(np.array([1, 2], np.int64), "id", "data.train").dtype == np.int64  # ids stay integers
    ragged = np.empty(2, dtype=object)
    ragged[:] = [np.array([1, 2]), np.array([3])]
    with pytest.raises(ConfigError, match="column 'ids' holds lists of different lengths"):
        column(ragged, "ids", "data.train")


@pytest.mark.parametrize("spec, key", [
    ({"format": "ray_data", "label": "y"}, "data.train.dataset"),
    ({"format": "ray_data", "dataset": "a:b", "paths": "x", "label": "y"}, "data.train.paths"),
    ({"format": "parquet", "label": "y"}, "data.train.paths"),
    ({"format": "csv", "paths": "x", "dataset": "a:b", "label": "y"}, "data.train.dataset"),
])
def test_a_data_spec_takes_the_source_of_its_format(spec, key):
    with pytest.raises(ConfigError, match=rf"^<config>: {key}: "):
        config_from_dict({"model": "m:f", "loss": "mse", "data": {"train": spec}})
