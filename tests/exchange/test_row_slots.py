"""Sparse rows over shared memory: a worker's pushed rows and wanted ids reach the server in place, the
rows sent back reach the worker; fixed capacity, 64-byte aligned, 0600, removed with the pair."""

import glob
import os
import stat
import uuid

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from raytf.exchange.row_slots import RowLayout  # noqa: E402
from raytf.exchange.tables import TableSpec  # noqa: E402
from raytf.exchange.transport import ServerSlots, WorkerLink, shm_available, shm_root, shm_run_dir  # noqa: E402

pytestmark = pytest.mark.skipif(not shm_available(), reason="no writable /dev/shm on this machine")

TABLES = (TableSpec(variable=0, layer="a", rows=100, width=3, servers=2, per_batch=8),
          TableSpec(variable=1, layer="b", rows=50, width=5, servers=2, per_batch=4))


def test_a_layout_needs_a_fixed_number_of_ids_per_batch_and_aligns_every_segment():
    assert RowLayout.of(()) is None
    assert RowLayout.of((TABLES[0], TableSpec(variable=1, layer="c", rows=9, width=2, servers=1))) is None  # per_batch 0
    layout = RowLayout.of(TABLES)
    places, end = layout._offsets()
    assert all(offset % 64 == 0 for place in places for offset in place) and end == layout.nbytes
    assert places[0][1] - places[0][0] >= 8 * 8 and places[1][3] + 4 * 4 * 5 <= end  # room for every segment


def test_rows_pushed_and_sent_back_round_trip_through_the_pairs_row_slot():
    run = f"test-{uuid.uuid4().hex[:8]}"
    layout = RowLayout.of(TABLES)
    server = ServerSlots(run, 1, 16, shm_workers={0, 1}, shared_params=True, rows=layout)
    try:
        spec = server.link_spec(1)
        assert spec.rows_path and stat.S_IMODE(os.stat(os.path.join(shm_root(), spec.rows_path)).st_mode) == 0o600
        link = WorkerLink(spec, 16, layout)
        pushed = [(np.array([3, 7]), np.arange(6, dtype=np.float32).reshape(2, 3)),
                  (np.array([1, 2, 4, 9]), np.ones((4, 5), np.float32))]
        link.rows.write_push(pushed, [np.array([5]), np.array([8, 0])])
        rows, wanted = server.row_slot(1).read_push()
        for (got_ids, got_rows), (ids, values) in zip(rows, pushed):
            np.testing.assert_array_equal(got_ids, ids)
            np.testing.assert_array_equal(got_rows, values)
            assert got_rows.ctypes.data % 64 == 0  # the server's update takes it as a tensor without a copy
        assert [w.tolist() for w in wanted] == [[5], [8, 0]]
        server.row_slot(1).send([np.full((1, 3), 2.0, np.float32), np.full((2, 5), 3.0, np.float32)])
        back = link.rows.rows_sent()
        assert [b.shape for b in back] == [(1, 3), (2, 5)]
        np.testing.assert_array_equal(back[1], np.full((2, 5), 3.0))
        # A non-finite gradient: nothing to apply, the wanted rows still asked for.
        link.rows.write_push(None, [np.array([1, 2, 3]), np.array([], np.int64)])
        rows, wanted = server.row_slot(1).read_push()
        assert [len(ids) for ids, _ in rows] == [0, 0] and [len(w) for w in wanted] == [3, 0]
        assert len(server.row_slot(0).read_push()[1][0]) == 0  # the other worker's slot was not touched
    finally:
        server.close()
    assert glob.glob(os.path.join(shm_run_dir(run), "*")) == []


def test_a_server_of_rows_only_still_gives_shared_memory_links_with_row_slots():
    """A server whose shard has no dense variable (more servers than variables) exchanges rows too."""
    run = f"test-{uuid.uuid4().hex[:8]}"
    server = ServerSlots(run, 2, 0, shm_workers={0}, shared_params=False, rows=RowLayout.of(TABLES))
    try:
        spec = server.link_spec(0)
        assert spec.kind == "shm" and spec.rows_path
        link = WorkerLink(spec, 0, RowLayout.of(TABLES))
        assert link.send([], ()) is None and server.gradient(0, None) is None  # no dense part to move
        server.publish(np.zeros(0, np.float32), version=1, worker=0)
        assert link.receive(server.reply(0)).shape == (0,)
        assert server.relink(0, "object_store").kind == "object_store" and server.row_slot(0) is None
        assert glob.glob(os.path.join(shm_run_dir(run), "ps2-r0")) == []
    finally:
        server.close()
