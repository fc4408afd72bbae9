"""Building the user's model and data pipeline, with errors that say what to fix.

Used by the driver (to check everything before any actor starts) and by each worker (to build
its replica and its shard), so both agree on the variables and the batches.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import tensorflow as tf

from raytf.config import LossConfig, OptimizerConfig, TrainConfig
from raytf.errors import ConfigError
from raytf.sharding import VariableSpec


def call_user(fn: Callable[..., Any], key: str, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as err:  # noqa: BLE001 - user code; report it with its type and where it was named
        raise ConfigError(
            f"{key}: calling {getattr(fn, '__qualname__', fn)}{args} raised {type(err).__name__}: {err}.",
            "Fix that function (run it by hand to see the traceback, or rerun raytf with --debug).",
        ) from err


def train_dataset(fn: Callable[..., Any], shard: int, num_shards: int) -> tf.data.Dataset:
    dataset = call_user(fn, "data.train", shard, num_shards)
    check_dataset(dataset, "data.train")
    return dataset


def eval_dataset(fn: Callable[..., Any]) -> tf.data.Dataset:
    dataset = call_user(fn, "data.eval")
    check_dataset(dataset, "data.eval")
    return dataset


def check_dataset(dataset: Any, key: str) -> None:
    if not isinstance(dataset, tf.data.Dataset):
        raise ConfigError(
            f"{key} returned a {type(dataset).__name__}, not a tf.data.Dataset.",
            "Return tf.data.Dataset.from_tensor_slices((features, labels)) or another dataset of (features, label) pairs.",
        )
    spec = dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2):
        raise ConfigError(
            f"{key} yields elements of structure {spec}, but raytf needs (features, label) pairs.",
            "Make the dataset yield 2-tuples, e.g. from_tensor_slices((x, y)).",
        )
    for part, name in zip(spec, ("features", "label")):
        for leaf in tf.nest.flatten(part):
            if not leaf.dtype.is_floating and not leaf.dtype.is_integer and leaf.dtype != tf.bool:
                raise ConfigError(
                    f"{key}: the {name} have dtype {leaf.dtype.name}, which a model cannot train on.",
                    f"Convert the {name} to a numeric dtype (e.g. tf.float32 or tf.int32) in the dataset.",
                )


def batches(dataset: tf.data.Dataset, config: TrainConfig, seed_offset: int = 0) -> tf.data.Dataset:
    """The training pipeline: optional shuffle, fixed-size batches, forever."""
    if config.data.shuffle_buffer:
        dataset = dataset.shuffle(config.data.shuffle_buffer, seed=config.seed + seed_offset, reshuffle_each_iteration=True)
    return dataset.batch(config.batch_size, drop_remainder=True).repeat().prefetch(2)


def first_batch(dataset: tf.data.Dataset, batch_size: int, key: str):
    try:
        return next(iter(dataset.batch(batch_size)))
    except StopIteration:
        raise ConfigError(f"{key} returned an empty dataset.", "Check the data function and the shard it is asked for.") from None


def build_model(fn: Callable[..., Any], features, labels, config: TrainConfig):
    """Call the user's model function and build it on one batch, checking shapes and loss."""
    import keras

    model = call_user(fn, "model")
    if not isinstance(model, keras.Model):
        raise ConfigError(
            f"model: {config.model} returned a {type(model).__name__}, not a Keras model.",
            "Return a keras.Model (e.g. keras.Sequential([...])).",
        )
    try:
        outputs = model(features, training=False)
    except (ValueError, TypeError, tf.errors.InvalidArgumentError) as err:
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
    return model


def check_labels_in_range(labels, outputs, loss: LossConfig) -> None:
    if loss.name != "sparse_categorical_crossentropy":
        return
    classes = outputs.shape[-1]
    high = int(tf.reduce_max(labels))
    low = int(tf.reduce_min(labels))
    if low < 0 or high >= classes:
        raise ConfigError(
            f"data.train: labels range from {low} to {high}, but the model has {classes} outputs, so "
            f"sparse_categorical_crossentropy needs labels in 0..{classes - 1}.",
            "Fix the labels, or give the model's last layer as many units as there are classes.",
        )


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
    specs = []
    for var in model.trainable_variables:
        dtype = tf.as_dtype(var.dtype).name
        if dtype != "float32":
            raise ConfigError(
                f"model: trainable variable {var.path if hasattr(var, 'path') else var.name} has dtype {dtype}; "
                "raytf's parameter servers hold float32 variables.",
                "Build the model in float32 (no mixed-precision policy).",
            )
        specs.append(VariableSpec(name=getattr(var, "path", var.name), shape=tuple(var.shape), dtype=dtype))
    if not specs:
        raise ConfigError("model: the model has no trainable variables.", "Return a model with trainable layers.")
    return specs


def _keras_said(err: Exception) -> str:
    """The informative line of a Keras/TF error (Keras 3 leads with 'Exception encountered when calling ...')."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(err).splitlines()]
    lines = [line for line in lines if line and not line.startswith("Exception encountered when calling")]
    return lines[0] if lines else type(err).__name__


def _shapes(value) -> str:
    shapes = [tuple(t.shape[1:]) if t.shape.rank else () for t in tf.nest.flatten(value)]
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
