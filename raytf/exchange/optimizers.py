"""Optimizers that update one flat float32 buffer with a single fused `tf.raw_ops` kernel.

A parameter server holds its whole shard as one variable, so an update is one
`ResourceApply*` call over a contiguous buffer instead of one op per layer. The formulas are
TensorFlow's own kernels (the same ones `tf.compat.v1.train` optimizers use). SGD, whose update is
two elementwise passes, is numpy's instead (`FlatOptimizer`): no compiled call's dispatch, and no
copy of the shard when a version of it is still being sent.
"""

from __future__ import annotations

import weakref
from typing import Sequence

import numpy as np
import tensorflow as tf

from raytf.config import OptimizerConfig
from raytf.runtime import aligned_zeros, back_with_huge_pages, tensor_of
from raytf.exchange.tables import LAZY_OPTIMIZERS

HUGE_PAGES_FROM = 64 * 2**20  # tables at least this large are backed by 2 MB pages
SGD_BLOCK = 1 << 16  # values per block of numpy SGD's update (its step, 256 KB, stays in cache)
EAGER_BELOW = 65536  # dense shards of fewer parameters are updated by eager ops, not a compiled call

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
        # SGD's shard is a numpy array: its update is a multiply and a subtract (~0.3 ms for 7.45 MB),
        # where a compiled call costs ~0.5 ms of dispatch in a busy server, and TensorFlow copies the
        # whole variable first whenever a version of it is still being sent (async on the wire: ~0.5 ms).
        # Here an update writes in place unless a view of the buffer is out (`params_view`); then it
        # writes the next version into another buffer.
        self.numpy_sgd = config.name == "sgd"
        self._uncounted = 0  # the numpy updates (not in `iterations`)
        self._scratch: np.ndarray | None = None  # numpy SGD's step for one block, made on first use
        if self.numpy_sgd:
            self._params = aligned_zeros(size)
            self._params[:] = initial
            self._buffers = [self._params]  # the versions' buffers, reused once no view holds them
            self._lent: list[tuple[weakref.ref, np.ndarray]] = []  # (a view handed out, its buffer)
            self.params = None
        else:
            self.params = tf.Variable(initial.astype(np.float32, copy=False), name="params")
        fill = initial_slot_value(config)
        self.slots = {
            name: tf.Variable(slots[name] if slots else tf.fill([size], fill), name=name)
            for name in SLOT_NAMES[config.name]
        }
        self.iterations = tf.Variable(iterations, dtype=tf.int64, name="iterations")
        self.size = size
        # XLA fuses the mean of the gradients with the update into one pass over memory (about
        # 2x faster than the graph kernels); graph mode is the fallback.
        self._jit = tf.function(self._apply_mean, jit_compile=True)
        self._graph = tf.function(self._apply_mean)
        self._use_jit = True

    @property
    def reads_numpy(self) -> bool:
        """`apply_mean` takes numpy arrays as they are (a tensor would be made and unmade for nothing)."""
        return self.numpy_sgd

    def apply_mean(self, grads: list, count: int | None = None) -> None:
        """Apply the mean of `grads` to the parameters (tensors, or numpy arrays where `reads_numpy`).
        `count`: how many gradients they sum up (more than `len(grads)` where some are sums already,
        raytf.exchange.local_reduce); the mean divides by it."""
        count = count or len(grads)
        if self.numpy_sgd:
            grads = [np.asarray(g) for g in grads]
            target = self._writable()
            if self._scratch is None:
                self._scratch = aligned_zeros(min(SGD_BLOCK, self.size))
            rate = np.float32(self.config.learning_rate)
            for start in range(0, self.size, SGD_BLOCK):
                self._sgd_block(grads, count, rate, target, start, min(start + SGD_BLOCK, self.size))
            self._params = target
            self._uncounted += 1
            return
        if self.size < EAGER_BELOW:
            # A small shard (say a recommender's dense layers beside its tables): a few eager ops cost
            # less than a compiled call's dispatch (~0.2 ms quiet, ~0.7 ms in a busy server).
            self._apply_mean(grads, count)
            return
        if self._use_jit:
            try:
                self._jit(grads, count)
                return
            except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
                self._use_jit = False
        self._graph(grads, count)

    def _sgd_block(self, grads: list[np.ndarray], count: int, rate: np.float32, target: np.ndarray, start: int,
                   stop: int) -> None:
        """`target` = parameters - (sum * (1/n)) * rate over [start, stop): the XLA update's float32
        operations, the step in a scratch block that stays in cache (not a second shard in memory)."""
        step = self._scratch[:stop - start]
        if count == 1:
            np.multiply(grads[0][start:stop], rate, out=step)
        else:
            if len(grads) == 1:  # one sum of several (a node's, raytf.exchange.local_reduce)
                np.multiply(grads[0][start:stop], np.float32(1.0 / count), out=step)
            else:
                np.add(grads[0][start:stop], grads[1][start:stop], out=step)
                for grad in grads[2:]:
                    step += grad[start:stop]
                step *= np.float32(1.0 / count)
            step *= rate
        np.subtract(self._params[start:stop], step, out=target[start:stop])

    def params_view(self) -> np.ndarray:
        """The current parameters as a numpy view of their own buffer (no copy), consistent for as
        long as the caller holds it (the view itself: a slice of it does not count).

        Returning the parameters from the update function instead costs a fresh output buffer. An
        update while a view is alive writes elsewhere: TensorFlow copies a variable's buffer someone
        else holds before writing it; numpy SGD writes the next version into a buffer no view holds.
        With the view dropped, the next update runs in place again.
        """
        if not self.numpy_sgd:
            return self.buffer_view()
        view = self._params[:]
        self._lent.append((weakref.ref(view), self._params))
        return view

    def buffer_view(self) -> np.ndarray:
        """The parameters' own buffer, never a copy: for a caller that drops it before the next
        update (raytf.exchange.pipeline sends each piece from it)."""
        return self._params if self.numpy_sgd else np.from_dlpack(self.params.value())

    def _writable(self) -> np.ndarray:
        """The buffer numpy SGD's next version goes into: the current one if no view of it is out,
        else one no view holds (a new one if every buffer is held: one per version still being sent)."""
        self._lent = [(view, buffer) for view, buffer in self._lent if view() is not None]
        held = {id(buffer) for _, buffer in self._lent}
        for buffer in (self._params, *self._buffers):
            if id(buffer) not in held:
                return buffer
        self._buffers.append(aligned_zeros(self.size))
        return self._buffers[-1]

    @property
    def steps(self) -> int:
        """Updates made (restored ones included)."""
        return int(self.iterations.numpy()) + self._uncounted

    def state(self) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
        """Copies of the parameters and slots, and the update count (for a checkpoint)."""
        slots = {name: np.array(var.numpy(), copy=True) for name, var in self.slots.items()}
        return np.array(self.params_view(), copy=True), slots, self.steps

    def _apply_mean(self, grads: list, count: int) -> None:
        grad = grads[0] if count == 1 else tf.add_n(grads) * (1.0 / count)
        return self._apply(grad)

    def _apply(self, grad: tf.Tensor) -> None:
        dense_update(self.config, self.params, self.slots, self.iterations, grad)


