"""Building the user's model and data pipeline, with errors that say what to fix.

Used by the driver (to check everything before any actor starts) and by each worker (to build
its replica and its shard), so both agree on the variables and the batches.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Callable

import tensorflow as tf

from raytf.config import LossConfig, OptimizerConfig, TrainConfig
from raytf.data.datasets import call_user, without_op_noise
from raytf.errors import ConfigError
from raytf.exchange.sharding import VariableSpec


def build_model(fn: Callable[..., Any], features, labels, config: TrainConfig):
    """Call the user's model function and build it on one batch, checking shapes and loss."""
    import keras

    model = call_user(fn, "model")
    if not isinstance(model, keras.Model):
        raise ConfigError(
            f"model: {config.model} returned a {type(model).__name__}, not a Keras model.",
            "Return a keras.Model (e.g. keras.Sequential([...])).",
        )
    _check_string_features(model, features, config)
    try:
        outputs = model(features, training=False)
    except (ValueError, TypeError, tf.errors.InvalidArgumentError) as err:
        out_of_range = _id_out_of_range(model, err)
        if out_of_range:
            raise out_of_range from None
        raise ConfigError(
            f"model: the model does not accept the dataset's features: the data gives features of shape "
            f"{_shapes(features)} (dtype {_dtypes(features)}), the model expects inputs of shape {_model_inputs(model)}. "
            f"Keras said: {_keras_said(err)}",
            "Make the model's input shape match the dataset (without the batch dimension), or reshape the features in the dataset.",
        ) from None
    check_labels_in_range(labels, outputs, config.loss)
    loss_fn = make_loss(config.loss)
    try:
        loss = loss_fn(labels, outputs)
    except (ValueError, TypeError, tf.errors.InvalidArgumentError) as err:
        raise ConfigError(
            f"loss: {config.loss.name} cannot compare the labels of shape {_shapes(labels)} (dtype {_dtypes(labels)}) "
            f"with the model's outputs of shape {_shapes(outputs)}. Keras said: {_keras_said(err)}",
            "Pick the loss that fits the labels (sparse_categorical_crossentropy for integer class ids, "
            "categorical_crossentropy for one-hot labels) or change the model's output layer.",
        ) from None
    if not bool(tf.math.is_finite(loss)):
        raise ConfigError(
            f"loss: the loss of the first batch is {float(loss)}.",
            "Check that the labels are in range for the loss (class ids below the number of outputs) and the features are finite.",
        )
    check_metrics(config.metrics, labels, outputs)
    return model


def _check_string_features(model, features, config: TrainConfig) -> None:
    """String features need a model input that takes strings (a DynamicEmbedding(key_dtype="string") looks
    them up); elsewhere they are an error that says so, not a failed cast deep in the model."""
    from raytf.data.files import holds_strings

    if not any(holds_strings(t) for t in tf.nest.flatten(features)):
        return
    try:
        inputs = list(model.inputs)
    except (AttributeError, ValueError):
        inputs = []
    if any(str(getattr(t, "dtype", "")) == "string" for t in inputs):
        return
    raise ConfigError(
        f"data.train: the features have dtype string, which the model ({config.model}) cannot take: "
        f"its inputs are {', '.join(str(getattr(t, 'dtype', '?')) for t in inputs) or 'not declared'}.",
        "Convert the features to a numeric dtype (e.g. tf.float32 or tf.int32) in the dataset, or look the strings "
        "up in a raytf.layers.DynamicEmbedding(key_dtype='string') fed by keras.Input(..., dtype='string').",
    )


class IdOutOfRange(ConfigError):
    """An embedding id outside its table (the eager lookup refuses it; XLA's would clamp it)."""


