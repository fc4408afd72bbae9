"""A batch's sparse ids as per-server segments of distinct ids, worked out in one graph call.

Before a batch is computed, its rows are asked for: the distinct ids it looks up, per server that
owns them (local positions). Doing that in numpy between steps (np.unique, a mask per server) cost
milliseconds; here it is a few ops in a graph: the distinct ids (a hash) grouped by owner, so each
server's are one contiguous segment, and for each looked-up id its place among them. The
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
    """The rows a batch needs, for `ids` (any shape, any int type): (distinct global ids [U] int64,
    their local ids [U] int64, per-server counts [servers] int32, min id, max id, positions [N] int32),
    grouped by owner (each server's ids one contiguous segment, in order of first lookup) and, for
    each of `ids`, its place among the distinct ones."""
    import tensorflow as tf

    ids = tf.cast(tf.reshape(ids, [-1]), tf.int64)
    low, high = tf.reduce_min(ids), tf.reduce_max(ids)
    ids = tf.clip_by_value(ids, 0, spec.rows - 1)  # out of range is an error the caller raises from low/high
    unique, positions = tf.unique(ids, out_idx=tf.int32)  # a hash, not a sort: O(N)
    owner, local = owner_and_local(spec, unique)
    if spec.servers == 1:
        return unique, local, tf.shape(unique), low, high, positions
    order = tf.argsort(owner, stable=True)  # group by server: a sort of the few distinct ids only
    counts = tf.math.unsorted_segment_sum(tf.ones_like(owner, tf.int32), owner, spec.servers)
    return (tf.gather(unique, order), tf.gather(local, order), counts, low, high,
            tf.gather(tf.math.invert_permutation(order), positions))


def id_segments_numpy(spec: TableSpec, ids):
    """`id_segments` for a batch's ids in numpy, the distinct ids sorted within each server's segment
    (not in order of first lookup; the step follows whichever order the request has). In a busy actor
    an eager TensorFlow op costs ~0.5 ms (a tf.function call ~0.8: the executor's thread must be
    scheduled), several times numpy's sort of a batch's few thousand ids."""
    import numpy as np

    ids = np.asarray(ids).reshape(-1)
    if ids.dtype not in (np.int32, np.int64):
        ids = ids.astype(np.int64)
    low, high = (int(ids.min()), int(ids.max())) if ids.size else (0, 0)
    unique, positions = _unique(np.clip(ids, 0, spec.rows - 1))
    unique = unique.astype(np.int64)
    owner, local = owner_and_local(spec, unique)
    if spec.servers == 1:
        return unique, local, np.array([len(unique)], np.int32), low, high, positions
    order = np.argsort(owner, kind="stable")
    counts = np.bincount(owner, minlength=spec.servers).astype(np.int32)
    rank = np.empty_like(order, dtype=np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    return unique[order], local[order], counts, low, high, rank[positions]


def _unique(ids):
    """np.unique(ids, return_inverse=True) (sorted distinct ids; for each id its place among them,
    int32), ~25 % faster: one stable argsort, the rest linear."""
    import numpy as np

    if not len(ids):
        return ids, np.zeros(0, np.int32)
    order = np.argsort(ids, kind="stable")
    ordered = ids[order]
    first = np.empty(len(ids), bool)
    first[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    positions = np.empty(len(ids), np.int32)
    positions[order] = np.cumsum(first, dtype=np.int32) - 1
    return ordered[first], positions
