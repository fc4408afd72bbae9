"""Before any actor exists: the config, import paths, data, model shapes and output directory are
checked, the driver's replica is built, and where every server starts is decided. Bad input
therefore never leaves a cluster or actors behind; after the run the trained values are loaded
back into the replica, which is evaluated and saved."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from raytf.config import TrainConfig, config_from_dict, load_config
from raytf.errors import ConfigError
from raytf.exchange.policies import policy_for
from raytf.observe.startup import StartupClock


@dataclass(frozen=True)
class Prepared:
    """What the driver learned before any actor exists."""

    config: TrainConfig  # as given, with steps set when it gave epochs (raytf.data.epochs.resolve_epochs)
    model: Any  # the driver's replica: initial values, final evaluation, saving
    plan: Any
    eval_data: Any  # raytf.data.sources.EvalData, or None
    output_dir: Path
    notices: tuple[str, ...] = ()  # what the user should know before training (e.g. tables left dense)
    first_batch: tuple = ()  # (features, labels) the model was built on (to build it again for saving)
    data: Any = None  # raytf.data.sources.DataPlan: how the workers read data.train
    train: Any = None  # raytf.data.sources.TrainData: data.train on the driver (Ray Data: split once the workers exist)


def coerce_config(config: TrainConfig | Mapping[str, Any] | str | os.PathLike, overrides: Sequence[str] = ()) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return config_from_dict(config.to_dict(), overrides) if overrides else config
    if isinstance(config, Mapping):
        return config_from_dict(config, overrides)
    return load_config(config, overrides)


def prepare_output_dir(path: str) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir {out} exists and is a file.", "Point output_dir at a directory (it is created if missing).")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".raytf-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"output_dir {out} is not writable ({err.strerror}).", "Choose a directory you can write to.") from None
    return out


def prepare(config: TrainConfig, clock: StartupClock | None = None) -> Prepared:
    """Check everything that can be checked here and build the driver's replica and the shard plan."""
    clock = clock or StartupClock()
    with clock.span("driver_imports"):
        from raytf.runtime import configure_tensorflow

        configure_tensorflow(threads=max(1, (os.cpu_count() or 1)))
        import keras  # noqa: F401 - timed here; _prepare uses it

        import raytf.replica.model  # noqa: F401
    with clock.span("driver_model_build"):
        return _prepare(config)


def _prepare(config: TrainConfig) -> Prepared:
    import keras

    from raytf.config.imports import resolve_callable
    from raytf.data.epochs import resolve_epochs
    from raytf.data.files import holds_strings
    from raytf.data.sources import EvalData, TrainData
    from raytf.exchange.sharding import plan_shards
    from raytf.replica.layers import rows_on_servers
    from raytf.replica.model import build_model, check_labels_in_range, variable_specs
    from raytf.replica.sparse import find_tables

    output_dir = prepare_output_dir(config.output_dir)
    model_fn = resolve_callable(config.model, "model")
    workers = config.distribution.workers
    train = TrainData(config)
    eval_data = EvalData(config) if config.data.eval else None
    ray_notices: list[str] = []
    for ray_data in (train.ray, eval_data.ray if eval_data is not None else None):
        if ray_data is not None:
            ray_data.open()  # connected already (raytf.driver.fit: reads_ray_data)
    if train.ray is not None:
        import ray

        said = train.ray.materialize_if_needed(config, ray.cluster_resources().get("CPU", 0.0))
        ray_notices += [said] if said else []
    if eval_data is not None and eval_data.ray is not None:
        eval_data.ray.hold()  # evaluated at the end too, when the connection is closed
    rows = (train.shard_rows(workers) if train.layout is not None or train.ray is not None or config.epochs is not None
            else None)
    data = train.plan(workers, rows)
    config = resolve_epochs(config, rows)
    keras.utils.set_random_seed(config.seed)
    features, labels = train.first_batch(0, workers, config.batch_size)
    with rows_on_servers(config.batch_size):  # a ShardedEmbedding's table is created on the servers, not here
        model = build_model(model_fn, features, labels, config)
    if eval_data is not None:
        eval_features, eval_labels = eval_data.first_batch(config.eval_batch_size)
        if [tuple(t.shape[1:]) for t in _flat(eval_features)] != [tuple(t.shape[1:]) for t in _flat(features)]:
            raise ConfigError(
                f"data.eval gives features of shape {[tuple(t.shape[1:]) for t in _flat(eval_features)]}, "
                f"but data.train gives {[tuple(t.shape[1:]) for t in _flat(features)]}.",
                "Make both datasets yield features of the same shape.",
            )
        if [holds_strings(t) for t in _flat(eval_features)] != [holds_strings(t) for t in _flat(features)]:
            raise ConfigError(
                f"data.eval gives features of dtype {_dtype_names(eval_features)}, but data.train gives "
                f"{_dtype_names(features)}: strings in one and numbers in the other.",
                "Make both datasets yield features of the same dtypes.",
            )
        check_labels_in_range(eval_labels, model(eval_features, training=False), config.loss, key="data.eval")
    tables, notices = find_tables(model, config, features, labels)
    plan = plan_shards(variable_specs(model), config.distribution.parameter_servers, tables)
    return Prepared(config=config, model=model, plan=plan, eval_data=eval_data, output_dir=output_dir,
                    notices=tuple(ray_notices) + tuple(notices) + _table_notice(plan, config)
                    + _data_notice(train, data, config),
                    first_batch=(features, labels), data=data, train=train)


