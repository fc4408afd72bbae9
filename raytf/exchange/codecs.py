"""Wire compression of float32 buffers, one chunk at a time (`distribution.compression`).

* `none`: the bytes as they are; encoding hands out a view of the caller's buffer (no copy) and
  decoding is done by receiving straight into the destination, so it is bit-exact.
* `bf16`: the upper 16 bits of each float32, rounded to nearest even (what TPUs and
  `tf.cast(x, tf.bfloat16)` do): half the bytes, a relative error of at most 2**-8 per value.
* `int8`: one signed byte per value and one float32 scale per chunk (max |x| / 127): a quarter of
  the bytes, an absolute error of at most scale / 2 per value. Meant for gradients, with an
  `ErrorFeedback` on the worker: what rounding took from this step's gradient is added to the next
  one, so nothing is lost over the steps, only delayed.
* `int8` pulls (`Int8Delta`, `PullMirror`): the parameters' *change* from what the worker's buffer
  holds, in int8 with a scale per chunk; decoding adds it to the buffer. The server keeps a copy of
  each of the worker's buffers and adds to it exactly what the worker adds, so what rounding left
  out is in the next change (error feedback kept on the server); a buffer whose content the server
  does not know (the first answers, after a rollback) gets the parameters exactly.

Everything is vectorized numpy over preallocated scratch buffers (one set per codec instance, sized
for the largest chunk), so a step allocates nothing. A codec instance is not thread-safe: each
direction of each connection has its own.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from raytf.errors import ConfigError


class Codec:
    """Turns a float32 chunk into payload bytes and back."""

    name: ClassVar[str]
    id: ClassVar[int]  # on the wire, in each frame's header
    bytes_per_value: ClassVar[int]
    lossy: ClassVar[bool] = True

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity  # the most values one chunk may have

    def encoded_nbytes(self, values: int) -> int:
        return values * self.bytes_per_value

    def encode(self, chunk: np.ndarray, residual: np.ndarray | None = None) -> tuple[memoryview, float]:
        """The payload of `chunk` (float32, contiguous) and its scale. With `residual` (the same
        length), encodes chunk + residual and leaves in `residual` what the payload misses of it.
        The payload is valid until the next call."""
        raise NotImplementedError

    def decode(self, payload: np.ndarray, scale: float, out: np.ndarray) -> None:
        """Write the values of `payload` (uint8, `encoded_nbytes(out.size)` bytes) into `out` (float32)."""
        raise NotImplementedError

    def _check(self, chunk: np.ndarray) -> None:
        if chunk.dtype != np.float32 or not chunk.flags.c_contiguous:
            raise TypeError(f"codec {self.name} takes a contiguous float32 chunk, not {chunk.dtype} "
                            f"(contiguous: {chunk.flags.c_contiguous})")
        if chunk.size > self.capacity:
            raise ValueError(f"a chunk of {chunk.size} values is more than this codec's capacity of {self.capacity}")


class NoCompression(Codec):
    name, id, bytes_per_value, lossy = "none", 0, 4, False

    def encode(self, chunk: np.ndarray, residual: np.ndarray | None = None) -> tuple[memoryview, float]:
        self._check(chunk)
        # Exact, so nothing is left over for error feedback.
        if residual is not None and residual.any():
            raise ValueError("an ErrorFeedback residual with codec none: it would never be sent")
        return memoryview(chunk).cast("B"), 1.0

    def decode(self, payload: np.ndarray, scale: float, out: np.ndarray) -> None:
        np.copyto(out, payload.view(np.float32))


class BFloat16(Codec):
    name, id, bytes_per_value = "bf16", 1, 2

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._wide = np.empty(capacity, np.uint32)
        self._sum = np.empty(capacity, np.float32)
        self._out = np.empty(capacity, np.uint16)
        self._nan = np.empty(capacity, np.bool_)

    def encode(self, chunk: np.ndarray, residual: np.ndarray | None = None) -> tuple[memoryview, float]:
        self._check(chunk)
        n = chunk.size
        if residual is not None:
            chunk = np.add(chunk, residual, out=self._sum[:n])
        bits, wide, out = chunk.view(np.uint32), self._wide[:n], self._out[:n]
        # Round to nearest even: add 0x7FFF plus the lowest kept bit, then drop the low 16 bits.
        np.right_shift(bits, 16, out=wide)
        np.bitwise_and(wide, 1, out=wide)
        np.add(wide, 0x7FFF, out=wide)
        np.add(wide, bits, out=wide)
        np.right_shift(wide, 16, out=wide)
        np.copyto(out, wide, casting="unsafe")
        # A NaN's low bits could carry into the exponent (NaN -> Inf); keep it a quiet NaN.
        nan = np.isnan(chunk, out=self._nan[:n])
        if nan.any():
            out[nan] = 0x7FC0
        if residual is not None:  # what the receiver will decode, exactly, taken from what was meant
            np.subtract(chunk, self._decode_into(out, wide), out=residual)
        return memoryview(out).cast("B"), 1.0

    @staticmethod
    def _decode_into(halves: np.ndarray, wide: np.ndarray) -> np.ndarray:
        np.copyto(wide, halves)
        np.left_shift(wide, 16, out=wide)
        return wide.view(np.float32)

    def decode(self, payload: np.ndarray, scale: float, out: np.ndarray) -> None:
        self._decode_into(payload.view(np.uint16), out.view(np.uint32))


class Int8(Codec):
    name, id, bytes_per_value = "int8", 2, 1

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._sum = np.empty(capacity, np.float32)
        self._scaled = np.empty(capacity, np.float32)
        self._out = np.empty(capacity, np.int8)

    def encode(self, chunk: np.ndarray, residual: np.ndarray | None = None) -> tuple[memoryview, float]:
        self._check(chunk)
        n = chunk.size
        if residual is not None:
            chunk = np.add(chunk, residual, out=self._sum[:n])
        peak = max(float(chunk.max()), -float(chunk.min())) if n else 0.0  # two passes, no |x| array
        scale = np.float32(peak / 127.0) if peak > 0 else np.float32(0.0)
        scaled, out = self._scaled[:n], self._out[:n]
        if scale > 0 and np.isfinite(scale):
            np.divide(chunk, scale, out=scaled)
            # |x| <= peak, so |x| / scale is 127 within float32 rounding at most: rint keeps it in
            # -127..127 (no clip needed).
            np.rint(scaled, out=scaled)
        else:
            scaled.fill(0)  # all zeros, or not finite (the worker reports that gradient as such)
        np.copyto(out, scaled, casting="unsafe")
        if residual is not None:
            np.multiply(scaled, scale, out=scaled)  # what the receiver will decode, exactly
            np.subtract(chunk, scaled, out=residual)
        return memoryview(out).cast("B"), float(scale)

    def decode(self, payload: np.ndarray, scale: float, out: np.ndarray) -> None:
        np.multiply(payload.view(np.int8), np.float32(scale), out=out)


class Int8Delta(Int8):
    """An int8 change of values the receiver holds: decoding adds it (`PullMirror` encodes it)."""

    name, id = "int8-delta", 3

    def decode(self, payload: np.ndarray, scale: float, out: np.ndarray) -> None:
        if out.size > self._scaled.size:  # a pipeline's piece may be larger than the wire's chunks
            self._scaled = np.empty(out.size, np.float32)
        # The same two float32 operations as the server's copy (`PullMirror.encode`): bit for bit.
        change = np.multiply(payload.view(np.int8), np.float32(scale), out=self._scaled[:out.size])
        np.add(out, change, out=out)


CODECS: dict[str, type[Codec]] = {codec.name: codec for codec in (NoCompression, BFloat16, Int8)}
BY_ID: dict[int, type[Codec]] = {codec.id: codec for codec in (*CODECS.values(), Int8Delta)}
PUSH_CODECS = ("none", "bf16", "int8")
PULL_CODECS = ("none", "bf16", "int8")  # int8: changes, the error kept on the server (PullMirror)


def make_codec(name: str, capacity: int) -> Codec:
    try:
        return CODECS[name](capacity)
    except KeyError:
        raise ConfigError(f"unknown wire compression {name!r}.",
                          f"Use one of: {', '.join(CODECS)} (distribution.compression).") from None


class ErrorFeedback:
    """The worker's memory of what compression left out of its gradients (one per server link).

    Hand `residual(start, stop)` to the codec with each chunk: the codec encodes gradient + residual
    and writes back what the payload misses, which the next step's gradient then carries."""

    def __init__(self, size: int) -> None:
        self.values = np.zeros(size, np.float32)

    def residual(self, start: int, stop: int) -> np.ndarray:
        return self.values[start:stop]

    def reset(self) -> None:
        """Forget it (after a rollback: the gradients it belongs to were never applied)."""
        self.values.fill(0)