class PiecedOptimizer:
    """A flat shard as consecutive pieces of `piece` values, each a `FlatOptimizer` of its own, so
    that one piece can be updated as soon as its part of every gradient is in (the wire's pipelined
    sync round, raytf.exchange.pipeline) while later parts still arrive. Each piece runs the same
    operations on its slice as the whole-shard update would (every optimizer here is elementwise, and
    every piece counts the same steps); SGD's pieces are numpy's (a compiled call per piece costs
    ~0.5 ms of dispatch in a busy server, more than its update of a megabyte). Used where every
    worker of a sync server is on the wire: elsewhere a whole view of the parameters (`params_view`)
    costs a copy."""

    def __init__(self, config: OptimizerConfig, initial: np.ndarray, slots: dict[str, np.ndarray] | None = None,
                 iterations: int = 0, piece: int = 1 << 18) -> None:
        self.config = config
        self.size = initial.shape[0]
        self.bounds = [(start, min(start + piece, self.size)) for start in range(0, self.size, piece)]
        self.pieces = [FlatOptimizer(config, initial[a:b], {n: v[a:b] for n, v in slots.items()} if slots else None,
                                     iterations) for a, b in self.bounds]

    @classmethod
    def of(cls, opt: FlatOptimizer, piece: int) -> "PiecedOptimizer":
        params, slots, iterations = opt.state()
        return cls(opt.config, params, slots, iterations, piece)

    def apply_piece(self, j: int, grads: list[np.ndarray], count: int | None = None) -> None:
        """Apply the mean of piece `j` of `grads` (whole flat gradient buffers, 64-byte aligned; summing
        `count` gradients, see `FlatOptimizer.apply_mean`)."""
        a, b = self.bounds[j]
        piece = self.pieces[j]
        piece.apply_mean([g[a:b] if piece.numpy_sgd else tensor_of(g[a:b], np.float32) for g in grads], count)

    reads_numpy = True  # its pieces are cut from numpy arrays

    def apply_mean(self, grads: list, count: int | None = None) -> None:
        grads = [np.asarray(g) for g in grads]
        for j in range(len(self.pieces)):
            self.apply_piece(j, grads, count)

    def piece_view(self, j: int) -> np.ndarray:
        """Piece `j`'s parameters, a view of its buffer (drop it before its next update)."""
        return self.pieces[j].buffer_view()

    def params_view(self) -> np.ndarray:
        """All the parameters, a copy (the pieces are separate buffers)."""
        return np.concatenate([p.params_view() for p in self.pieces])

    @property
    def steps(self) -> int:
        return self.pieces[0].steps

    def state(self) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
        states = [p.state() for p in self.pieces]
        slots = {name: np.concatenate([s[1][name] for s in states]) for name in states[0][1]}
        return np.concatenate([s[0] for s in states]), slots, self.steps


