"""Optimizers that update one flat float32 buffer with a single fused `tf.raw_ops` kernel.

A parameter server holds its whole shard as one variable, so an update is one
`ResourceApply*` call over a contiguous buffer instead of one op per layer. The formulas are
TensorFlow's own kernels (the same ones `tf.compat.v1.train` optimizers use).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from raytf.config import OptimizerConfig

SLOT_NAMES = {
    "sgd": (),
    "momentum": ("momentum",),
    "adam": ("m", "v"),
    "adagrad": ("accumulator",),
    "rmsprop": ("ms", "mom"),
}


class FlatOptimizer:
    """One shard's parameters, optimizer slots and update step."""

    def __init__(self, config: OptimizerConfig, initial: np.ndarray, slots: dict[str, np.ndarray] | None = None,
                 iterations: int = 0) -> None:
        """`slots` and `iterations` restore a checkpointed optimizer state; without them the
        slots start as the optimizer's own initial values."""
        self.config = config
        size = initial.shape[0]
        self.params = tf.Variable(initial.astype(np.float32, copy=False), name="params")
        fill = config.initial_accumulator_value if config.name == "adagrad" else 0.0
        self.slots = {
            name: tf.Variable(slots[name] if slots else tf.fill([size], fill), name=name)
            for name in SLOT_NAMES[config.name]
        }
        self.iterations = tf.Variable(iterations, dtype=tf.int64, name="iterations")
        self.size = size
        # XLA fuses the mean of the gradients with the update into one pass over memory (about
        # 2x faster than the graph kernels for SGD); graph mode is the fallback.
        self._jit = tf.function(self._apply_mean, jit_compile=True)
        self._graph = tf.function(self._apply_mean)
        self._use_jit = True

    def apply_mean(self, grads: list) -> None:
        """Apply the mean of `grads` to the parameters."""
        if self._use_jit:
            try:
                self._jit(grads)
                return
            except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
                self._use_jit = False
        self._graph(grads)

    def params_view(self) -> np.ndarray:
        """The current parameters as a numpy view of the variable's own buffer (no copy).

        Returning the parameters from the update function instead costs a fresh output buffer;
        the caller copies this view out and drops it before the next update, which then runs
        in place.
        """
        return np.from_dlpack(self.params.value())

    def state(self) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
        """Copies of the parameters and slots, and the update count (for a checkpoint)."""
        slots = {name: np.array(var.numpy(), copy=True) for name, var in self.slots.items()}
        return np.array(self.params_view(), copy=True), slots, int(self.iterations.numpy())

    def _apply_mean(self, grads: list) -> None:
        grad = grads[0] if len(grads) == 1 else tf.add_n(grads) * (1.0 / len(grads))
        return self._apply(grad)

    def _apply(self, grad: tf.Tensor) -> None:
        dense_update(self.config, self.params, self.slots, self.iterations, grad)


def dense_update(config: OptimizerConfig, var: tf.Variable, slots: dict[str, tf.Variable], iterations: tf.Variable,
                 grad: tf.Tensor) -> None:
    """One `ResourceApply*` update of `var` (and its slots) with the gradient `grad` of the same shape."""
    c = config
    lr = tf.constant(c.learning_rate, tf.float32)
    handle = var.handle
    if c.name == "sgd":
        tf.raw_ops.ResourceApplyGradientDescent(var=handle, alpha=lr, delta=grad)
    elif c.name == "momentum":
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=handle, accum=slots["momentum"].handle, lr=lr, grad=grad,
            momentum=tf.constant(c.momentum, tf.float32), use_nesterov=c.nesterov,
        )
    elif c.name == "adam":
        step = tf.cast(iterations + 1, tf.float32)
        b1, b2 = tf.constant(c.beta_1, tf.float32), tf.constant(c.beta_2, tf.float32)
        tf.raw_ops.ResourceApplyAdam(
            var=handle, m=slots["m"].handle, v=slots["v"].handle,
            beta1_power=tf.pow(b1, step), beta2_power=tf.pow(b2, step), lr=lr,
            beta1=b1, beta2=b2, epsilon=tf.constant(c.epsilon, tf.float32), grad=grad,
        )
    elif c.name == "adagrad":
        tf.raw_ops.ResourceApplyAdagradV2(
            var=handle, accum=slots["accumulator"].handle, lr=lr,
            epsilon=tf.constant(c.epsilon, tf.float32), grad=grad,
        )
    elif c.name == "rmsprop":
        tf.raw_ops.ResourceApplyRMSProp(
            var=handle, ms=slots["ms"].handle, mom=slots["mom"].handle, lr=lr,
            rho=tf.constant(c.rho, tf.float32), momentum=tf.constant(c.momentum, tf.float32),
            epsilon=tf.constant(c.epsilon, tf.float32), grad=grad,
        )
    else:  # unreachable: the config validates the name
        raise ValueError(c.name)
    iterations.assign_add(1)


