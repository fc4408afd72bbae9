"""A batch's sparse ids as per-server segments of distinct ids, worked out in one graph call.

Before a batch is computed, its rows are asked for: the distinct ids it looks up, per server that
owns them (local positions). Doing that in numpy between steps (np.unique, a mask per server) cost
milliseconds; here it is a few ops in a graph: the ids sorted by (owner, id), so each server's
distinct ids are one contiguous segment, and for each looked-up id its place among them. The
worker's compiled step then sums the batch's gradient rows straight into that order
(`unsorted_segment_sum` by those places: no sort inside XLA, whose CPU sort is slow), in lookup
order, as np.add.at and the whole-table gradient sum them.
"""

from __future__ import annotations

from raytf.exchange.tables import TableSpec


def owner_and_local(spec: TableSpec, ids):
    """TensorFlow's `TableSpec.owner` and `TableSpec.local` of int64 global `ids`."""
    if spec.partition == "mod":
        return ids % spec.servers, ids // spec.servers
    block = -(-spec.rows // spec.servers)
    return ids // block, ids % block


def id_segments(spec: TableSpec, ids):
    """The rows a batch needs, for `ids` (any shape, any int type): (distinct global ids [N] int64,
    their local ids [N] int64, per-server counts [servers] int32, min id, max id, positions [N] int32),
    sorted by (owner, id), so each server's ids are one contiguous segment (past the last one,
    padding); `positions`: each of `ids`' place among the distinct ones."""
    import tensorflow as tf

    ids = tf.cast(tf.reshape(ids, [-1]), tf.int64)
    low, high = tf.reduce_min(ids), tf.reduce_max(ids)
    ids = tf.clip_by_value(ids, 0, spec.rows - 1)  # out of range is an error the caller raises from low/high
    owner, _ = owner_and_local(spec, ids)
    key = owner * spec.rows + ids
    order = tf.argsort(key, stable=True)
    sorted_key = tf.gather(key, order)
    size = tf.shape(sorted_key)[0]
    first = tf.concat([tf.ones([1], tf.bool), sorted_key[1:] != sorted_key[:-1]], 0)
    segment = tf.cumsum(tf.cast(first, tf.int32)) - 1
    unique = tf.math.unsorted_segment_max(sorted_key, segment, size) % spec.rows
    _, local = owner_and_local(spec, unique)
    counts = tf.math.unsorted_segment_sum(tf.cast(first, tf.int32), sorted_key // spec.rows, spec.servers)
    return unique, local, counts, low, high, tf.gather(segment, tf.math.invert_permutation(order))
