"""A batch's row request: the graph version and the numpy one agree, and both describe the batch."""

import numpy as np
import pytest
import tensorflow as tf

from raytf.exchange.tables import TableSpec
from raytf.replica.segments import id_segments, id_segments_numpy


@pytest.mark.parametrize("partition", ["mod", "div"])
@pytest.mark.parametrize("servers", [1, 3])
def test_the_numpy_request_is_the_graph_request(servers, partition):
    spec = TableSpec(variable=0, layer="items", rows=1000, width=4, servers=servers, partition=partition)
    ids = np.random.default_rng(0).integers(0, 1000, size=(16, 5)).astype(np.int32)
    ids[0, :3] = 7  # repeats
    graph = tf.function(lambda x: id_segments(spec, x))(tf.constant(ids))
    fast = id_segments_numpy(spec, ids)
    # The same counts and range; the same ids per server, maybe in another order.
    for k in (2, 3, 4):
        np.testing.assert_array_equal(np.asarray(fast[k]), np.asarray(graph[k]))
    flat = ids.reshape(-1)
    for unique, local, counts, low, high, positions in (fast, [np.asarray(t) for t in graph]):
        np.testing.assert_array_equal(unique[positions], flat)  # every looked-up id's place among the distinct ones
        assert sorted(unique.tolist()) == sorted(set(flat.tolist())) and counts.sum() == len(unique)
        np.testing.assert_array_equal(spec.local(unique), local)
        start = 0
        for server, count in enumerate(counts):  # each server's ids one segment
            assert (spec.owner(unique[start:start + count]) == server).all()
            start += count
        assert (low, high) == (flat.min(), flat.max())


@pytest.mark.parametrize("rows", [1000, (1 << 24) + 1])  # through the map of ids; sorted (a table too big for it)
def test_a_segmenter_describes_every_batch_it_is_given(rows):
    from raytf.replica.segments import IdSegmenter

    spec = TableSpec(variable=0, layer="items", rows=rows, width=4, servers=2, partition="mod")
    segment = IdSegmenter(spec)
    rng = np.random.default_rng(2)
    for size in (40, 300, 7, 0):  # the map is reused, batches grow and shrink
        ids = rng.integers(0, 60, size=size) * (rows // 60)
        unique, local, counts, low, high, positions = segment(ids)
        np.testing.assert_array_equal(unique[positions], ids)
        assert sorted(unique.tolist()) == sorted(set(ids.tolist())) and counts.sum() == len(unique)
        np.testing.assert_array_equal(spec.local(unique), local)
        assert positions.dtype == np.int32
    *_, low, high, _ = segment(np.array([3, -1, rows]))  # out of range: reported by the range, not an IndexError
    assert (low, high) == (-1, rows)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_unique_is_numpys(dtype):
    from raytf.replica.segments import _unique

    ids = np.random.default_rng(1).integers(0, 50, size=300).astype(dtype)
    for case in (ids, ids[:1], ids[:0]):
        unique, positions = _unique(case)
        want_unique, want_positions = np.unique(case, return_inverse=True)
        np.testing.assert_array_equal(unique, want_unique)
        np.testing.assert_array_equal(positions, want_positions.reshape(-1))
        assert positions.dtype == np.int32


def test_an_unaligned_small_array_becomes_an_aligned_tensor_with_its_values():
    from raytf.runtime import ALIGN_BYTES, as_tensor

    raw = np.arange(1001, dtype=np.int32)
    unaligned = raw[1:] if raw[1:].ctypes.data % ALIGN_BYTES else raw[2:]
    tensor = as_tensor(unaligned, read_only=True)
    np.testing.assert_array_equal(tensor.numpy(), unaligned)
    assert np.from_dlpack(tensor).ctypes.data % ALIGN_BYTES == 0


@pytest.mark.parametrize("bits", [20, 3])  # a map of 8 places: most ids collide and go to the sort
def test_ids_too_many_for_a_map_of_ids_dedupe_through_a_hashed_map(monkeypatch, bits):
    from raytf.replica import segments

    monkeypatch.setattr(segments, "HASHED_MAP_BITS", bits)
    spec = TableSpec(variable=0, layer="items", rows=2**62, width=4, servers=3, partition="hash")  # a dynamic table
    segment = segments.IdSegmenter(spec)
    rng = np.random.default_rng(5)
    for size in (500, 64, 1, 0):
        ids = rng.integers(0, 2**62, size=size // 2 + 1)[rng.integers(0, size // 2 + 1, size=size)]  # repeats
        unique, local, counts, low, high, positions = segment(ids)
        np.testing.assert_array_equal(unique[positions], ids)
        assert len(unique) == len(set(ids.tolist())) == counts.sum()
        np.testing.assert_array_equal(local, unique)  # a dynamic table's local id is the key
        start = 0
        for server, count in enumerate(counts):
            assert (spec.owner(unique[start:start + count]) == server).all()
            start += count
