"""Which embedding tables of a model become sparse tables (rows on the servers), found on the
driver's replica from the config's `sparse` section."""

from __future__ import annotations

from raytf.errors import ConfigError
from raytf.exchange.tables import TableSpec
from raytf.replica.layers import ShardedEmbedding, initializer_settings
from raytf.replica.model import all_layers, make_loss
from raytf.replica.key_inputs import key_inputs


def find_tables(model, config, features, labels) -> tuple[list[TableSpec], list[str]]:
    """The sparse tables of `model` as the config's `sparse` section asks, and notices about tables
    `auto` left dense. A table named in the config that cannot be sparse is a ConfigError."""
    import keras

    sparse = config.sparse
    if sparse.tables == "none":
        return [], []
    tvars = model.trainable_variables
    position = {id(v): i for i, v in enumerate(tvars)}
    candidates = [layer for layer in all_layers(model) if isinstance(layer, keras.layers.Embedding)]
    named = set() if sparse.tables == "auto" else set(sparse.tables)
    missing = named - {layer.name for layer in candidates}
    if missing:
        raise ConfigError(
            f"sparse.tables names {', '.join(sorted(map(repr, missing)))}, but the model has no embedding layer of that "
            f"name (its embedding layers: {', '.join(repr(layer.name) for layer in candidates) or 'none'}).",
            "Name keras.layers.Embedding layers of the model, or use sparse.tables: auto.",
        )
    key_inputs(model)  # a table of strings or ragged ids must look up a model input (the data path makes its keys)
    sparse_grads = _sparse_gradients(model, features, labels, config)
    tables, notices = [], []
    servers = config.distribution.parameter_servers
    for layer in candidates:
        rows, width = (int(n) for n in (layer.logical_shape if _is_sharded(layer) else layer.embeddings.shape))
        if sparse.tables == "auto" and rows * width * 4 < sparse.min_bytes and not _is_sharded(layer):
            continue
        problem = _ineligible(layer, id(layer.embeddings) in sparse_grads)
        if problem:
            if layer.name in named or _is_sharded(layer):
                raise ConfigError(f"sparse.tables: the embedding layer '{layer.name}' cannot be a sparse table: {problem}.",
                                  "Fix the layer, or leave it out of sparse.tables (it is then exchanged whole).")
            notices.append(f"The embedding '{layer.name}' stays dense: {problem}.")
            continue
        on_servers = _is_sharded(layer) and getattr(layer, "on_servers", False)
        dynamic = _dynamic(layer)
        tables.append(TableSpec(variable=position[id(layer.embeddings)], layer=layer.name, rows=rows, width=width,
                                servers=servers, partition="hash" if dynamic else sparse.partition,
                                init=initializer_settings(layer, config.seed + len(tables)) if on_servers else None,
                                per_batch=_ids_per_example(layer) * config.batch_size, dynamic=dynamic))
    return tables, notices


def _dynamic(layer) -> dict | None:
    """A DynamicEmbedding's admission and eviction, as its servers take them; None for other layers."""
    from raytf.replica.dynamic_embedding import DynamicEmbedding

    if not isinstance(layer, DynamicEmbedding):
        return None
    return {"admission": dict(layer.admission), "eviction": dict(layer.eviction)}


def _ids_per_example(layer) -> int:
    """How many ids one example looks up in `layer`, from its symbolic input; 0 when not fixed."""
    import math

    if getattr(layer, "ragged_input", False) and getattr(layer, "on_servers", False):
        return layer.max_ids_per_example  # the data path pads each list to it (raytf.replica.key_inputs)
    try:
        shape = tuple(layer.input.shape)[1:]
    except (AttributeError, ValueError):  # a layer called on no keras.Input, or more than once
        return 0
    return math.prod(shape) if all(isinstance(dim, int) for dim in shape) else 0


def _is_sharded(layer) -> bool:
    return isinstance(layer, ShardedEmbedding)


def _ineligible(layer, gradient_is_sparse: bool) -> str | None:
    import tensorflow as tf

    if tf.as_dtype(layer.embeddings.dtype) != tf.float32:
        return f"its table is {tf.as_dtype(layer.embeddings.dtype).name}, and the servers hold float32 rows"
    if getattr(layer, "embeddings_regularizer", None) is not None:
        return "it has an embeddings_regularizer, whose gradient touches every row"
    if getattr(layer, "embeddings_constraint", None) is not None:
        return "it has an embeddings_constraint, which applies to the whole table"
    if not gradient_is_sparse:
        return "its table is also used densely (e.g. tied to an output layer), so its gradient covers every row"
    return None


def _sparse_gradients(model, features, labels, config) -> set[int]:
    """ids of the variables whose gradient on one batch is sparse (tf.IndexedSlices)."""
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = make_loss(config.loss)(labels, model(features, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    return {id(v) for v, g in zip(model.trainable_variables, grads) if isinstance(g, tf.IndexedSlices)}
