"""data.train and data.eval given as functions that return a `tf.data.Dataset`: calling them with errors
that say what to fix, checking what they return, and the training pipeline's batches as numpy arrays."""

from __future__ import annotations

import re
from typing import Any, Callable, Iterator

import tensorflow as tf

from raytf.config import TrainConfig
from raytf.errors import ConfigError


def call_user(fn: Callable[..., Any], key: str, *args: Any) -> Any:
    try:
        return fn(*args)
    except ConfigError:  # raytf's own (a layer's settings refused while the model is built): it names the fix
        raise
    except Exception as err:  # noqa: BLE001 - user code; report it with its type and where it was named
        raise ConfigError(
            f"{key}: calling {getattr(fn, '__qualname__', fn)}{args} raised {type(err).__name__}: {err}.",
            "Fix that function (run it by hand to see the traceback, or rerun raytf with --debug).",
        ) from err


def train_dataset(fn: Callable[..., Any], shard: int, num_shards: int) -> tf.data.Dataset:
    dataset = call_user(fn, "data.train", shard, num_shards)
    check_dataset(dataset, "data.train")
    return dataset


def eval_dataset(fn: Callable[..., Any]) -> tf.data.Dataset:
    dataset = call_user(fn, "data.eval")
    check_dataset(dataset, "data.eval")
    return dataset


def check_dataset(dataset: Any, key: str) -> None:
    if not isinstance(dataset, tf.data.Dataset):
        raise ConfigError(
            f"{key} returned a {type(dataset).__name__}, not a tf.data.Dataset.",
            "Return tf.data.Dataset.from_tensor_slices((features, labels)) or another dataset of (features, label) pairs.",
        )
    spec = dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2):
        raise ConfigError(
            f"{key} yields elements of structure {spec}, but raytf needs (features, label) pairs.",
            "Make the dataset yield 2-tuples, e.g. from_tensor_slices((x, y)).",
        )
    for part, name in zip(spec, ("features", "labels")):
        for leaf in tf.nest.flatten(part):
            if name == "features" and leaf.dtype == tf.string:
                continue  # keys of a DynamicEmbedding(key_dtype="string"); the model check says if it takes none
            if not leaf.dtype.is_floating and not leaf.dtype.is_integer and leaf.dtype != tf.bool:
                raise ConfigError(
                    f"{key}: the {name} have dtype {leaf.dtype.name}, which a model cannot train on.",
                    f"Convert the {name} to a numeric dtype (e.g. tf.float32 or tf.int32) in the dataset.",
                )


def batches(dataset: tf.data.Dataset, config: TrainConfig, seed_offset: int = 0) -> tf.data.Dataset:
    """The training pipeline: optional shuffle, fixed-size batches, forever."""
    if config.data.shuffle_buffer:
        dataset = dataset.shuffle(config.data.shuffle_buffer, seed=config.seed + seed_offset, reshuffle_each_iteration=True)
    return dataset.batch(config.batch_size, drop_remainder=True).repeat().prefetch(2)


GROUP_BATCHES, GROUP_BYTES = 8, 4 * 2**20


def batch_stream(stream: tf.data.Dataset) -> Iterator:
    """The batches of `stream` (a batched dataset, e.g. `batches`), as numpy arrays read from TensorFlow
    up to GROUP_BATCHES at a time while a group stays under GROUP_BYTES (a dataset iterator's next costs
    ~0.4 ms here whatever it returns: a sparse model's step is a few milliseconds). A slow pipeline still
    yields at the rate it reads, in groups. Datasets of anything but dense tensors of known shapes (ragged,
    sparse) and batches of a megabyte or more yield their tensors one batch at a time."""
    specs = tf.nest.flatten(stream.element_spec)
    if not all(isinstance(spec, tf.TensorSpec) and spec.shape.is_fully_defined() for spec in specs):
        yield from stream
        return
    batch_bytes = sum(spec.shape.num_elements() * spec.dtype.size for spec in specs)
    group = max(1, min(GROUP_BATCHES, GROUP_BYTES // max(batch_bytes, 1)))
    if group == 1:
        yield from stream
        return
    for chunk in stream.batch(group).prefetch(1):
        arrays = tf.nest.map_structure(lambda t: t.numpy(), chunk)
        for i in range(group):
            yield _item(arrays, i)


def _item(structure, i: int):
    """Batch `i` of a group's (nested) arrays; tf.nest.map_structure costs ~60 us here."""
    if isinstance(structure, dict):
        return {key: _item(value, i) for key, value in structure.items()}
    if isinstance(structure, tuple):
        items = [_item(value, i) for value in structure]
        return type(structure)(*items) if hasattr(structure, "_fields") else tuple(items)
    if isinstance(structure, list):
        return [_item(value, i) for value in structure]
    return structure[i]


def first_batch(dataset: tf.data.Dataset, batch_size: int, key: str):
    try:
        return next(iter(dataset.batch(batch_size)))
    except StopIteration:
        raise ConfigError(f"{key} returned an empty dataset.", "Check the data function and the shard it is asked for.") from None
    except tf.errors.OpError as err:
        if "Cannot batch tensors with different shapes" in str(err):
            raise ConfigError(
                f"{key}: the examples do not all have the same shape, so they cannot be batched. TensorFlow said: {_tf_said(err)}",
                "Give every example the same shape in the dataset (pad, crop or resize them in a map()).",
            ) from None
        raise ConfigError(
            f"{key}: reading the first batch of {batch_size} examples failed with {type(err).__name__}: {_tf_said(err)}",
            "Fix the dataset pipeline (iterate it by hand, e.g. next(iter(dataset)), to see where it fails).",
        ) from None



def _tf_said(err: Exception) -> str:
    """The first line of a TensorFlow op error, without its function-node and op decorations."""
    lines = [line.strip() for line in without_op_noise(getattr(err, "message", None) or str(err)).splitlines()]
    lines = [line for line in lines if line]
    return lines[0] if lines else type(err).__name__


def without_op_noise(message: str) -> str:
    """A TensorFlow error's message without its function-node and op decorations."""
    message = re.sub(r"\{\{function_node [^}]*\}\}", "", message)
    return re.sub(r"\s*\[Op:[^\]]*\]( name: \S*)?", "", message)