def _id_out_of_range(model, err: Exception) -> IdOutOfRange | None:
    """TensorFlow's "indices[2,3] = 20000 is not in [0, 20000)" as an error naming the table."""
    import keras

    match = re.search(r"indices\[[\d,]*\] = (-?\d+) is not in \[0, (\d+)\)", str(err))
    if not match:
        return None
    bad, size = int(match.group(1)), int(match.group(2))
    from raytf.replica.model import all_layers

    names = [layer.name for layer in all_layers(model) if isinstance(layer, keras.layers.Embedding) and layer.input_dim == size]
    table = f"the embedding table '{names[0]}'" if len(names) == 1 else f"an embedding table of {size} rows"
    return IdOutOfRange(f"data.train: the batch has id {bad} for {table}, whose input_dim is {size} "
                        f"(ids must be in 0..{size - 1}).",
                        "Fix the ids in the data (hash or clip them into range), or raise the layer's input_dim.")


def check_labels_in_range(labels, outputs, loss: LossConfig, key: str = "data.train") -> None:
    """Labels the loss cannot use (class ids out of range, fractional ids, probabilities outside 0..1),
    checked on one batch: they would give a NaN or meaningless loss only once training runs."""
    if not isinstance(labels, tf.Tensor) or labels.dtype == tf.bool or tf.size(labels) == 0:
        return
    values = tf.cast(labels, tf.float64)
    low, high = float(tf.reduce_min(values)), float(tf.reduce_max(values))
    if loss.name == "sparse_categorical_crossentropy":
        classes = outputs.shape[-1]
        if low < 0 or high >= classes:
            raise ConfigError(
                f"{key}: labels range from {_number(low)} to {_number(high)}, but the model has {classes} outputs, so "
                f"sparse_categorical_crossentropy needs labels in 0..{classes - 1}.",
                "Fix the labels, or give the model's last layer as many units as there are classes.",
            )
        if labels.dtype.is_floating and not bool(tf.reduce_all(tf.equal(values, tf.round(values)))):
            fractional = float(tf.boolean_mask(values, tf.not_equal(values, tf.round(values)))[0])
            raise ConfigError(
                f"{key}: sparse_categorical_crossentropy needs whole class ids as labels, but a label is {fractional:g}.",
                "Use integer class ids (e.g. cast the labels to tf.int32), or categorical_crossentropy for one-hot or soft labels.",
            )
    elif loss.name in ("binary_crossentropy", "binary_focal_crossentropy") and (low < 0 or high > 1):
        raise ConfigError(
            f"{key}: labels range from {_number(low)} to {_number(high)}, but {loss.name} needs labels between 0 and 1.",
            "Give 0/1 labels (or probabilities), or use sparse_categorical_crossentropy for class ids 0..N-1.",
        )


# Names Keras's compile() resolves itself to the metric that fits the loss (not in keras.metrics.get).
_COMPILE_METRICS = ("accuracy", "acc", "crossentropy", "ce")


def check_metrics(metrics, labels, outputs) -> None:
    """Every metric name must be one Keras knows and must work on these labels and outputs: the
    metrics are computed only at the end, after training, where a bad one would lose the run."""
    import keras

    for name in metrics:
        if name in _COMPILE_METRICS:
            continue
        try:
            metric = keras.metrics.get(name)
        except (ValueError, TypeError):
            guess = difflib.get_close_matches(name, _metric_names(), n=1)
            hint = f"Did you mean '{guess[0]}'? " if guess else ""
            raise ConfigError(
                f"metrics: '{name}' is not a Keras metric.",
                f"{hint}Use a name keras.metrics.get accepts, e.g. accuracy, auc, precision, mean_absolute_error.",
            ) from None
        try:
            if isinstance(metric, keras.metrics.Metric):
                metric.update_state(labels, outputs)
                metric.result()
            else:
                metric(labels, outputs)
        except (ValueError, TypeError, tf.errors.InvalidArgumentError) as err:
            raise ConfigError(
                f"metrics: {name} cannot be computed on labels of shape {_shapes(labels)} (dtype {_dtypes(labels)}) "
                f"and the model's outputs of shape {_shapes(outputs)}. Keras said: {_keras_said(err)}",
                "Pick metrics that fit the labels (e.g. accuracy or sparse_categorical_accuracy for integer class ids), "
                "or drop it from metrics.",
            ) from None


