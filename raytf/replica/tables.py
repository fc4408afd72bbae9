"""A worker's side of the sparse tables: which rows it asks for, what it pushes, loading what comes back.

The worker's replica keeps its embedding tables as Keras built them, but only the rows of the
batches it is about to compute are ever fresh: before computing a batch it has loaded, from the
servers that own them, the rows of that batch's ids (asked for with the push before, or with the
first pull). Its gradient for a table is sparse; it leaves the worker as the distinct ids each
server owns and their summed gradient rows. The ids of a batch are read from the embedding
layers' inputs by a small model of the replica (functional and Sequential models have one).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from raytf.errors import ConfigError
from raytf.exchange.sharding import ShardPlan
from raytf.exchange.tables import ABSENT, TableSpec

ID_BYTES = 8  # ids travel as int64


@dataclass(frozen=True)
class Request:
    """Rows asked for: per server, per table, the local ids (what travels) and the global ids (where
    the rows go in the replica)."""

    want: tuple[tuple[np.ndarray, ...], ...]
    ids: tuple[tuple[np.ndarray, ...], ...]
    # Per table, for each id the batch looks up (in lookup order), its place among the distinct ids
    # asked for (server by server, in the order of `want`): where the step sums its gradient row.
    positions: tuple = ()
    # The requests of single batches this one joins (a start that asks for two batches' rows at once).
    parts: tuple = ()
    # Rows in the step (`WorkerTables.in_step`): per table, the block the rows were loaded into (in the
    # order of `positions`, a fixed capacity of rows), set when the answer is loaded.
    blocks: list = field(default_factory=list)

    def count(self) -> int:
        return sum(len(ids) for per_server in self.ids for ids in per_server)

    @classmethod
    def joined(cls, requests: list["Request"]) -> "Request":
        """One request for the rows of `requests` (per server, per table: theirs one after the other)."""
        servers, tables = len(requests[0].want), len(requests[0].want[0]) if requests[0].want else 0
        join = lambda part: tuple(tuple(np.concatenate([getattr(r, part)[j][k] for r in requests])  # noqa: E731
                                        for k in range(tables)) for j in range(servers))
        return cls(join("want"), join("ids"), parts=tuple(requests))


class WorkerTables:
    def __init__(self, model, plan: ShardPlan, worker: int) -> None:
        self.specs: tuple[TableSpec, ...] = plan.tables
        self.servers = len(plan.shards)
        self.worker = worker
        tvars = model.trainable_variables
        layers = self._layers = [_layer_of(model, tvars[t.variable]) for t in self.specs]
        self._table_variables = [tvars[t.variable] for t in self.specs]  # Keras's
        # The tf.Variables under Keras's: a whole table, or (ShardedEmbedding) the cache of a batch's rows.
        self.variables = [tvars[t.variable].value for t in self.specs]
        self.cache_ids = [layer.cached_ids.value if spec.cached else None for spec, layer in zip(self.specs, layers)]
        self._cached = [v.numpy() if v is not None else None for v in self.cache_ids]  # what the cache holds now
        # Per table, the model input its layer looks up as it is (its name, or 0 for a model of one input):
        # its ids are then read straight from the batch, without a graph call. None: not every table's,
        # so they are read through the model, deduplicated and split in one graph call.
        self._inputs = _direct_inputs(model, layers) if self.specs else None
        if self._inputs is not None:
            from raytf.replica.segments import IdSegmenter

            self._segmenters = [IdSegmenter(spec) for spec in self.specs]
            # Tables of ragged ids, padded with PAD in the data path (raytf.replica.key_inputs): no row for those.
            self._padded = [getattr(layer, "ragged_input", False) for layer in layers]
        if self.specs and self._inputs is None:
            import tensorflow as tf

            from raytf.replica.segments import id_segments

            read_ids = _id_reader(model, layers)

            # The ids of the batches (one, or two when read ahead).
            def segment_ids(xs):
                read = [read_ids(x) for x in xs]
                return [id_segments(spec, tf.concat([tf.reshape(r[k], [-1]) for r in read], 0))
                        for k, spec in enumerate(self.specs)]

            self._segment_ids = tf.function(segment_ids)
        self.row_bytes = [4 * t.width + ID_BYTES for t in self.specs]
        # Rows in the step (`use_rows_in_step`): the step looks a batch's ids up in the block of the
        # rows the servers sent for it, by their positions, instead of in the replica's whole table.
        self.in_step = False
        self._ring: list[list[np.ndarray]] = []  # blocks the rows are copied into, used in turn
        self._next_block = 0

    def use_rows_in_step(self, model, features, buffers: int) -> str | None:
        """Let the step read each table's rows from a block of the rows sent (no scatter into the
        replica's table, a gather from a few hundred kilobytes instead of the whole table). Possible
        when every table is a plain Embedding or ShardedEmbedding whose ids are a model input as they
        are, with a fixed number of ids per batch; checked on `features` (the model's output must be
        the same either way). Returns why not, or None when on. `buffers`: blocks per table in turn (the batches
        whose rows are loaded and not yet computed, plus one)."""
        import keras
        import tensorflow as tf

        from raytf.runtime import aligned_zeros

        if not self.specs or self._inputs is None:
            return "a table looks up ids the model computes" if self.specs else "no sparse tables"
        from raytf.replica.dynamic_embedding import DynamicEmbedding
        from raytf.replica.layers import ShardedEmbedding

        for spec, layer in zip(self.specs, self._layers):
            if spec.per_batch <= 0:
                return f"'{spec.layer}' has no fixed number of ids per batch"
            plain = type(layer).call in (keras.layers.Embedding.call, ShardedEmbedding.call, DynamicEmbedding.call)
            if not plain or getattr(layer, "mask_zero", False) or getattr(layer, "quantization_mode", None) \
                    or getattr(layer, "lora_enabled", False):
                return f"'{spec.layer}' is not a plain Embedding (a subclass, mask_zero, LoRA or quantized)"
        if len(set(map(str, self._inputs))) < len(self._inputs):
            return "two tables look up the same input"
        # The same output from the tables (a ShardedEmbedding's cache holding the batch's rows) and from
        # the rows of the batch by position: nothing else reads the ids.
        request = self.request([(features, None)])
        blocks, rng = [], np.random.default_rng(0)
        for k, spec in enumerate(self.specs):
            block = aligned_zeros(spec.per_batch * spec.width).reshape(spec.per_batch, spec.width)
            ids = np.concatenate([request.ids[j][k] for j in range(self.servers)])
            if spec.cached:  # its cache holds no rows yet: some, in both
                block[:len(ids)] = rng.normal(size=(len(ids), spec.width))
                self._fill_cache(k, ids, block[:len(ids)])
            else:
                block[:len(ids)] = tf.gather(self.variables[k], ids).numpy()
            blocks.append(tf.constant(block))
        whole = model(features, training=False)
        for layer in self._layers:
            layer.by_position = True
        with keras.StatelessScope() as scope:
            map_rows(scope, self._table_variables, blocks)
            by_rows = model(self.by_position(features, request.positions), training=False)
        if not all(np.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(tf.nest.flatten(whole), tf.nest.flatten(by_rows))):
            for layer in self._layers:
                layer.by_position = False
            return "the model's output differs when its ids are replaced by their rows' positions (another layer reads them)"
        self._ring = [[aligned_zeros(spec.per_batch * spec.width).reshape(spec.per_batch, spec.width)
                       for spec in self.specs] for _ in range(buffers)]
        self.in_step = True
        return None

    def by_position(self, features, positions):
        """`features` with each table's ids replaced by their places in its block (graph or eager)."""
        import tensorflow as tf

        def placed(ids, where):
            return tf.reshape(tf.cast(where, ids.dtype), tf.shape(ids))

        if self._inputs == [0]:
            return placed(tf.convert_to_tensor(features), positions[0])
        features = dict(features)
        for name, where in zip(self._inputs, positions):
            features[name] = placed(tf.convert_to_tensor(features[name]), where)
        return features

    def request(self, batches: list) -> Request:
        """The rows the worker needs to compute `batches` (features, labels), by server."""
        want: list[list[np.ndarray]] = [[] for _ in range(self.servers)]
        ids_out: list[list[np.ndarray]] = [[] for _ in range(self.servers)]
        positions = []
        if self.specs:
            for k, (spec, (unique, local, counts, low, high, where)) in enumerate(zip(self.specs, self._segments(batches))):
                positions.append(where)
                if int(low) < 0 or int(high) >= spec.rows:
                    spec.check_ids(np.array([int(low), int(high)]), self.worker)
                unique, local, start = np.asarray(unique), np.asarray(local), 0
                for server, count in enumerate(np.asarray(counts).tolist()):
                    want[server].append(local[start:start + count])
                    ids_out[server].append(unique[start:start + count])
                    start += count
        return Request(tuple(map(tuple, want)), tuple(map(tuple, ids_out)), tuple(positions))

    def _segments(self, batches: list) -> list:
        """Per table, `raytf.replica.segments.id_segments` of the ids `batches` look up."""
        if self._inputs is None:
            return self._segment_ids(tuple(batch[0] for batch in batches))
        segments = []
        for segment, name, padded in zip(self._segmenters, self._inputs, self._padded):
            ids = np.concatenate([np.asarray(x if name == 0 else x[name]).reshape(-1) for x in (batch[0] for batch in batches)])
            segments.append(segment(ids) if not padded else _without_pads(segment, ids))
        return segments

    def load(self, request: Request, rows: list, in_place: bool = False) -> int:
        """Put the rows the servers sent (per server, per table) into the replica, or with rows in the
        step into the request's blocks; returns the bytes. `in_place`: `rows` are one server's blocks
        of the whole capacity (its row slot), which the step may read until the next push."""
        if self.in_step:
            return self._load_blocks(request, rows, in_place)
        import tensorflow as tf

        from raytf.runtime import tensor_of

        received = 0
        for k, spec in enumerate(self.specs):
            ids = [request.ids[server][k] for server in range(self.servers)]
            values = [per_table[k] for per_table in rows]
            received += sum(len(i) for i in ids) * self.row_bytes[k]
            if not spec.cached:
                # A table the replica holds whole: one eager op per server (a tf.function call costs more
                # than the op here), reading the row slot in place.
                for server_ids, server_rows in zip(ids, values):
                    if len(server_ids):
                        tf.raw_ops.ResourceScatterUpdate(resource=self.variables[k].handle,
                                                         indices=tensor_of(server_ids, np.int64),
                                                         updates=tensor_of(server_rows, np.float32))
                continue
            self._fill_cache(k, np.concatenate(ids), np.concatenate(values))
        return received

    def _fill_cache(self, k: int, ids: np.ndarray, rows: np.ndarray) -> None:
        """A ShardedEmbedding's cache now holds exactly these rows, sorted by id (the layer looks ids
        up by binary search)."""
        order = np.argsort(ids)
        cached = np.full(len(self._cached[k]), ABSENT, np.int64)
        cached[: len(order)] = ids[order]
        cache = np.zeros((len(cached), self.specs[k].width), np.float32)
        cache[: len(order)] = rows[order]
        self.variables[k].assign(cache)
        self.cache_ids[k].assign(cached)
        self._cached[k] = cached

    def _load_blocks(self, request: Request, rows: list, in_place: bool) -> int:
        if request.parts:  # one answer for several batches: each its own blocks
            received, starts = 0, [[0] * len(self.specs) for _ in range(self.servers)]
            for part in request.parts:
                own = []
                for j in range(self.servers):
                    own.append([rows[j][k][starts[j][k]:starts[j][k] + len(part.ids[j][k])] for k in range(len(self.specs))])
                    starts[j] = [start + len(part.ids[j][k]) for k, start in enumerate(starts[j])]
                received += self._load_blocks(part, own, False)
            return received
        received = 0
        if in_place:
            request.blocks[:] = rows[0]
        else:
            blocks = self._ring[self._next_block]
            self._next_block = (self._next_block + 1) % len(self._ring)
            for k, block in enumerate(blocks):
                start = 0
                for j in range(self.servers):
                    values = rows[j][k]
                    np.copyto(block[start:start + len(values)], values)
                    start += len(values)
            request.blocks[:] = blocks
        for k in range(len(self.specs)):
            received += sum(len(request.ids[j][k]) for j in range(self.servers)) * self.row_bytes[k]
        return received

    def gradient(self, summed: list, request: Request) -> tuple[tuple, int, int]:
        """A step's sparse gradients (per table: the summed rows of the distinct ids of `request`,
        the batch's own, in its order) as what each server gets (per table: its local ids and their
        rows, views); also the bytes and the distinct ids."""
        per_server: list[list] = [[] for _ in range(self.servers)]
        sent = distinct = 0
        for k, rows in enumerate(summed):
            start = 0
            for server in range(self.servers):
                local = request.want[server][k]
                per_server[server].append((local, rows[start:start + len(local)]))
                start += len(local)
            distinct += start
            sent += start * self.row_bytes[k]
        return tuple(map(tuple, per_server)), sent, distinct


