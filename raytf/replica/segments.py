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
    """TensorFlow's (or numpy's) `TableSpec.owner` and `TableSpec.local` of int64 global `ids`."""
    if spec.is_dynamic:
        from raytf.exchange.tables import key_owner

        return key_owner(ids, spec.servers), ids
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


DENSE_MAP_ROWS = 1 << 24  # tables up to this many rows deduplicate through a map of ids (4 bytes a row, touched rows only)
HASHED_MAP_BITS = 20  # larger tables (and dynamic ones): through a map of 2**20 places by a hash of the id (4 MB)


class IdSegmenter:
    """`id_segments` of a table's batches in numpy, for one table on one worker.

    In a busy actor an eager TensorFlow op costs ~0.5 ms (a tf.function call ~0.8: the executor's
    thread must be scheduled), and even numpy's stable sort of a batch's few thousand ids (~0.2 ms
    in a busy actor, the largest piece of a sparse step's Python) costs more than it needs to: for a
    table of up to `DENSE_MAP_ROWS` rows the distinct ids are found through a map of ids to a place
    in the batch (linear, no sort; the map is allocated once and only its touched pages are ever
    resident). The distinct ids are then in batch order within each server's segment (where one of
    their copies is); a bigger table sorts them. The step follows whichever order the request has."""

    def __init__(self, spec: TableSpec) -> None:
        import numpy as np

        self.spec = spec
        self._map = np.empty(spec.rows, np.int32) if spec.rows <= DENSE_MAP_ROWS else None
        self._hashed = np.empty(1 << HASHED_MAP_BITS, np.int32) if self._map is None else None
        self._count = np.arange(0, dtype=np.int32)

    def __call__(self, ids):
        import numpy as np

        spec = self.spec
        ids = np.asarray(ids).reshape(-1)
        if ids.dtype not in (np.int32, np.int64):
            ids = ids.astype(np.int64)
        low, high = (int(ids.min()), int(ids.max())) if ids.size else (0, 0)
        if low < 0 or high >= spec.rows:
            ids = np.clip(ids, 0, spec.rows - 1)  # out of range is an error the caller raises from low/high
        unique, positions = self._unique(ids) if self._map is not None else self._hashed_unique(ids)
        unique = unique.astype(np.int64)
        if spec.servers == 1:  # every id is the one server's, as it is
            return unique, unique, np.array([len(unique)], np.int32), low, high, positions
        owner, local = owner_and_local(spec, unique)
        # Grouped by server, stably: numpy sorts 16-bit keys by radix (linear).
        order = np.argsort(owner.astype(np.int16 if spec.servers < 1 << 15 else np.int64), kind="stable")
        counts = np.bincount(owner, minlength=spec.servers).astype(np.int32)
        rank = np.empty_like(order, dtype=np.int32)
        rank[order] = np.arange(len(order), dtype=np.int32)
        return unique[order], local[order], counts, low, high, rank.take(positions)

    def _unique(self, ids):
        """(distinct ids in batch order, each where its surviving copy is; for each id its place among
        them, int32). Each id writes its index into the map; an id whose own index survived is the
        representative of all its copies (whichever write won, every copy reads the same one back)."""
        _, first, positions = self._through_map(self._map, ids)
        return ids.compress(first), positions

    def _through_map(self, table, places):
        """Each id writes its batch index at its place of `table` and reads back the index that
        survived there (its representative): (representatives, whether each id is one, each id's place
        among the representatives in batch order)."""
        import numpy as np

        if len(self._count) < len(places):
            self._count = np.arange(len(places), dtype=np.int32)
        count = self._count[:len(places)]
        table[places] = count
        representative = table.take(places)
        first = representative == count
        place = np.cumsum(first, dtype=np.int32)
        place -= 1
        return representative, first, place.take(representative)


    def _hashed_unique(self, ids):
        """`_unique` for ids too many for a map of ids: the map's place is a hash of the id. An id whose
        place another id took (whoever wrote last) reads back that other id's index: those few (~0.3 %
        of a batch's distinct ids) are deduplicated by a sort, after the rest. The argsort of a batch's
        5,120 int64 ids cost ~155 us, this ~40."""
        import numpy as np

        from raytf.exchange.key_index import mix64

        if not len(ids):
            return ids, np.zeros(0, np.int32)
        places = (mix64(ids) >> np.uint64(64 - HASHED_MAP_BITS)).astype(np.intp)
        representative, first, positions = self._through_map(self._hashed, places)
        mapped = ids.take(representative) == ids  # all copies of an id agree: its place is its own, or not
        unique = ids.compress(first)  # (a representative is mapped)
        if not mapped.all():
            others = ~mapped
            rest, inverse = np.unique(ids[others], return_inverse=True)
            positions[others] = len(unique) + inverse.astype(np.int32)
            unique = np.concatenate([unique, rest])
        return unique, positions


def id_segments_numpy(spec: TableSpec, ids):
    """`id_segments` in numpy (a one-off `IdSegmenter`; a worker keeps one per table)."""
    return IdSegmenter(spec)(ids)


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
