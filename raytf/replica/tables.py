"""A worker's side of the sparse tables: which rows it asks for, what it pushes, loading what comes back.

The worker's replica keeps its embedding tables as Keras built them, but only the rows of the
batches it is about to compute are ever fresh: before computing a batch it has loaded, from the
servers that own them, the rows of that batch's ids (asked for with the push before, or with the
first pull). Its gradient for a table is sparse; it leaves the worker as the distinct ids each
server owns and their summed gradient rows. The ids of a batch are read from the embedding
layers' inputs by a small model of the replica (functional and Sequential models have one).
"""

from __future__ import annotations

from dataclasses import dataclass

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

    def count(self) -> int:
        return sum(len(ids) for per_server in self.ids for ids in per_server)


class WorkerTables:
    def __init__(self, model, plan: ShardPlan, worker: int) -> None:
        self.specs: tuple[TableSpec, ...] = plan.tables
        self.servers = len(plan.shards)
        self.worker = worker
        tvars = model.trainable_variables
        layers = [_layer_of(model, tvars[t.variable]) for t in self.specs]
        # The tf.Variables under Keras's: a whole table, or (ShardedEmbedding) the cache of a batch's rows.
        self.variables = [tvars[t.variable].value for t in self.specs]
        self.cache_ids = [layer.cached_ids.value if spec.cached else None for spec, layer in zip(self.specs, layers)]
        self._cached = [v.numpy() if v is not None else None for v in self.cache_ids]  # what the cache holds now
        # Per table, the model input its layer looks up as it is (its name, or 0 for a model of one input):
        # its ids are then read straight from the batch, without a graph call. None: not every table's,
        # so they are read through the model, deduplicated and split in one graph call.
        self._inputs = _direct_inputs(model, layers) if self.specs else None
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
            return self._segment_ids(tuple(x for x, _ in batches))
        from raytf.replica.segments import id_segments_numpy

        return [id_segments_numpy(spec, np.concatenate([np.asarray(x if name == 0 else x[name]).reshape(-1)
                                                        for x, _ in batches]))
                for spec, name in zip(self.specs, self._inputs)]

    def load(self, request: Request, rows: list) -> int:
        """Put the rows the servers sent (per server, per table) into the replica; returns the bytes."""
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
            # The cache now holds exactly these rows, sorted by id (the layer looks ids up by binary search).
            all_ids, all_rows = np.concatenate(ids), np.concatenate(values)
            order = np.argsort(all_ids)
            cached = np.full(len(self._cached[k]), ABSENT, np.int64)
            cached[: len(order)] = all_ids[order]
            cache = np.zeros((len(cached), spec.width), np.float32)
            cache[: len(order)] = all_rows[order]
            self.variables[k].assign(cache)
            self.cache_ids[k].assign(cached)
            self._cached[k] = cached
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