class RowOptimizer:
    """One server's rows of a sparse embedding table, (rows, width), with their optimizer slots.

    An update touches only the rows a step's gradient has (unique ids, already summed and averaged):
    gather, subtract and `ResourceScatterUpdate` for SGD, `ResourceSparseApplyAdagradV2`, `ResourceSparseApplyKerasMomentum`,
    `ResourceSparseApplyRMSProp`, and a lazy Adam (gather, update, scatter). For SGD and Adagrad that
    is exactly the dense update (an untouched row's gradient is zero and changes nothing); momentum,
    RMSProp and Adam would also decay untouched rows' slots, which the lazy update skips
    (`dense_slots=True` does the dense update of the whole table instead: exact, and a full pass).
    """

    LAZY = ("momentum", "rmsprop", "adam")

    def __init__(self, config: OptimizerConfig, initial: np.ndarray, slots: dict[str, np.ndarray] | None = None,
                 iterations: int = 0, dense_slots: bool = False) -> None:
        self.config = config
        self.shape = tuple(initial.shape)
        self.params = tf.Variable(initial.astype(np.float32, copy=False), name="rows")
        fill = config.initial_accumulator_value if config.name == "adagrad" else 0.0
        self.slots = {name: tf.Variable(slots[name] if slots else tf.fill(self.shape, fill), name=name)
                      for name in SLOT_NAMES[config.name]}
        self.iterations = tf.Variable(iterations, dtype=tf.int64, name="iterations")
        self.dense = dense_slots and config.name in self.LAZY
        ids = tf.TensorSpec([None], tf.int64)
        self._apply = tf.function(self._update, input_signature=[ids, tf.TensorSpec([None, self.shape[1]], tf.float32)])
        self._gather = tf.function(lambda i: tf.gather(self.params, i), input_signature=[ids])
        self._rounds: dict[int, object] = {}  # gradients in a round -> its compiled merge and update

    @property
    def lazy(self) -> bool:
        """Slots of untouched rows are left as they are (not what the dense update would do)."""
        return self.config.name in self.LAZY and not self.dense

    def apply(self, ids: np.ndarray, grad: np.ndarray) -> None:
        """One update with the mean gradient `grad` of the rows at (unique, local) `ids`."""
        self._apply(tf.constant(ids, tf.int64), tf.constant(grad, tf.float32))

    def apply_round(self, parts: list[tuple[np.ndarray, np.ndarray]]) -> None:
        """One update with the mean of a round's gradients (per worker: its unique local ids and
        their summed rows): equal ids of all workers merged, summed and divided by the number of
        gradients (what the dense mean gives a row some workers left at 0), then the row update; one
        graph call, no numpy pass over the rows."""
        if len(parts) < 2:  # none (counts the step), or one (async): its ids are unique already, nothing to merge
            ids, rows = parts[0] if parts else (np.zeros(0, np.int64), np.zeros((0, self.shape[1]), np.float32))
            self._apply(_tensor(ids, np.int64), _tensor(rows, np.float32))
            return
        fused = self._rounds.get(len(parts))
        if fused is None:
            spec = [(tf.TensorSpec([None], tf.int64), tf.TensorSpec([None, self.shape[1]], tf.float32))] * len(parts)
            fused = self._rounds[len(parts)] = tf.function(self._merge_update, input_signature=[spec])
        fused([(_tensor(ids, np.int64), _tensor(rows, np.float32)) for ids, rows in parts])

    def _merge_update(self, parts) -> None:
        ids = tf.concat([i for i, _ in parts], 0)
        rows = tf.concat([r for _, r in parts], 0)
        unique, position = tf.unique(ids, out_idx=tf.int32)
        # Summed in arrival order, then scaled as FlatOptimizer scales the dense mean (x * (1/n)).
        summed = tf.math.unsorted_segment_sum(rows, position, tf.shape(unique)[0])
        self._update(unique, summed * tf.constant(1.0 / len(parts), tf.float32) if len(parts) > 1 else summed)

    def gather(self, ids: np.ndarray) -> np.ndarray:
        return self._gather(tf.constant(ids, tf.int64)).numpy()

    def gather_into(self, ids: np.ndarray, out: np.ndarray) -> None:
        """The rows at `ids` copied into `out` (a row slot). Gathered by TensorFlow, not np.take over a
        view of the variable: once sparse updates ran, reading the variable's value copies the whole
        table (copy-on-read), ~25 ms for 256 MB."""
        np.copyto(out, self._gather(_tensor(ids, np.int64)))

    def state(self) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
        """Views of the rows and slots (no copy: a table can be gigabytes; the server writes them
        to its checkpoint file at once, under the exchange's lock), and the update count."""
        return (np.from_dlpack(self.params.value()), {name: np.from_dlpack(var.value()) for name, var in self.slots.items()},
                int(self.iterations.numpy()))

    def _update(self, ids: tf.Tensor, grad: tf.Tensor) -> None:
        c, handle = self.config, self.params.handle
        lr = tf.constant(c.learning_rate, tf.float32)
        if self.dense:
            dense_update(c, self.params, self.slots, self.iterations, tf.scatter_nd(ids[:, None], grad, self.shape))
            return
        if c.name == "sgd":
            # ids are unique: gather, subtract, assign is ResourceScatterSub's result, and twice as fast on
            # CPU (its assign copies rows with memmove; a scatter-sub dispatches each row to the thread pool).
            _assign_rows(handle, ids, tf.gather(self.params, ids) - lr * grad)
        elif c.name == "adagrad":
            tf.raw_ops.ResourceSparseApplyAdagradV2(
                var=handle, accum=self.slots["accumulator"].handle, lr=lr,
                epsilon=tf.constant(c.epsilon, tf.float32), grad=grad, indices=ids)
        elif c.name == "momentum":
            tf.raw_ops.ResourceSparseApplyKerasMomentum(
                var=handle, accum=self.slots["momentum"].handle, lr=lr, grad=grad, indices=ids,
                momentum=tf.constant(c.momentum, tf.float32), use_nesterov=c.nesterov)
        elif c.name == "rmsprop":
            tf.raw_ops.ResourceSparseApplyRMSProp(
                var=handle, ms=self.slots["ms"].handle, mom=self.slots["mom"].handle, lr=lr,
                rho=tf.constant(c.rho, tf.float32), momentum=tf.constant(c.momentum, tf.float32),
                epsilon=tf.constant(c.epsilon, tf.float32), grad=grad, indices=ids)
        elif c.name == "adam":
            # ResourceApplyAdam's formula on the touched rows only.
            step = tf.cast(self.iterations + 1, tf.float32)
            b1, b2 = tf.constant(c.beta_1, tf.float32), tf.constant(c.beta_2, tf.float32)
            m = b1 * tf.gather(self.slots["m"], ids) + (1 - b1) * grad
            v = b2 * tf.gather(self.slots["v"], ids) + (1 - b2) * tf.square(grad)
            lr_t = lr * tf.sqrt(1 - tf.pow(b2, step)) / (1 - tf.pow(b1, step))
            self.slots["m"].scatter_update(tf.IndexedSlices(m, ids))
            self.slots["v"].scatter_update(tf.IndexedSlices(v, ids))
            _assign_rows(handle, ids, tf.gather(self.params, ids) - lr_t * m / (tf.sqrt(v) + tf.constant(c.epsilon, tf.float32)))
        else:  # unreachable: the config validates the name
            raise ValueError(c.name)
        self.iterations.assign_add(1)


def _assign_rows(handle, ids: tf.Tensor, rows: tf.Tensor) -> None:
    tf.raw_ops.ResourceScatterUpdate(resource=handle, indices=ids, updates=rows)


def _tensor(array, dtype) -> tf.Tensor:
    """`array` (a view of a slot, or a call's argument) as a tensor of `dtype`, without a copy where
    its memory allows (raytf.runtime.as_tensor)."""
    from raytf.runtime import as_tensor

    array = np.asarray(array)
    return as_tensor(array, read_only=True) if array.dtype == dtype else tf.constant(array, dtype)
