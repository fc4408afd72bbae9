"""The fused flat-buffer optimizers against Keras's own optimizers on the same gradients."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from raytf.config import OptimizerConfig  # noqa: E402
from raytf.exchange.optimizers import EAGER_BELOW, FlatOptimizer  # noqa: E402
from raytf.replica.model import keras_optimizer  # noqa: E402

# RMSprop is left out: Keras adds epsilon outside the square root, TensorFlow's kernel inside.


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "adagrad"])
def test_flat_update_matches_keras(name):
    config = OptimizerConfig(name=name, learning_rate=0.05)
    rng = np.random.default_rng(0)
    start = rng.standard_normal(257).astype(np.float32)
    grads = [rng.standard_normal(257).astype(np.float32) for _ in range(4)]
    flat = FlatOptimizer(config, start.copy())
    reference = tf.Variable(start.copy())
    optimizer = keras_optimizer(config)
    for step, grad in enumerate(grads):
        # two "workers" whose mean is `grad`
        flat.apply_mean([tf.constant(grad + step), tf.constant(grad - step)])
        optimizer.apply_gradients([(tf.constant(grad), reference)])
        np.testing.assert_allclose(flat.params_view(), reference.numpy(), rtol=2e-5, atol=2e-6)
    assert flat.steps == len(grads)


def test_rmsprop_follows_tensorflows_kernel():
    config = OptimizerConfig(name="rmsprop", learning_rate=0.01, rho=0.9, momentum=0.5, epsilon=1e-7)
    var = np.array([1.0, -2.0, 3.0], np.float32)
    ms, mom = np.zeros(3, np.float32), np.zeros(3, np.float32)
    flat = FlatOptimizer(config, var.copy())
    for grad in ([0.5, -1.0, 2.0], [0.1, 0.2, -0.3]):
        g = np.array(grad, np.float32)
        ms = config.rho * ms + (1 - config.rho) * g * g
        mom = config.momentum * mom + config.learning_rate * g / np.sqrt(ms + config.epsilon)
        var = var - mom
        flat.apply_mean([tf.constant(g)])
        np.testing.assert_allclose(flat.params_view(), var, rtol=1e-5)


@pytest.mark.parametrize("name,jit", [("sgd", None), ("adam", True), ("adam", False)], ids=["sgd", "adam-xla", "adam-graph"])
def test_a_view_of_the_parameters_keeps_its_values_through_an_update(name, jit):
    """The wire sends a published version from a view of the parameters' own buffer, outside the
    exchange's lock (raytf.exchange.transport.ServerSlots.publish): an update meanwhile must not
    write under it (TensorFlow copies a buffer someone else holds before writing; numpy SGD writes
    another buffer), and with the view gone the update writes in place again."""
    config = OptimizerConfig(name=name, learning_rate=0.5)
    flat = FlatOptimizer(config, np.ones(EAGER_BELOW, np.float32))
    assert flat.numpy_sgd == (name == "sgd")
    if jit is not None:
        flat._use_jit = jit
    view = flat.params_view()
    before = view.copy()
    flat.apply_mean([tf.constant(np.full(EAGER_BELOW, 2.0, np.float32))])
    np.testing.assert_array_equal(view, before)  # the version being sent is untouched
    after = flat.params_view()
    if name == "sgd":
        np.testing.assert_array_equal(after, before - 0.5 * 2.0)
    assert not np.allclose(after, before) and not np.shares_memory(view, after)
    del view
    address = after.ctypes.data
    del after
    flat.apply_mean([tf.constant(np.full(EAGER_BELOW, 2.0, np.float32))])
    assert flat.params_view().ctypes.data == address  # no view alive: updated in place, no copy


def test_numpy_sgd_writes_a_new_buffer_only_while_versions_are_held():
    """Async on the wire: two workers' answers may both be in flight while a third update comes.
    Each held version stays as it was; a buffer is reused once its views are gone."""
    flat = FlatOptimizer(OptimizerConfig(name="sgd", learning_rate=0.5), np.ones(1000, np.float32))
    one = flat.params_view()
    flat.apply_mean([np.full(1000, 2.0, np.float32), np.full(1000, 4.0, np.float32)])  # mean 3
    two = flat.params_view()
    flat.apply_mean([np.full(1000, 2.0, np.float32)])
    np.testing.assert_array_equal(one, 1.0)
    np.testing.assert_array_equal(two, 1.0 - 0.5 * 3.0)
    np.testing.assert_array_equal(flat.params_view(), 1.0 - 0.5 * 3.0 - 0.5 * 2.0)
    assert len({one.ctypes.data, two.ctypes.data, flat.buffer_view().ctypes.data}) == 3
    held = two.ctypes.data
    del two  # its buffer is free again: the next update needing another buffer takes it, not a new one
    three = flat.params_view()
    flat.apply_mean([np.full(1000, 2.0, np.float32)])
    assert flat.buffer_view().ctypes.data == held and len(flat._buffers) == 3
    np.testing.assert_array_equal(three, 1.0 - 0.5 * 3.0 - 0.5 * 2.0)
    assert flat.state()[2] == 3


@pytest.mark.parametrize("grads,count", [(1, None), (3, None), (1, 2)], ids=["one", "mean-of-3", "a-sum-of-2"])
def test_numpy_sgd_in_blocks_is_the_whole_shard_formula_to_the_bit(grads, count):
    """A shard of two blocks and a bit: each block is (sum * (1/n)) * rate subtracted, as over the whole."""
    from raytf.exchange.optimizers import SGD_BLOCK

    size, rate = 2 * SGD_BLOCK + 123, np.float32(0.05)
    rng = np.random.default_rng(1)
    start = rng.standard_normal(size).astype(np.float32)
    given = [rng.standard_normal(size).astype(np.float32) for _ in range(grads)]
    flat = FlatOptimizer(OptimizerConfig(name="sgd", learning_rate=0.05), start.copy())
    flat.apply_mean(given, count)
    n = count or grads
    step = given[0].copy() if grads == 1 else given[0] + given[1]
    for grad in given[2:]:
        step += grad
    if n > 1:
        step *= np.float32(1.0 / n)
    np.testing.assert_array_equal(flat.params_view(), start - step * rate)