def prepare_and_start(config: TrainConfig, resume: bool, restart: bool,
                      clock: StartupClock | None = None) -> tuple[Prepared, list]:
    """`prepare`, then `start_states`: everything checked, and where every server starts."""
    prepared = prepare(config, clock)
    return prepared, start_states(prepared, resume, restart)


def trained_model(prepared: Prepared, buffers: list[np.ndarray], tables: list[list[np.ndarray]],
                  non_trainable: list[np.ndarray]):
    """The final model with the trained values, compiled for saving, and its evaluation on data.eval."""
    model = final_model(prepared, buffers, tables, non_trainable)
    compile_for_saving(model, prepared.config, build_optimizer=not any(t.cached for t in prepared.plan.tables))
    return model, evaluate(model, prepared)


def check_on_host(config: TrainConfig, resume: bool, restart: bool) -> tuple[Prepared, list]:
    """`prepare_and_start` in a warm pool process (raytf.pool.host.PoolHost.run_task): the same checks and
    errors, without TensorFlow in the driver. Returns what the driver needs to run the training (no model:
    the final one is made by `finish_on_host`) and where the servers start."""
    prepared, states = prepare_and_start(config, resume, restart)
    return replace(prepared, model=None, first_batch=(), eval_data=None, train=None), states


def finish_on_host(config: TrainConfig, buffers: list[np.ndarray], tables: list[list[np.ndarray]],
                   non_trainable: list[np.ndarray]) -> tuple[dict[str, float], bytes]:
    """`trained_model` in a pool process, built as the driver would have built it. Returns the evaluation
    and the `.keras` file's bytes (the driver writes it: its output_dir may not be on this node)."""
    import tempfile

    model, results = trained_model(prepare(config), buffers, tables, non_trainable)
    with tempfile.TemporaryDirectory(prefix="raytf-model-") as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        return results, path.read_bytes()


def checks_in_pool(config: TrainConfig) -> bool:
    """Whether the model check may run in a pool process: not where the driver needs the model while
    training (validation) or opens a Ray Data dataset itself."""
    return not reads_ray_data(config) and config.eval.every_steps is None and config.eval.every_epochs is None


def reads_ray_data(config: TrainConfig) -> bool:
    """Whether data.train or data.eval is a Ray Data dataset: it is opened on the cluster, so the driver
    connects before it prepares."""
    return any(getattr(spec, "format", None) == "ray_data" for spec in (config.data.train, config.data.eval))


