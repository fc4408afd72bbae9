"""A worker's compiled step, called the cheap way once it is traced.

Calling a `tf.function` costs ~0.4 ms of Python per call here before the graph runs (finding the
trace for the arguments, checking and converting every one of them against its signature), a
quarter of a sparse model's step. The step's arguments never change shape or structure (fixed
batches, fixed row blocks, the same parameters), so after the first call it is called through its
concrete function's flat entry with the tensors as they are. Where that entry is missing (another
TensorFlow) or the arguments do not match what was traced, the function is called as usual.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from raytf.runtime import as_tensor


class CompiledStep:
    """`fn` compiled; the arguments after the first `checked` ones must keep their shapes and dtypes
    from call to call (the caller's fixed buffers), the first ones are checked at every call."""

    def __init__(self, fn: Callable, jit_compile: bool | None, checked: int) -> None:
        import tensorflow as tf

        self.function = tf.function(fn, jit_compile=jit_compile)
        self.checked = checked
        self._concrete = None
        self._shapes: tuple = ()

    def __call__(self, *args):
        import tensorflow as tf

        flat = tf.nest.flatten(args)
        if self._concrete is not None and _signature(tf.nest.flatten(args[:self.checked])) == self._shapes:
            return self._concrete._call_flat([a if isinstance(a, tf.Tensor) else _tensor(a) for a in flat],
                                             self._concrete.captured_inputs)
        outputs = self.function(*args)
        concrete = self.function.get_concrete_function(*args)
        if hasattr(concrete, "_call_flat") and len(concrete.inputs) == len(flat) + len(concrete.captured_inputs):
            self._concrete, self._shapes = concrete, _signature(tf.nest.flatten(args[:self.checked]))
        return outputs


def _signature(flat: list) -> tuple:
    """Shapes and dtypes of tensors and numpy arrays (both name their dtype alike: "int32")."""
    return tuple((tuple(a.shape), a.dtype.name) for a in flat)


def _tensor(value):
    """A step's argument as a tensor: a numpy array without a copy where aligned (the step only
    reads it; `raytf.runtime.as_tensor`), anything else as TensorFlow converts it."""
    if isinstance(value, np.ndarray):
        return as_tensor(value, read_only=True)
    import tensorflow as tf

    return tf.convert_to_tensor(value)
