"""A DynamicEmbedding's keys as the worker's step takes them: strings hashed to int64 keys, ragged lists
padded to a fixed block, where the data is read, before a batch reaches the step.

Strings: every key of a dynamic table is an int64 below 2**62 (`KEY_LIMIT`); a string is its 62-bit
FarmHash fingerprint, `tf.strings.to_hash_bucket_fast(s, 2**62)`: one function (`string_keys`) in the
data path and in the layer (a plain `model.fit`, the saved model); two strings share a key with a
2**-62 chance per pair.

Ragged lists (`keras.Input((None,), ragged=True)`, a `DynamicEmbedding` with a combiner and
`max_ids_per_example=N`): each example's list is padded with PAD to N ids, or cut to its first N (said
once per worker), so every batch has the same shape: the step keeps XLA without a compile per batch,
and the row block of a batch has a fixed size (`TableSpec.per_batch`). PAD places get no row and no
gradient, and the combiner does not count them.

Done in the data path (a `tf.data` map for strings; per batch of numpy arrays otherwise), the worker's
step never sees a string or a ragged tensor: the ids are segmented per server as int64 ids are and the
rows-in-step path (`WorkerTables.use_rows_in_step`) works as for fixed int64 inputs. The worker's replica
is told to take int64 keys at string inputs (`take_keys`); the saved model, built anew, keeps its
string and ragged inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Union

from raytf.errors import ConfigError
from raytf.replica.dynamic_embedding import PAD, DynamicEmbedding, pad_ragged, string_keys

InputName = Union[str, int]  # a model input's name, or 0 for a model of one input (its features are a tensor)


@dataclass(frozen=True)
class KeyInput:
    """A model input a DynamicEmbedding looks up, and what the data path does to it."""

    name: InputName
    layer: str
    strings: bool  # hashed to int64 keys
    pad_to: int | None  # ragged: padded with PAD (or cut) to this many ids per example


def key_inputs(model) -> tuple[KeyInput, ...]:
    """The model inputs of DynamicEmbedding layers with string keys or ragged ids, which must look up a
    model input as it is (the data path hashes and pads it): else a ConfigError."""
    from raytf.replica.model import all_layers

    layers = [layer for layer in all_layers(model) if isinstance(layer, DynamicEmbedding)
              and (layer.key_dtype == "string" or layer.ragged_input)]
    inputs = list(getattr(model, "inputs", None) or [])
    found: list[KeyInput] = []
    for layer in layers:
        try:
            looked_up = layer.input
        except (AttributeError, ValueError):
            looked_up = None
        match = [tensor for tensor in inputs if tensor is looked_up]
        if not match:
            what = "string keys" if layer.key_dtype == "string" else "ragged ids"
            raise ConfigError(
                f"The DynamicEmbedding '{layer.name}' has {what}, which raytf turns into a fixed block of int64 keys "
                "where the data is read, so it must look up a model input (keras.Input) as it is; it looks up a "
                "tensor the model computes.",
                "Feed that input straight into the layer (compute such features in the dataset), or hash strings "
                "yourself (tf.strings.to_hash_bucket_fast(s, 2**62)) and pad lists to a fixed length.")
        found.append(KeyInput(0 if len(inputs) == 1 else match[0].name, layer.name, layer.key_dtype == "string",
                              layer.max_ids_per_example if layer.ragged_input else None))
    return tuple(found)


def take_keys(model, inputs: tuple[KeyInput, ...]) -> None:
    """Let the replica's string inputs take the int64 keys the data path makes of their strings.

    A functional model converts each input to its declared dtype, and int64 -> string is no
    conversion, so the replica's symbolic inputs are retyped (Keras keeps a KerasTensor's dtype in
    `_dtype`; the replica is never saved: the trained model is built anew). A ragged input takes a
    dense tensor as it is."""
    tensors = list(model.inputs)
    for key in inputs:
        if not key.strings:
            continue
        tensor = tensors[0] if key.name == 0 else next(t for t in tensors if t.name == key.name)
        if not hasattr(tensor, "_dtype"):
            raise RuntimeError(f"raytf: this Keras ({type(tensor).__name__}) keeps an input's dtype elsewhere; "
                               "string keys cannot be hashed before the step.")
        tensor._dtype = "int64"


class KeyTransform:
    """The data path's side (`raytf.data.sources.FeatureTransform`) for `inputs`: strings hashed in a
    tf.data dataset's own graph, a batch at a time (or per batch where the data is read as numpy: files,
    Ray Data), ragged lists padded per batch."""

    def __init__(self, inputs: tuple[KeyInput, ...], worker: int = 0) -> None:
        self.inputs = inputs
        self.worker = worker
        self._cut_said: set[str] = set()

    def features(self, features: Any) -> Any:
        """A batch's features with the key inputs as int64 keys (tensors stay tensors, numpy numpy)."""
        return _with_each(features, self.inputs, self._keys)

    def batches(self, batches: Iterator) -> Iterator:
        """`batches` of (features, labels[, weights]) with their keys made."""
        for batch in batches:
            yield (self.features(batch[0]), *batch[1:])

    def dataset(self, batches):
        """A tf.data dataset of batches, (features, labels[, weights]), with their strings hashed in its own
        graph (ragged lists too; they are padded per batch by `batches`, which can say when it cuts one)."""
        strings = [key for key in self.inputs if key.strings]
        if not strings:
            return batches

        return batches.map(lambda features, *rest: (_with_each(features, strings, lambda v, _: _hashed(v)), *rest))

    def _keys(self, values, key: KeyInput):
        import numpy as np
        import tensorflow as tf

        from raytf.data.files import holds_strings, is_ragged, ragged_tensor

        as_tensor = isinstance(values, (tf.Tensor, tf.RaggedTensor))  # (a batch's other features are so too)
        if is_ragged(values):  # lists of different lengths read from files
            values = ragged_tensor(values)
        values = _hashed(values) if holds_strings(values) else values
        if key.pad_to is None:
            return values
        if not isinstance(values, tf.RaggedTensor):
            values = tf.RaggedTensor.from_tensor(tf.convert_to_tensor(values))
        lengths = values.row_lengths().numpy()
        if key.layer not in self._cut_said and lengths.size and int(lengths.max()) > key.pad_to:
            self._cut_said.add(key.layer)
            print(f"raytf: worker {self.worker}: examples with more than max_ids_per_example={key.pad_to} ids for the "
                  f"DynamicEmbedding '{key.layer}' are cut to their first {key.pad_to} (said once).", flush=True)
        padded = pad_ragged(tf.cast(values, tf.int64), key.pad_to)
        return padded if as_tensor else np.asarray(padded)


def _with_each(features: Any, inputs, make) -> Any:
    """`features` with `make(values, key)` for each of the key `inputs` (a model of one input: its features
    are the tensor itself; else a dict by input name, copied)."""
    if not inputs:
        return features
    if inputs[0].name == 0 and not isinstance(features, dict):
        return make(features, inputs[0])
    features = dict(features)
    for key in inputs:
        features[key.name] = make(features[key.name], key)
    return features


def _hashed(values):
    """Strings (a tensor, a ragged tensor or numpy) as their int64 keys, in the same kind of container."""
    import tensorflow as tf

    if isinstance(values, tf.RaggedTensor):
        return values.with_flat_values(string_keys(values.flat_values))
    keys = string_keys(values)
    return keys if isinstance(values, tf.Tensor) else keys.numpy()


__all__ = ["PAD", "KeyInput", "KeyTransform", "key_inputs", "take_keys"]
