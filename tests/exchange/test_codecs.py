"""Wire compression: `none` is bit-exact, bf16 and int8 stay within their bounds, and int8 with error
feedback loses nothing over the steps (it only delays what rounding took)."""

from __future__ import annotations

import numpy as np
import pytest

from raytf.errors import ConfigError
from raytf.exchange.codecs import BY_ID, CODECS, ErrorFeedback, make_codec


def _round_trip(name: str, values: np.ndarray, residual: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    codec = make_codec(name, values.size)
    payload, scale = codec.encode(values, residual)
    received = np.frombuffer(bytes(payload), np.uint8)  # what the other end reads off the wire
    out = np.full(values.size, np.nan, np.float32)
    BY_ID[codec.id](values.size).decode(received, scale, out)
    return out, len(received)


def _values(seed: int = 0, size: int = 100_003) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(size) * np.exp(rng.uniform(-8, 8, size))).astype(np.float32)


def test_none_is_bit_exact_and_sends_the_buffer_itself():
    values = _values()
    values[:4] = [np.nan, np.inf, -0.0, np.float32(1e-45)]
    out, nbytes = _round_trip("none", values)
    assert nbytes == 4 * values.size
    assert out.view(np.uint32).tolist() == values.view(np.uint32).tolist()
    payload, _ = make_codec("none", values.size).encode(values)
    assert np.shares_memory(np.frombuffer(payload, np.uint8), values)  # no copy on the way out


def test_bf16_rounds_to_nearest_even_within_its_bound():
    values = _values(1)
    out, nbytes = _round_trip("bf16", values)
    assert nbytes == 2 * values.size
    assert np.all(np.abs(out - values) <= np.abs(values) * 2.0 ** -8)
    # Against the reference rounding of ml_dtypes (TensorFlow's bfloat16), bit for bit.
    ml_dtypes = pytest.importorskip("ml_dtypes")
    assert np.array_equal(out, values.astype(ml_dtypes.bfloat16).astype(np.float32))


def test_bf16_ties_go_to_even_and_non_finite_values_stay_non_finite():
    ties = np.array([1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8)], np.float32)  # exactly between two bf16s
    out, _ = _round_trip("bf16", ties)
    assert out.tolist() == [1.0, 1 + 2 ** -6, -1.0]
    odd = np.array([np.inf, -np.inf, np.nan, np.frombuffer(np.uint32(0x7F800001).tobytes(), np.float32)[0]],
                   np.float32)
    out, _ = _round_trip("bf16", odd)
    assert out[0] == np.inf and out[1] == -np.inf and np.isnan(out[2]) and np.isnan(out[3])


def test_int8_error_is_at_most_half_a_step_of_the_chunks_scale():
    values = np.random.default_rng(2).standard_normal(65_536).astype(np.float32)
    out, nbytes = _round_trip("int8", values)
    assert nbytes == values.size
    scale = np.abs(values).max() / 127
    assert np.max(np.abs(out - values)) <= scale / 2 * (1 + 1e-5)
    zeros, _ = _round_trip("int8", np.zeros(10, np.float32))
    assert zeros.tolist() == [0.0] * 10


@pytest.mark.parametrize("name", ["int8", "bf16"])
def test_with_error_feedback_nothing_is_lost_over_the_steps(name):
    rng = np.random.default_rng(3)
    size, steps = 50_000, 30
    feedback = ErrorFeedback(size)
    codec = make_codec(name, size)
    sent_sum = np.zeros(size, np.float64)
    true_sum = np.zeros(size, np.float64)
    for _ in range(steps):
        gradient = (rng.standard_normal(size) * rng.uniform(0.01, 10)).astype(np.float32)
        true_sum += gradient
        payload, scale = codec.encode(gradient, feedback.residual(0, size))
        decoded = np.empty(size, np.float32)
        BY_ID[codec.id](size).decode(np.frombuffer(bytes(payload), np.uint8), scale, decoded)
        sent_sum += decoded
    # What arrived, plus what is still held back, is what the worker computed (float32 sums' error).
    assert np.allclose(sent_sum + feedback.values, true_sum, rtol=1e-5, atol=1e-4)
    # And it is the residual that makes it so: without it int8 drifts far more.
    if name == "int8":
        assert np.max(np.abs(feedback.values)) <= np.max(np.abs(true_sum)) / 10


def test_error_feedback_works_chunk_by_chunk_like_the_wire():
    size, chunk = 10_000, 3_000
    rng = np.random.default_rng(4)
    feedback = ErrorFeedback(size)
    codec = make_codec("int8", chunk)
    gradient = rng.standard_normal(size).astype(np.float32)
    decoded = np.empty(size, np.float32)
    for start in range(0, size, chunk):
        stop = min(start + chunk, size)
        payload, scale = codec.encode(gradient[start:stop], feedback.residual(start, stop))
        BY_ID[codec.id](chunk).decode(np.frombuffer(bytes(payload), np.uint8), scale, decoded[start:stop])
    assert np.allclose(decoded + feedback.values, gradient, atol=1e-6)
    feedback.reset()
    assert not feedback.values.any()


def test_unknown_codec_names_the_choices():
    with pytest.raises(ConfigError, match="none, bf16, int8"):
        make_codec("zstd", 10)
    assert set(CODECS) == {"none", "bf16", "int8"}


def test_a_chunk_larger_than_the_codec_or_not_float32_is_refused():
    codec = make_codec("bf16", 4)
    with pytest.raises(ValueError, match="capacity"):
        codec.encode(np.zeros(5, np.float32))
    with pytest.raises(TypeError, match="float32"):
        codec.encode(np.zeros(3, np.float64))


def test_a_pull_mirror_and_the_worker_decoding_its_changes_hold_the_same_buffers_bit_for_bit():
    """The worker's two buffers, filled in turn as the wire does (none: copied; int8-delta: added),
    equal the server's copies exactly after every answer; after `forget` the next answers are exact."""
    from raytf.exchange.codecs import PullMirror

    rng = np.random.default_rng(5)
    size, chunk = 5_000, 1_024
    mirror = PullMirror(size, chunk)
    buffers = [np.zeros(size, np.float32), np.zeros(size, np.float32)]
    params = rng.standard_normal(size, dtype=np.float32)
    kinds = []
    for answer in range(7):
        if answer == 4:
            mirror.forget()  # a rollback answer (the worker keeps its buffer and does not turn)
        params += rng.standard_normal(size, dtype=np.float32) * 0.01
        into = buffers[answer % 2]
        for start in range(0, size, chunk):
            codec_id, payload, scale = mirror.encode(start, params[start:start + chunk])
            kinds.append(codec_id)
            BY_ID[codec_id](chunk).decode(np.frombuffer(payload, np.uint8), scale, into[start:start + chunk])
        mirror.answered()
        np.testing.assert_array_equal(into, mirror._copies[answer % 2])
        if BY_ID[codec_id].name == "none":
            np.testing.assert_array_equal(into, params)
        else:
            assert 0 < np.abs(into - params).max() < 1e-3
    per_answer = [BY_ID[k].name for k in kinds[::-(-size // chunk)]]
    assert per_answer == ["none", "none", "int8-delta", "int8-delta", "none", "none", "int8-delta"]
