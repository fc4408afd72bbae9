"""Process-level TensorFlow settings for raytf's actors."""

from __future__ import annotations

import os


def configure_tensorflow(threads: int) -> None:
    """Pin TensorFlow's thread pools before its runtime starts in this process.

    Each actor gets as many compute threads as the CPUs it reserved, so actors sharing a node do
    not oversubscribe the cores (that costs more than it gains on small machines).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        # The runtime already started in this (reused) process; keep its settings.
        pass
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass
