"""Data for the sparse-table tests: the small click model's, one id out of the table's range."""

import tensorflow as tf

from examples.recsys import _examples


def out_of_range_examples(shard_index: int, num_shards: int) -> tf.data.Dataset:
    ids, clicks = _examples(20_000, 2_000, seed=2)
    ids[5, 3] = 20_000  # the table has rows 0..19,999
    return tf.data.Dataset.from_tensor_slices((ids[shard_index::num_shards], clicks[shard_index::num_shards]))