def dense_update(config: OptimizerConfig, var: tf.Variable, slots: dict[str, tf.Variable], iterations: tf.Variable,
                 grad: tf.Tensor) -> None:
    """One `ResourceApply*` update of `var` (and its slots) with the gradient `grad` of the same shape
    (SGD's shards and rows are numpy's: FlatOptimizer, RowOptimizer)."""
    c = config
    lr = tf.constant(c.learning_rate, tf.float32)
    handle = var.handle
    if c.name == "momentum":
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
    numpy's gather, subtract and put for SGD, `ResourceSparseApplyAdagradV2`, `ResourceSparseApplyKerasMomentum`,
    `ResourceSparseApplyRMSProp`, and a lazy Adam (gather, update, scatter). For SGD and Adagrad that
    is the dense update (an untouched row's gradient is zero and changes nothing; SGD's round up to
    float32 rounding, see `apply_round`, Adagrad's exactly); momentum,
    RMSProp and Adam would also decay untouched rows' slots, which the lazy update skips
    (`dense_slots=True` does the dense update of the whole table instead: exact, and a full pass).
    """

    LAZY = LAZY_OPTIMIZERS

    def __init__(self, config: OptimizerConfig, initial: np.ndarray, slots: dict[str, np.ndarray] | None = None,
                 iterations: int = 0, dense_slots: bool = False) -> None:
        self.config = config
        self.shape = tuple(initial.shape)
        self.dense = dense_slots and config.name in self.LAZY
        # SGD's rows are a numpy array: its update (gather, subtract, put) and the gathers of the rows
        # asked for, straight into the row slots, are numpy's (~3x faster than eager TensorFlow ops and
        # a copy on these sizes). The other optimizers' updates are TensorFlow kernels on a variable (whose
        # memory numpy must not touch: after a sparse read TensorFlow copies a variable that is shared).
        self.numpy_rows = config.name == "sgd"
        if self.numpy_rows:
            self.params = None
            self._rows = aligned_zeros(int(np.prod(self.shape))).reshape(self.shape)
            self._rows[:] = initial
            # The same memory with a row as one item: numpy moves each row with one copy instead of
            # iterating its floats (a gather or put of ~3,000 random rows of 64 floats ~40 % faster).
            self._whole_rows = _as_row_items(self._rows)
            self._scaled = np.empty((0, self.shape[1]), np.float32)
        else:
            self.params = tf.Variable(initial.astype(np.float32, copy=False), name="rows")
        fill = initial_slot_value(config)
        self.slots = {name: tf.Variable(slots[name] if slots else tf.fill(self.shape, fill), name=name)
                      for name in SLOT_NAMES[config.name]}
        self.iterations = tf.Variable(iterations, dtype=tf.int64, name="iterations")
        for values in (self._rows if self.numpy_rows else self.params, *self.slots.values()):
            if int(np.prod(values.shape)) * 4 >= HUGE_PAGES_FROM:
                # fresh: its own buffer (np.from_dlpack of a fresh variable's value is no copy)
                back_with_huge_pages(values if isinstance(values, np.ndarray) else np.from_dlpack(values.value()))
        self._uncounted = 0  # SGD's updates not yet added to `iterations` (an eager op each: counted at `steps`)

    @property
    def steps(self) -> int:
        """Updates made (restored ones included)."""
        return int(self.iterations.numpy()) + self._uncounted

    @property
    def lazy(self) -> bool:
        """Slots of untouched rows are left as they are (not what the dense update would do)."""
        return self.config.name in self.LAZY and not self.dense

    def apply(self, ids: np.ndarray, grad: np.ndarray) -> None:
        """One update with the mean gradient `grad` of the rows at (unique, local) `ids`."""
        self._update_rows(np.asarray(ids, np.int64), np.asarray(grad, np.float32))

    @property
    def applies_early(self) -> bool:
        """A round's gradients can be applied one by one as they arrive (`apply_early`): SGD's rows,
        whose update is linear in the gradient."""
        return self.numpy_rows

    def apply_early(self, part: tuple[np.ndarray, np.ndarray], expected: int) -> None:
        """SGD: one gradient of a round not complete yet, applied now as 1/`expected` of the round's
        mean; `apply_round` corrects its share if the round ends with another number of gradients."""
        ids, grad = part
        rate = np.float32(self.config.learning_rate) * np.float32(1.0 / expected)
        self._subtract_rows(np.asarray(ids, np.int64), np.asarray(grad, np.float32), rate)

    def apply_round(self, parts: list[tuple[np.ndarray, np.ndarray]], early: Sequence[int | None] = ()) -> None:
        """One update with the mean of a round's gradients (per worker: its unique local ids and
        their summed rows): equal ids of all workers merged, summed and divided by the number of
        gradients (what the dense mean gives a row some workers left at 0), then the row update; one
        gradient (async) is applied as it is, its ids are unique already; none (every gradient of the
        round was dropped) only counts the step. SGD, whose update is linear in the gradient, applies
        each gradient's rows in turn scaled by 1/n instead: the mean's update up to float32 rounding
        (a row two workers touched is rounded after each), without merging (the merge of two
        workers' ~3,000 rows cost more than both updates).

        Eager ops, not a tf.function: on these sizes (thousands of rows) a graph call costs more
        than its work here (its executor hands the ops to its thread pool: ~2x the CPU of the same
        ops run inline), and the merge is mostly numpy (`merged`).

        `early`: per part, the number of gradients it was applied early for (`apply_early`), or None."""
        if not parts:
            self._update_rows(np.zeros(0, np.int64), np.zeros((0, self.shape[1]), np.float32))
        elif self.numpy_rows:
            lr, share = np.float32(self.config.learning_rate), np.float32(1.0 / len(parts))
            for (ids, grad), expected in zip(parts, list(early) + [None] * (len(parts) - len(early))):
                if expected == len(parts):
                    continue  # applied as it arrived, with the share it has
                # the share still missing: all of it, or the difference from an early share
                rate = lr * (share if expected is None else share - np.float32(1.0 / expected))
                self._subtract_rows(np.asarray(ids, np.int64), np.asarray(grad, np.float32), rate)
            self._uncounted += 1
        elif len(parts) == 1:
            self._update_rows(np.asarray(parts[0][0], np.int64), np.asarray(parts[0][1], np.float32))
        else:
            unique, summed = merged(parts)
            summed *= np.float32(1.0 / len(parts))  # as FlatOptimizer scales the dense mean (x * (1/n))
            self._update_rows(unique, summed)

    def gather(self, ids, out: np.ndarray | None = None) -> np.ndarray:
        """The current rows at the local `ids`, into `out` (its first len(ids) rows) if given."""
        ids = np.asarray(ids, np.int64)
        if self.numpy_rows:
            if out is None:
                return _as_row_floats(self._whole_rows.take(ids), self.shape[1])
            into = out[:len(ids)]
            if into.flags.c_contiguous:
                self._whole_rows.take(ids, out=_as_row_items(into))
                return into
            return np.take(self._rows, ids, axis=0, out=into)
        rows = tf.raw_ops.ResourceGather(resource=self.params.handle, indices=tensor_of(ids, np.int64),
                                         dtype=tf.float32).numpy()
        if out is None:
            return rows
        np.copyto(out[:len(ids)], rows)
        return out[:len(ids)]

    def reset_rows(self, ids: np.ndarray, rows: np.ndarray) -> None:
        """Rows at the local `ids` set to `rows`, their optimizer slots to their initial values (a
        dynamic table's slot given to a new key)."""
        ids = np.asarray(ids, np.int64)
        if not ids.size:
            return
        if self.numpy_rows:
            self._rows[ids] = rows
        else:
            _assign_rows(self.params.handle, tensor_of(ids, np.int64), tensor_of(np.asarray(rows, np.float32), np.float32))
        fill = initial_slot_value(self.config)
        for slot in self.slots.values():
            _assign_rows(slot.handle, tensor_of(ids, np.int64), tf.fill([len(ids), self.shape[1]], np.float32(fill)))

    def rows(self) -> np.ndarray:
        """The whole table now (a view of SGD's rows; a copy otherwise)."""
        return self._rows if self.numpy_rows else self.params.numpy()

    def state(self) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
        """Views of the rows and slots (no copy: a table can be gigabytes; the server writes them
        to its checkpoint file at once, under the exchange's lock), and the update count."""
        params = self._rows if self.numpy_rows else np.from_dlpack(self.params.value())
        return params, {name: np.from_dlpack(var.value()) for name, var in self.slots.items()}, self.steps

    def _update_rows(self, ids: np.ndarray, grad: np.ndarray) -> None:
        if self.numpy_rows:
            self._subtract_rows(ids, grad, np.float32(self.config.learning_rate))
            self._uncounted += 1
            return
        self._update(tensor_of(ids, np.int64), tensor_of(grad, np.float32))

    def _subtract_rows(self, ids: np.ndarray, grad: np.ndarray, rate: np.float32) -> None:
        """SGD's rows at the unique `ids` minus `rate` * `grad`: gather, subtract, put back (the same
        float32 operations as TensorFlow's, ResourceScatterSub's result). The scaled gradient goes into
        a buffer kept for it (updates are serialized by the exchange's lock): a fresh one each time
        cost a large allocation per update."""
        if len(self._scaled) < len(ids):
            self._scaled = np.empty((len(ids), self.shape[1]), np.float32)
        scaled = np.multiply(grad, rate, out=self._scaled[:len(ids)])
        rows = self._whole_rows.take(ids)
        _as_row_floats(rows, self.shape[1])[:] -= scaled
        self._whole_rows[ids] = rows

    def _update(self, ids: tf.Tensor, grad: tf.Tensor) -> None:
        c, handle = self.config, self.params.handle
        lr = tf.constant(c.learning_rate, tf.float32)
        if self.dense:
            dense_update(c, self.params, self.slots, self.iterations, tf.scatter_nd(ids[:, None], grad, self.shape))
            return
        if c.name == "adagrad":  # (SGD's rows are numpy's: `_update_rows`)
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


def initial_slot_value(config: OptimizerConfig) -> float:
    """What an optimizer slot starts at: Adagrad's accumulator its initial value, every other slot 0."""
    return config.initial_accumulator_value if config.name == "adagrad" else 0.0


def merged(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ids of `parts` (each a gradient's unique ids and their rows), sorted, and their
    rows summed in the parts' order (what a segment sum in arrival order gives, to the bit: 0 + r0 +
    r1 ...): each part's rows are added at the places of its ids (unique within the part, so `+=` at
    fancy indices is exact). Numpy only: in a busy actor one eager TensorFlow op costs ~0.5 ms, a
    segment sum ~1 ms for 6,000 rows of 64."""
    ids = [np.asarray(i, np.int64) for i, _ in parts]
    unique = np.unique(np.concatenate(ids))
    summed = np.zeros((len(unique), np.shape(parts[0][1])[1]), np.float32)
    for part_ids, (_, rows) in zip(ids, parts):
        summed[np.searchsorted(unique, part_ids)] += rows
    return unique, summed


def _assign_rows(handle, ids: tf.Tensor, rows: tf.Tensor) -> None:
    tf.raw_ops.ResourceScatterUpdate(resource=handle, indices=ids, updates=rows)


def _as_row_items(rows: np.ndarray) -> np.ndarray:
    """A C-contiguous (n, width) float32 array as n items of width*4 bytes each (the same memory)."""
    return rows.view(np.dtype((np.void, rows.shape[1] * rows.itemsize))).reshape(-1)


def _as_row_floats(items: np.ndarray, width: int) -> np.ndarray:
    """`_as_row_items` undone: (n, width) float32 over the same memory."""
    return items.view(np.float32).reshape(-1, width)
