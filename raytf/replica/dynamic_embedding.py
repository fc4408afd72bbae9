"""`DynamicEmbedding`: an embedding table keyed by ids from an unbounded space (user and item ids,
crossed features, hashed strings), with a row created on a key's first touch.

Under raytf the rows live on the parameter servers (`raytf.exchange.dynamic_rows`): keys go to a
server by a hash of the key, a server creates a row when an admitted key is first asked for, and
evicts rows as the layer's `eviction` says; the layer itself holds only the rows of the batches a
worker is about to compute, as `ShardedEmbedding` does. In a plain Keras program (a notebook,
`model.fit`) it is a local hash table of at most `local_capacity` rows: the same model code runs
there, every key is admitted and none evicted, and keys past the capacity read the default row.

The saved model holds the live keys and rows (a `.keras` file loads with `keras.models.load_model`
and no cluster); a key it does not hold reads the default row (zeros).
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
from typing import Iterator

import keras
import numpy as np

from raytf.exchange.dynamic_rows import KEY_LIMIT, initial_key_rows
from raytf.replica.layers import _ON_SERVERS, ShardedEmbedding, initializer_settings

COMBINERS = (None, "sum", "mean", "sqrtn")
KEY_DTYPES = ("int64", "string")
ADMISSION = ("min_count", "probability")
EVICTION = ("ttl_steps", "capacity")


# Set while raytf builds the trained model: per DynamicEmbedding name, the live rows it must hold.
_LOCAL_ROWS: contextvars.ContextVar[dict[str, int]] = contextvars.ContextVar("raytf_local_rows", default={})


@contextlib.contextmanager
def local_rows(rows: dict[str, int]) -> Iterator[None]:
    """Build DynamicEmbedding layers with room for at least these many rows (by layer name)."""
    token = _LOCAL_ROWS.set(rows)
    try:
        yield
    finally:
        _LOCAL_ROWS.reset(token)


PAD = -1  # a padded place of a ragged input (keys are >= 0): no row, no gradient, not counted by the combiner


def pad_ragged(ids, width: int):
    """A ragged (examples, None) tensor of int64 ids as a dense (examples, width) one: each list cut to its
    first `width` ids or padded with PAD."""
    import tensorflow as tf

    return ids.to_tensor(default_value=tf.constant(PAD, ids.dtype), shape=[None, width])


def string_keys(strings):
    """int64 keys of a string tensor (any shape): their 62-bit FarmHash fingerprints, below KEY_LIMIT."""
    import tensorflow as tf

    return tf.strings.to_hash_bucket_fast(strings, KEY_LIMIT)


def _unknown(kind: str, key: str, known: tuple) -> ValueError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ValueError(f"DynamicEmbedding {kind}: unknown key '{key}' (known: {', '.join(known)}).{hint}")


def check_settings(output_dim, key_dtype, combiner, admission, eviction, local_capacity,
                   max_ids_per_example=None) -> None:
    """Refuse bad settings with the key named (ValueError): before anything is built or trained."""
    if not isinstance(output_dim, int) or output_dim < 1:
        raise ValueError(f"DynamicEmbedding output_dim must be a positive int, not {output_dim!r}.")
    if key_dtype not in KEY_DTYPES:
        raise ValueError(f"DynamicEmbedding key_dtype must be one of {', '.join(KEY_DTYPES)}, not {key_dtype!r}.")
    if combiner not in COMBINERS:
        raise ValueError(f"DynamicEmbedding combiner must be None, 'sum', 'mean' or 'sqrtn', not {combiner!r}.")
    for kind, given, known in (("admission", admission, ADMISSION), ("eviction", eviction, EVICTION)):
        if given is None:
            continue
        if not isinstance(given, dict):
            raise ValueError(f"DynamicEmbedding {kind} must be a dict such as "
                             f"{{'{known[0]}': ...}}, not {given!r}.")
        for key in given:
            if key not in known:
                raise _unknown(kind, key, known)
    admission, eviction = admission or {}, eviction or {}
    checks = (
        ("admission", "min_count", admission.get("min_count"), lambda v: isinstance(v, int) and v >= 1, "an int >= 1"),
        ("admission", "probability", admission.get("probability"),
         lambda v: isinstance(v, (int, float)) and 0 < v <= 1, "a number in (0, 1]"),
        ("eviction", "ttl_steps", eviction.get("ttl_steps"), lambda v: isinstance(v, int) and v >= 1,
         "an int >= 1 (steps a row may go untouched)"),
        ("eviction", "capacity", eviction.get("capacity"), lambda v: isinstance(v, int) and v >= 1,
         "an int >= 1 (rows of the table)"),
    )
    for kind, key, value, ok, what in checks:
        if value is not None and (isinstance(value, bool) or not ok(value)):
            raise ValueError(f"DynamicEmbedding {kind}.{key} must be {what}, not {value!r}.")
    if not isinstance(local_capacity, int) or local_capacity < 1:
        raise ValueError(f"DynamicEmbedding local_capacity must be a positive int, not {local_capacity!r}.")
    if max_ids_per_example is not None and (isinstance(max_ids_per_example, bool) or not isinstance(max_ids_per_example, int)
                                            or max_ids_per_example < 1):
        raise ValueError(f"DynamicEmbedding max_ids_per_example must be a positive int or None, not {max_ids_per_example!r}.")


@keras.saving.register_keras_serializable(package="raytf")
class DynamicEmbedding(ShardedEmbedding):
    """An embedding of keys from an unbounded int64 (or string) space; see the module's docstring."""

    def __init__(self, output_dim: int, key_dtype: str = "int64", embeddings_initializer="uniform",
                 combiner: str | None = None, admission: dict | None = None, eviction: dict | None = None,
                 local_capacity: int = 65536, max_ids_per_example: int | None = None, **kwargs) -> None:
        check_settings(output_dim, key_dtype, combiner, admission, eviction, local_capacity, max_ids_per_example)
        kwargs.pop("input_dim", None)  # from a saved config
        super().__init__(input_dim=KEY_LIMIT, output_dim=output_dim, embeddings_initializer=embeddings_initializer,
                         **kwargs)
        self.key_dtype, self.combiner = key_dtype, combiner
        self.admission, self.eviction = dict(admission or {}), dict(eviction or {})
        self.local_capacity = local_capacity
        # Ragged inputs under raytf: each example's ids padded (with PAD) or cut to this many.
        self.max_ids_per_example = max_ids_per_example
        self.ragged_input = False
        self.supports_jit = False  # a hash table's ops have no XLA kernel (the local mode's)

    def get_config(self) -> dict:
        config = super().get_config()
        config.pop("input_dim", None)
        config.update(key_dtype=self.key_dtype, combiner=self.combiner, admission=self.admission,
                      eviction=self.eviction, local_capacity=self.local_capacity,
                      max_ids_per_example=self.max_ids_per_example)
        return config

    @property
    def init_settings(self) -> dict:
        """The initializer as `initial_key_rows` takes it (the seed is the run's; 0 in local mode)."""
        return initializer_settings(self, getattr(self, "seed", 0))

    def build(self, input_shape=None):
        per_example = tuple(input_shape[1:]) if input_shape is not None else ()
        self.ragged_input = any(dim is None for dim in per_example)
        if _ON_SERVERS.get() is not None:
            if self.ragged_input:  # a fixed block of ids per example: the ragged lists padded to it
                self._check_ragged_under_raytf(per_example)
                input_shape = (input_shape[0], self.max_ids_per_example)
            return super().build(input_shape)  # the row cache of the coming batches, as ShardedEmbedding's
        import tensorflow as tf

        self.on_servers = False
        self.local_capacity = max(self.local_capacity, _LOCAL_ROWS.get().get(self.name, 0))
        # Row 0 is the default row (zeros, never trained); keys take rows 1..local_capacity as they come.
        self._embeddings = self.add_weight(shape=(self.local_capacity + 1, self.output_dim), initializer="zeros",
                                          name="embeddings", trainable=True)
        self._rows_used = self.add_weight(shape=(), dtype="int64", initializer="zeros", name="rows_used",
                                          trainable=False)
        self._table = tf.lookup.experimental.MutableHashTable(tf.int64, tf.int64, default_value=-1)
        self.built = True

    def keys_of(self, inputs):
        """int64 keys of the inputs: strings by `string_keys`; under raytf a string table's keys come
        hashed already (`raytf.replica.key_inputs`)."""
        import tensorflow as tf

        if inputs.dtype == tf.string:
            return string_keys(inputs)
        return tf.cast(inputs, tf.int64)

    def call(self, inputs, training=None):
        import tensorflow as tf

        if getattr(self, "on_servers", False):
            return self._call_on_servers(inputs)
        if isinstance(inputs, tf.RaggedTensor):  # (examples, ragged ids): rows of the flat keys, combined per example
            rows = inputs.with_flat_values(self._local_rows(self.keys_of(inputs.flat_values), training))
            if self.combiner is None:
                return rows
            dense = rows.to_tensor()
            return self._combine(dense, tf.sequence_mask(rows.row_lengths(), tf.shape(dense)[1]))
        keys = self.keys_of(inputs)
        rows = self._local_rows(tf.reshape(keys, [-1]), training)
        rows = tf.reshape(rows, tf.concat([tf.shape(keys), [self.output_dim]], 0))
        if not self.ragged_input:
            return self._combine(rows)
        # Ragged lists given dense (a SavedModel's signature takes them so), padded with PAD or '' for strings.
        return self._combine(rows, inputs != ("" if inputs.dtype == tf.string else tf.constant(PAD, inputs.dtype)))

    def _call_on_servers(self, inputs):
        """The rows from the worker's cache or block (`ShardedEmbedding.call`). Ragged ids come padded with PAD
        to `max_ids_per_example` (the data path pads a batch's lists; the driver's checks pass ragged tensors)."""
        import tensorflow as tf

        if not self.ragged_input:
            return self._combine(super().call(self.keys_of(inputs)))
        if isinstance(inputs, tf.RaggedTensor):
            inputs = pad_ragged(inputs.with_flat_values(self.keys_of(inputs.flat_values)), self.max_ids_per_example)
        keys = self.keys_of(inputs)
        real = keys != PAD  # (by position, a pad's place is PAD too)
        return self._combine(super().call(tf.where(real, keys, tf.zeros_like(keys))), real)

    def _check_ragged_under_raytf(self, per_example: tuple) -> None:
        from raytf.errors import ConfigError

        if len(per_example) != 1:
            problem = f"its input has the shape {per_example} per example (raytf takes one ragged list of ids)"
        elif self.combiner is None:
            problem = "it has no combiner (a ragged list of rows per example has no fixed shape)"
        elif self.max_ids_per_example is None:
            problem = "it has no max_ids_per_example (the worker's step keeps a fixed block of ids per batch)"
        else:
            return
        raise ConfigError(
            f"The DynamicEmbedding '{self.name}' looks up ragged ids, but {problem}.",
            "Give the layer a combiner ('sum', 'mean' or 'sqrtn') and max_ids_per_example=N (longer lists are cut to "
            "their first N ids, said once per worker), for one ragged input of shape (None,).")

    def _local_rows(self, keys, training):
        """The local table's rows of flat int64 `keys` (created for new keys when training)."""
        import tensorflow as tf

        unique, where = tf.unique(keys)
        slots = tf.reshape(self._table.lookup(unique), [-1])  # (the table's lookup has no static shape)
        if training:
            slots = self._create(unique, slots)
        found = slots > 0
        rows = tf.gather(self._embeddings.value, tf.where(found, slots, tf.zeros_like(slots)))
        rows = tf.where(found[:, None], rows, tf.zeros_like(rows))  # the default row, and no gradient into it
        return tf.gather(rows, where)

    def _create(self, unique, slots):
        """Rows for the keys without one (as many as there is room for), from the initializer."""
        import tensorflow as tf

        new = tf.boolean_mask(unique, slots < 0)
        used = self._rows_used.value
        take = tf.minimum(tf.size(new, tf.int64), tf.maximum(self.local_capacity - used, 0))
        new = new[:take]
        places = used + 1 + tf.range(take, dtype=tf.int64)
        init, width = self.init_settings, self.output_dim
        rows = tf.numpy_function(lambda k: initial_key_rows(init, k, width), [new], tf.float32, stateful=False)
        self._embeddings.value.scatter_nd_update(places[:, None], tf.reshape(rows, [-1, width]))
        self._table.insert(new, places)
        self._rows_used.assign(used + take)
        return tf.reshape(self._table.lookup(unique), [-1])

    def _combine(self, rows, real=None):
        """rows: (..., ids, width) -> (..., width) by the combiner; as they are without one. `real`: which
        ids are the example's own: the rest (padding) get zero rows, no gradient, and no count in the mean
        and sqrtn."""
        import tensorflow as tf

        if real is not None:
            rows = rows * tf.cast(real, rows.dtype)[..., None]
        if self.combiner is None:
            return rows
        summed = tf.reduce_sum(rows, axis=-2)
        if self.combiner == "sum":
            return summed
        if real is None:
            count = tf.cast(tf.shape(rows)[-2], rows.dtype)
        else:  # an example without ids gives zeros
            count = tf.maximum(tf.reduce_sum(tf.cast(real, rows.dtype), axis=-1, keepdims=True), 1.0)
        return summed / (count if self.combiner == "mean" else tf.sqrt(count))

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape) + (self.output_dim,)
        return shape if self.combiner is None else shape[:-2] + (self.output_dim,)

    # -- live rows in and out (the saved model; the driver's final model) ---------------------------
    def live_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys sorted, their rows) held locally."""
        keys, places = (t.numpy() for t in self._table.export())
        order = np.argsort(keys)
        return keys[order], self._embeddings.numpy()[places[order]]

    def set_rows(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """Hold exactly these keys and rows (the trained table); more than `local_capacity` rows is an
        error (the driver builds the final model with room for them)."""
        import tensorflow as tf

        keys, rows = np.asarray(keys, np.int64), np.asarray(rows, np.float32)
        if len(keys) > self.local_capacity:
            raise ValueError(f"DynamicEmbedding '{self.name}': {len(keys):,} rows do not fit local_capacity "
                             f"{self.local_capacity:,}.")
        table = np.zeros((self.local_capacity + 1, self.output_dim), np.float32)
        table[1:len(keys) + 1] = rows
        self._embeddings.assign(table)
        self._table.remove(self._table.export()[0])
        if len(keys):
            self._table.insert(tf.constant(keys), tf.range(1, len(keys) + 1, dtype=tf.int64))
        self._rows_used.assign(len(keys))

    def save_own_variables(self, store) -> None:
        keys, rows = self.live_rows()
        store["keys"] = keys
        store["rows"] = rows

    def load_own_variables(self, store) -> None:
        self.set_rows(np.asarray(store["keys"]), np.asarray(store["rows"]))