def _without_pads(segment, ids: np.ndarray) -> tuple:
    """`segment(ids)` of the ids that are not PAD; a PAD's position is PAD (the step drops its gradient row:
    unsorted_segment_sum skips negative places, and the layer gives it no row)."""
    from raytf.replica.dynamic_embedding import PAD

    real = ids != PAD
    unique, local, counts, low, high, positions = segment(ids[real])
    placed = np.full(len(ids), PAD, np.int32)
    placed[real] = positions
    return unique, local, counts, low, high, placed


def map_rows(scope, variables, blocks) -> None:
    """Map each table's Keras variable to the block of its batch's rows inside `scope` (a
    keras.StatelessScope). The scope's constructor refuses values of another shape than the
    variable's, so they are added to its mapping afterwards: a lookup reads a variable's value
    through the scope (`get_current_value`), whatever its shape."""
    for variable, block in zip(variables, blocks):
        scope.state_mapping[id(variable)] = block


def _layer_of(model, variable):
    import keras

    from raytf.replica.model import all_layers

    return next(layer for layer in all_layers(model)
                if isinstance(layer, keras.layers.Embedding) and layer.embeddings is variable)


def _direct_inputs(model, layers: list) -> list | None:
    """Per layer, the model input it looks up unchanged: 0 for a model of one input (the batch's
    features are that tensor), else the input's name (the features are a dict); None when a layer
    looks up something computed (its ids are read through the model, `_id_reader`)."""
    inputs = list(getattr(model, "inputs", None) or [])
    found = []
    for layer in layers:
        try:
            looked_up = layer.input
        except (AttributeError, ValueError):
            return None
        match = [i for i, tensor in enumerate(inputs) if tensor is looked_up]
        if not match:
            return None
        found.append(0 if len(inputs) == 1 else inputs[match[0]].name)
    return found


def _id_reader(model, layers: list):
    """A function of a batch's features that returns the ids each table's layer looks up."""
    import keras
    import tensorflow as tf

    try:
        reader = keras.Model(model.inputs, [layer.input for layer in layers])
    except (AttributeError, ValueError, TypeError) as err:
        raise ConfigError(
            f"sparse tables: cannot read the ids of the embedding layers {[layer.name for layer in layers]} from the "
            f"model's inputs ({err}); raytf reads them from the layers' inputs, which a functional or Sequential "
            "model built on keras.Input has.",
            "Build the model with keras.Input (functional or Sequential), or set sparse.tables: none.",
        ) from None

    @tf.function
    def read(x):
        ids = reader(x, training=False)
        return ids if isinstance(ids, (list, tuple)) else [ids]

    return read
