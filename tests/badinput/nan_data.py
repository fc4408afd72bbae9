"""Digits data with one NaN pixel in shard 1 (example 100): one batch per pass over that shard
has a non-finite gradient."""

import numpy as np
import tensorflow as tf

from examples.digits import _split

BAD_EXAMPLE = 100


def train_examples(shard_index: int, num_shards: int) -> tf.data.Dataset:
    (features, labels), _ = _split()
    features, labels = features[shard_index::num_shards].copy(), labels[shard_index::num_shards]
    if shard_index == 1:
        features[BAD_EXAMPLE, 0] = np.nan
    return tf.data.Dataset.from_tensor_slices((features, labels))
