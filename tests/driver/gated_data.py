"""Digits data whose reader, once it has read `AFTER` examples, waits until the test opens a gate
(a file): a worker trains on until then and no further, however fast the exchange is. The test
opens the gate once what it waits for has happened (e.g. a restarted worker is connected again), so
that the worker that was held up is still training then. Each process counts its own reads; a gate
left closed is given up after `LIMIT` seconds (the test then fails on its own assertions, not by hanging)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import tensorflow as tf

from examples.digits import train_examples as digits_examples

AFTER = 2500  # examples read (about three passes over a shard: past the shuffle buffer's fill)
LIMIT = 120.0
GATE = Path("/tmp") / f"raytf-{os.getuid()}-test-gate"  # not tempfile.gettempdir(): actors have a private TMPDIR
_read = 0


def _count_and_wait() -> bool:
    global _read
    _read += 1
    if _read == AFTER:
        deadline = time.monotonic() + LIMIT
        while not GATE.exists() and time.monotonic() < deadline:
            time.sleep(0.01)  # polling a file another process creates: the gate
    return True


def train_examples(shard_index: int, num_shards: int) -> tf.data.Dataset:
    def gated(x, y):
        passed = tf.py_function(_count_and_wait, [], tf.bool)
        with tf.control_dependencies([passed]):
            return tf.identity(x), tf.identity(y)

    return digits_examples(shard_index, num_shards).map(gated)
