"""String keys under raytf: a `DynamicEmbedding(key_dtype="string")`'s strings become int64 keys in the
data path, before a batch reaches the worker's step.

Every key of a dynamic table is an int64 below 2**62 (`KEY_LIMIT`); a string is its 62-bit FarmHash
fingerprint, `tf.strings.to_hash_bucket_fast(s, 2**62)`: one function (`string_keys`) in the data path
and in the layer (a plain `model.fit`, the saved model); two strings share a key with a 2**-62 chance
per pair. Hashed in the data path (a `tf.data` map, or per batch where the data is read as numpy), the
worker's step never sees a string: the ids are segmented per server as int64 ids are, the step keeps XLA,
and the rows-in-step path (`WorkerTables.use_rows_in_step`) works as for int64 tables. The worker's
replica is told to take int64 keys at those inputs (`take_hashed_keys`); the saved model, built anew,
keeps its string inputs.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Union

from raytf.errors import ConfigError
from raytf.replica.dynamic_embedding import DynamicEmbedding, string_keys

InputName = Union[str, int]  # a model input's name, or 0 for a model of one input (its features are a tensor)


def string_inputs(model) -> tuple[InputName, ...]:
    """The model inputs that string-keyed DynamicEmbedding layers look up, as they are (the data path
    hashes them). A string table looking up something the model computes is a ConfigError."""
    from raytf.replica.model import all_layers

    layers = [layer for layer in all_layers(model) if isinstance(layer, DynamicEmbedding) and layer.key_dtype == "string"]
    if not layers:
        return ()
    inputs = list(getattr(model, "inputs", None) or [])
    found: list[InputName] = []
    for layer in layers:
        try:
            looked_up = layer.input
        except (AttributeError, ValueError):
            looked_up = None
        match = [tensor for tensor in inputs if tensor is looked_up]
        if not match:
            raise ConfigError(
                f"The DynamicEmbedding '{layer.name}' has string keys, which raytf hashes to int64 keys in the data, "
                "so it must look up a model input (keras.Input(..., dtype='string')) as it is; it looks up a tensor "
                "the model computes.",
                "Feed the string feature straight into the layer, or hash the strings yourself "
                "(tf.strings.to_hash_bucket_fast(s, 2**62)) and use key_dtype='int64'.")
        found.append(0 if len(inputs) == 1 else match[0].name)
    return tuple(dict.fromkeys(found))


def take_hashed_keys(model, names: Iterable[InputName]) -> None:
    """Let the replica's inputs `names` take the int64 keys the data path makes of their strings.

    A functional model converts each input to its declared dtype, and int64 -> string is no
    conversion, so the replica's symbolic inputs are retyped (Keras keeps a KerasTensor's dtype in
    `_dtype`; the replica is never saved: the trained model is built anew)."""
    inputs = list(model.inputs)
    for name in names:
        tensor = inputs[0] if name == 0 else next(t for t in inputs if t.name == name)
        if not hasattr(tensor, "_dtype"):
            raise RuntimeError(f"raytf: this Keras ({type(tensor).__name__}) keeps an input's dtype elsewhere; "
                               "string keys cannot be hashed before the step.")
        tensor._dtype = "int64"


def hash_features(features: Any, names: tuple[InputName, ...]) -> Any:
    """A batch's features with the string inputs `names` as int64 keys (tensors stay tensors, numpy numpy)."""
    if not names:
        return features
    if names == (0,) and not isinstance(features, dict):
        return _hashed(features)
    hashed = dict(features)
    for name in names:
        hashed[name] = _hashed(hashed[name])
    return hashed


def _hashed(strings):
    import tensorflow as tf

    keys = string_keys(strings)
    return keys if isinstance(strings, tf.Tensor) else keys.numpy()


class StringKeys:
    """The data path's side (`raytf.data.sources.FeatureTransform`): the string inputs `names` hashed to
    int64 keys, in a tf.data dataset's own graph or per batch of numpy arrays (files, Ray Data)."""

    def __init__(self, names: tuple[InputName, ...]) -> None:
        self.names = names

    def features(self, features: Any) -> Any:
        return hash_features(features, self.names)

    def batches(self, batches: Iterator) -> Iterator:
        """`batches` of (features, labels[, weights]) with their string keys hashed."""
        for batch in batches:
            yield (hash_features(batch[0], self.names), *batch[1:])

    def dataset(self, dataset):
        """A tf.data dataset of (features, labels) with its string keys hashed."""
        names = self.names

        def hashed(features, labels):
            if names == (0,) and not isinstance(features, dict):
                return string_keys(features), labels
            features = dict(features)
            for name in names:
                features[name] = string_keys(features[name])
            return features, labels

        return dataset.map(hashed)