def _data_notice(train, data, config: TrainConfig) -> tuple[str, ...]:
    """Say what the workers read, where it is not a function's stream."""
    parts = []
    if train.ray is not None:
        rows, workers = train.ray.rows, config.distribution.workers
        if train.ray.materialized:
            parts.append(f"data.train: a Ray Data dataset of {rows:,} rows in the object store, about "
                         f"{rows // workers:,} per worker")
        else:
            parts.append(f"data.train: a Ray Data dataset of {rows:,} rows, streamed and split equally: {rows // workers:,} "
                         "per worker" + (f" ({rows % workers} left out each epoch)" if rows % workers else ""))
    if train.layout is not None:
        parts.append(f"data.train: {train.layout.describe()}, about {train.layout.rows // config.distribution.workers:,} "
                     "rows per worker")
    if data.steps_per_pass is not None:
        parts.append(f"a pass over it is {data.steps_per_pass} steps (each worker reads each of its rows once; "
                     "the last batch is filled up with rows weighted 0)")
    if config.epochs is not None:
        parts.append(f"{config.epochs} epochs of {config.steps_per_epoch} steps: {config.steps} steps")
    return ("; ".join(parts) + ".",) if parts else ()


def _dtype_names(features) -> str:
    return ", ".join(getattr(t.dtype, "name", str(t.dtype)) for t in _flat(features))


def _flat(value):
    import tensorflow as tf

    return tf.nest.flatten(value)


def initial_states(prepared: Prepared) -> list:
    """What each server starts from: its dense buffer and its rows of every sparse table."""
    from raytf.exchange.shard_state import ShardState, TableState

    plan = prepared.plan
    tvars = prepared.model.trainable_variables
    values = {i: np.asarray(tvars[i].numpy(), dtype=np.float32) for i in range(len(tvars))
              if i not in {t.variable for t in plan.tables if t.cached}}  # a ShardedEmbedding's rows start on its servers
    states = []
    for server, shard in enumerate(plan.shards):
        buffer = shard.pack([values[i] for i in shard.variables])
        tables = tuple(TableState(params=None if t.cached else values[t.variable][t.global_ids(server)])
                       for t in plan.tables)
        states.append(ShardState(params=buffer, tables=tables))
    return states


def final_model(prepared: Prepared, buffers: list[np.ndarray], tables: list[list[np.ndarray]],
                non_trainable: list[np.ndarray]):
    """The trained model: the driver's replica with the trained values (dense buffers, and every
    sparse table from its servers' rows: `tables`, per table, per server). With a ShardedEmbedding,
    whose table no replica holds, it is the model built anew with full tables (all in memory here)."""
    model = prepared.model
    if any(t.cached for t in prepared.plan.tables):
        from raytf.config.imports import resolve_callable
        from raytf.replica.dynamic_embedding import local_rows
        from raytf.replica.model import build_model

        live = {spec.layer: sum(len(keys) for keys, _ in rows) for spec, rows in zip(prepared.plan.tables, tables)
                if spec.is_dynamic}
        with local_rows(live):  # a DynamicEmbedding built with room for every live row
            model = build_model(resolve_callable(prepared.config.model, "model"), *prepared.first_batch, prepared.config)
    load_final(model, prepared.plan, buffers, tables, non_trainable)
    return model


def load_final(model, plan, buffers: list[np.ndarray], tables: list[list[np.ndarray]],
               non_trainable: list[np.ndarray]) -> None:
    tvars = model.trainable_variables
    for shard, buffer in zip(plan.shards, buffers):
        for i, offset, size in zip(shard.variables, shard.offsets, shard.sizes):
            tvars[i].assign(buffer[offset : offset + size].reshape(plan.variables[i].shape))
    for spec, rows in zip(plan.tables, tables):
        if spec.is_dynamic:  # per server (keys, rows): the layer holds them all, keys sorted
            from raytf.replica.model import all_layers

            keys = np.concatenate([k for k, _ in rows])
            order = np.argsort(keys)
            layer = next(layer for layer in all_layers(model) if layer.name == spec.layer)
            layer.set_rows(keys[order], np.concatenate([r for _, r in rows])[order])
            continue
        whole = np.empty((spec.rows, spec.width), np.float32)
        for server, part in enumerate(rows):
            whole[spec.global_ids(server)] = part
        tvars[spec.variable].assign(whole)
    for var, value in zip(model.non_trainable_variables, non_trainable):
        var.assign(value)


