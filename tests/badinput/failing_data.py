"""Digits data whose shard 1 breaks after a few batches (a data pipeline failing mid-run)."""

import tensorflow as tf

from examples.digits import train_examples as digits_train


def train_examples(shard_index: int, num_shards: int) -> tf.data.Dataset:
    dataset = digits_train(shard_index, num_shards)
    if shard_index != 1:
        return dataset

    def check(i, example):
        tf.debugging.assert_less(i, tf.constant(200, tf.int64), message="shard 1 is corrupt after example 200")
        return example

    return dataset.enumerate().map(check)
