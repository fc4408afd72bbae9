"""A data.train function for the data tests: example r is (features [r], label r % 2), 101 of them,
shard i of n the examples i, i + n, ..."""

import numpy as np
import tensorflow as tf

EXAMPLES = 101


def train(shard_index: int, num_shards: int) -> tf.data.Dataset:
    rows = np.arange(shard_index, EXAMPLES, num_shards, dtype=np.float32)
    return tf.data.Dataset.from_tensor_slices((rows[:, None], rows % 2))


def filtered(shard_index: int, num_shards: int) -> tf.data.Dataset:
    """Of unknown size: a filter leaves tf.data's cardinality unknown."""
    return train(shard_index, num_shards).filter(lambda x, y: True)


def ray_rows(rows: int = 1000):
    """A Ray Data dataset of `rows` rows: id (0..rows-1) and label (id % 2), in 8 blocks."""
    import ray.data

    return ray.data.range(rows, override_num_blocks=8).map_batches(
        lambda batch: {"id": batch["id"], "label": batch["id"] % 2}, batch_format="numpy")


def ray_rows_odd():
    return ray_rows(1001)