def _metric_names() -> list[str]:
    import keras

    names = set(_COMPILE_METRICS)
    for name in dir(keras.metrics):
        if name.startswith("_") or name in ("get", "serialize", "deserialize", "Metric"):
            continue
        names.add(name)
        names.add(re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", name).lower())  # MeanSquaredError -> mean_squared_error
    return sorted(names)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def make_loss(loss: LossConfig):
    import keras

    class_name = "".join(part.capitalize() for part in loss.name.split("_"))
    class_name = {"KlDivergence": "KLDivergence", "LogCosh": "LogCosh"}.get(class_name, class_name)
    cls = getattr(keras.losses, class_name)
    return cls(from_logits=True) if loss.from_logits else cls()


def keras_optimizer(config: OptimizerConfig):
    """The Keras optimizer with the same rule and hyperparameters (for the saved model)."""
    import keras

    c = config
    return {
        "sgd": lambda: keras.optimizers.SGD(c.learning_rate),
        "momentum": lambda: keras.optimizers.SGD(c.learning_rate, momentum=c.momentum, nesterov=c.nesterov),
        "adam": lambda: keras.optimizers.Adam(c.learning_rate, beta_1=c.beta_1, beta_2=c.beta_2, epsilon=c.epsilon),
        "adagrad": lambda: keras.optimizers.Adagrad(c.learning_rate, initial_accumulator_value=c.initial_accumulator_value, epsilon=c.epsilon),
        "rmsprop": lambda: keras.optimizers.RMSprop(c.learning_rate, rho=c.rho, momentum=c.momentum, epsilon=c.epsilon),
    }[c.name]()


def variable_specs(model) -> list[VariableSpec]:
    """The trainable variables as the servers hold them (a ShardedEmbedding's whole table, not the
    row cache a replica has of it)."""
    from raytf.replica.layers import ShardedEmbedding
    from raytf.replica.model import all_layers

    logical = {id(layer.embeddings): layer.logical_shape for layer in all_layers(model)
               if isinstance(layer, ShardedEmbedding) and getattr(layer, "on_servers", False)}
    specs = []
    for var in model.trainable_variables:
        dtype = tf.as_dtype(var.dtype).name
        if dtype != "float32":
            raise ConfigError(
                f"model: trainable variable {var.path if hasattr(var, 'path') else var.name} has dtype {dtype}; "
                "raytf's parameter servers hold float32 variables.",
                "Build the model in float32 (no mixed-precision policy).",
            )
        specs.append(VariableSpec(name=getattr(var, "path", var.name), shape=logical.get(id(var), tuple(var.shape)),
                                  dtype=dtype))
    if not specs:
        raise ConfigError("model: the model has no trainable variables.", "Return a model with trainable layers.")
    return specs


def _keras_said(err: Exception) -> str:
    """The informative line of a Keras/TF error (Keras 3 leads with 'Exception encountered when calling ...')."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in without_op_noise(str(err)).splitlines()]
    lines = [line for line in lines if line and not line.startswith("Exception encountered when calling")]
    return lines[0] if lines else type(err).__name__


def _shapes(value) -> str:
    """Shapes without the batch dimension; features given as a dict keep their keys."""

    def shape(t):
        return tuple(t.shape[1:]) if t.shape.rank else ()

    if isinstance(value, dict):
        return str(tf.nest.map_structure(shape, value))
    shapes = [shape(t) for t in tf.nest.flatten(value)]
    return ", ".join(str(s) for s in shapes) if len(shapes) > 1 else str(shapes[0])


def _dtypes(value) -> str:
    return ", ".join(t.dtype.name for t in tf.nest.flatten(value))


def _model_inputs(model) -> str:
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if inputs:
        return ", ".join(str(tuple(i.shape[1:])) for i in inputs)
    return "(not declared; see the first layer)"


def all_layers(model) -> list:
    found, stack = [], list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop(0)
        found.append(layer)
        stack[:0] = list(getattr(layer, "layers", []))
    return found