def _table_notice(plan, config: TrainConfig) -> tuple[str, ...]:
    """Announce the sparse tables once, and say when their updates differ from the dense ones."""
    if not plan.tables:
        return ()
    from raytf.exchange.tables import LAZY_OPTIMIZERS, describe

    notice = (f"Sparse tables, rows over {config.distribution.parameter_servers} servers "
              f"({config.sparse.partition}): {describe(plan.tables)}.")
    if config.optimizer.name in LAZY_OPTIMIZERS and config.sparse.slots == "lazy":
        notice += (f" {config.optimizer.name} updates only the rows a step touches (sparse.slots: lazy); "
                   "sparse.slots: dense updates every row, as the dense exchange does.")
    return (notice,)


def compile_for_saving(model, config: TrainConfig, build_optimizer: bool = True) -> None:
    """Compile with the Keras twin of the run's optimizer, built, so the saved model loads cleanly
    and can be fine-tuned with `model.fit` (its slots start fresh; the servers' slots are not Keras's).
    Not built for models with ShardedEmbedding tables: its slots would be as large as the tables."""
    from raytf.replica.model import keras_optimizer, make_loss

    optimizer = keras_optimizer(config.optimizer)
    model.compile(optimizer=optimizer, loss=make_loss(config.loss), metrics=list(config.metrics))
    if build_optimizer:
        optimizer.build(model.trainable_variables)


def evaluate(model, prepared: Prepared) -> dict[str, float]:
    if prepared.eval_data is None:
        return {}
    config = prepared.config
    results = model.evaluate(prepared.eval_data.dataset().batch(config.eval_batch_size), return_dict=True, verbose=0)
    return {name: float(value) for name, value in results.items()}


def resumed_statistics(prepared: Prepared) -> list[np.ndarray] | None:
    """The non-trainable values (BatchNorm statistics) of the checkpoint a run resumes from, if it has them."""
    from raytf.driver.checkpoints import latest, read_non_trainable
    from raytf.exchange.shard_state import root_of

    newest = latest(root_of(prepared.output_dir))
    return read_non_trainable(newest.directory) if newest is not None else None


def start_states(prepared: Prepared, resume: bool, restart: bool) -> list:
    """Where the servers start: the model's initial values, or the newest complete checkpoint.

    Checked before any cluster starts, like the rest of the config."""
    from raytf.driver.checkpoints import complete, latest, load
    from raytf.exchange.shard_state import root_of

    config = prepared.config
    root = root_of(prepared.output_dir)
    if resume and restart:
        raise ConfigError("--resume and --restart contradict each other.", "Use --resume to continue from the newest "
                          "checkpoint, or --restart to delete the checkpoints and start over.")
    newest = latest(root)
    if resume:
        if newest is None:
            raise ConfigError(f"--resume: there is no complete checkpoint in {root}.",
                              "Check output_dir (it must be the interrupted run's), or train without --resume.")
        if newest.step >= config.steps:
            raise ConfigError(f"--resume: the newest checkpoint ({newest.directory}) is at step {newest.step}, and steps "
                              f"is {config.steps}, so there is nothing left to train.",
                              f"Raise steps to train further, e.g. --set steps={newest.step + config.steps}.")
        return load(newest, prepared.plan, config.optimizer.name, policy_for(config.distribution).updates_per_step)
    if newest is not None:
        if not restart:
            raise ConfigError(f"{root} holds checkpoints of an earlier run (newest: step {newest.step}); starting over "
                              "would mix them with this run's.",
                              "Add --resume to continue that run, --restart to delete its checkpoints and start over, "
                              "or set another output_dir.")
        import shutil

        for checkpoint in complete(root):
            shutil.rmtree(checkpoint.directory)
    return initial_states(prepared)
