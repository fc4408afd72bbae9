"""A sparse table's gradient as per-server row segments, computed inside the worker's compiled step.

The step's gradient of an embedding table is the ids it looked up (batch x ids per example, a
static count N) and one gradient row each. What a server gets is the distinct ids it owns (local
positions) and the sum of their rows. Doing that in numpy between steps (np.unique, np.add.at, a
mask per server) cost more than the step's compute; here it is a few fused ops of the step itself,
in fixed-size outputs that XLA compiles: the ids sorted stably by (owner, id), equal ids summed in
the order they were looked up (what np.add.at and the whole-table gradient sum), so each server's
rows are one contiguous segment `[start, start + count)` of the outputs and everything past the
last segment is padding.
"""

from __future__ import annotations

from raytf.exchange.tables import TableSpec


def owner_and_local(spec: TableSpec, ids):
    """TensorFlow's `TableSpec.owner` and `TableSpec.local` of int64 global `ids`."""
    if spec.partition == "mod":
        return ids % spec.servers, ids // spec.servers
    block = -(-spec.rows // spec.servers)
    return ids // block, ids % block


def row_segments(spec: TableSpec, ids, rows, cached_ids=None):
    """(local ids [N] int64, summed rows [N, width] float32, per-server counts [servers] int32) of a
    table's gradient `ids` [N] / `rows` [N, width]. With `cached_ids` (a ShardedEmbedding's cache),
    `ids` are positions in the cache and are translated to global ids first."""
    import tensorflow as tf

    ids = tf.cast(ids, tf.int64)
    if cached_ids is not None:
        ids = tf.gather(cached_ids, ids)
    owner, _ = owner_and_local(spec, ids)
    key = owner * spec.rows + ids  # sorts by server, then by id
    order = tf.argsort(key, stable=True)  # equal ids keep the order they were looked up in
    sorted_key = tf.gather(key, order)
    size = tf.shape(sorted_key)[0]
    first = tf.concat([tf.ones([1], tf.bool), sorted_key[1:] != sorted_key[:-1]], 0)
    segment = tf.cumsum(tf.cast(first, tf.int32)) - 1
    summed = tf.math.unsorted_segment_sum(tf.gather(rows, order), segment, size)
    unique = tf.math.unsorted_segment_max(sorted_key, segment, size) % spec.rows  # padding: garbage, never read
    _, local = owner_and_local(spec, unique)
    counts = tf.math.unsorted_segment_sum(tf.cast(first, tf.int32), sorted_key // spec.rows, spec.servers)
    return local, summed, counts


def id_segments(spec: TableSpec, ids):
    """The rows a batch needs, for `ids` (any shape, any int type): (distinct global ids [N] int64,
    their local ids [N] int64, per-server counts [servers] int32, min id, max id), sorted by
    (owner, id), so each server's ids are one contiguous segment; past the last one, padding."""
    import tensorflow as tf

    ids = tf.cast(tf.reshape(ids, [-1]), tf.int64)
    low, high = tf.reduce_min(ids), tf.reduce_max(ids)
    ids = tf.clip_by_value(ids, 0, spec.rows - 1)  # out of range is an error the caller raises from low/high
    owner, _ = owner_and_local(spec, ids)
    sorted_key = tf.sort(owner * spec.rows + ids)
    size = tf.shape(sorted_key)[0]
    first = tf.concat([tf.ones([1], tf.bool), sorted_key[1:] != sorted_key[:-1]], 0)
    segment = tf.cumsum(tf.cast(first, tf.int32)) - 1
    unique = tf.math.unsorted_segment_max(sorted_key, segment, size) % spec.rows
    _, local = owner_and_local(spec, unique)
    counts = tf.math.unsorted_segment_sum(tf.cast(first, tf.int32), sorted_key // spec.rows, spec.servers)
    return unique, local, counts, low, high