class PullMirror:
    """A server's copy of one wire worker's two parameter buffers, for `pull: int8`.

    The worker receives each answer into one of two buffers in turn (its step may still read the
    other), so a buffer holds the parameters of two answers ago, as the worker decoded them. Each
    answer is sent as the int8 change from that copy to the new parameters, and the copy gets what
    the worker will add (`Int8Delta.decode`'s operations): the two stay equal bit for bit, and the
    part of a change rounding left out is still in the next one. A buffer whose content is not known
    here (a new connection, after a rollback) is sent exactly (codec none) and copied.
    """

    def __init__(self, size: int, capacity: int) -> None:
        self._copies = [np.zeros(size, np.float32), np.zeros(size, np.float32)]
        self._known = [False, False]
        self._parity = 0  # the buffer the next answer lands in
        self._wrote = False  # this answer's parameters went out (some, at least)
        self._codec = Int8(capacity)
        self._change = np.empty(capacity, np.float32)
        self._decoded = np.empty(capacity, np.float32)

    def encode(self, start: int, chunk: np.ndarray) -> tuple[int, memoryview, float]:
        """(codec id, payload, scale) of the parameters `chunk` at `start` for the next answer's
        buffer; the payload is valid until the next call."""
        copy = self._copies[self._parity][start:start + chunk.size]
        self._wrote = True
        if not self._known[self._parity]:
            np.copyto(copy, chunk)
            return NoCompression.id, memoryview(np.ascontiguousarray(chunk)).cast("B"), 1.0
        change = np.subtract(chunk, copy, out=self._change[:chunk.size])
        payload, scale = self._codec.encode(change)
        decoded = np.multiply(np.frombuffer(payload, np.int8), np.float32(scale), out=self._decoded[:chunk.size])
        np.add(copy, decoded, out=copy)
        return Int8Delta.id, payload, scale

    def answered(self) -> None:
        """An answer other than a rollback went out: the worker turns to its other buffer."""
        if self._wrote:
            self._known[self._parity] = True
        self._parity, self._wrote = 1 - self._parity, False

    def forget(self) -> None:
        """A rollback answer: the next answers are sent exactly (a restored checkpoint may be far
        from both buffers, and one int8 change would carry it only roughly)."""
        self._known = [False, False]
        self._wrote = False
