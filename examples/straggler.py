"""Digits with stragglers in the data pipeline, for the straggler benchmark (examples/straggler_benchmark.py).

* `train_slow_last_shard`: the last shard's pipeline takes SLOW_SECONDS_PER_BATCH per batch (a
  worker on a slow disk, or a noisy neighbour): a sync barrier waits for it every round.
* `train_staggered_stalls`: every shard stalls for STALL_SECONDS once every STALL_EVERY batches,
  each at its own phase, spread over the period (short hiccups that never hit all workers at once).

The delays are `time.sleep` in a `tf.py_function` before the first example of a batch (the
benchmark reads each shard in order, batch size BATCH), so they hold up the pipeline as a slow
reader would.
"""

from __future__ import annotations

import time

import tensorflow as tf

from examples.digits import build_model, eval_examples  # noqa: F401 - the benchmark's model and eval set
from examples.digits import train_examples as digits_train

BATCH = 64  # the benchmark's batch size, to turn per-batch delays into per-example ones
SLOW_SECONDS_PER_BATCH = 0.2
STALL_SECONDS = 0.3  # longer than the 2 batches the pipeline prefetches hide
STALL_EVERY = 8  # batches


def _delayed(dataset: tf.data.Dataset, seconds: float, delayed) -> tf.data.Dataset:
    """`dataset` with a `seconds` wait before each example whose index (in its epoch) is `delayed`."""

    def wait(index):
        time.sleep(seconds)
        return index

    def step(index, example):
        # Only the delayed examples pay for a Python call; the others stay in TensorFlow.
        tf.cond(delayed(index), lambda: tf.py_function(wait, [index], tf.int64), lambda: index)
        return example

    return dataset.enumerate().map(step)


def train_slow_last_shard(shard_index: int, num_shards: int) -> tf.data.Dataset:
    dataset = digits_train(shard_index, num_shards)
    if shard_index != num_shards - 1:
        return dataset
    return _delayed(dataset, SLOW_SECONDS_PER_BATCH, lambda index: index % BATCH == 0)


def train_staggered_stalls(shard_index: int, num_shards: int) -> tf.data.Dataset:
    dataset = digits_train(shard_index, num_shards)
    period, phase = STALL_EVERY * BATCH, shard_index * (STALL_EVERY // num_shards) * BATCH
    return _delayed(dataset, STALL_SECONDS, lambda index: index % period == phase)
