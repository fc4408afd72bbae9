"""`raytf.fit`: one training run from config to saved model and summary.

Everything that can be checked without a cluster (config, import paths, data, model shapes,
output directory) is checked first, so bad input never leaves a cluster or actors behind.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from raytf.config import TrainConfig, config_from_dict, load_config
from raytf.errors import ConfigError
from raytf.startup import StartupClock


@dataclass(frozen=True)
class Prepared:
    """What the driver learned before any actor exists."""

    config: TrainConfig
    model: Any  # the driver's replica: initial values, final evaluation, saving
    plan: Any
    eval_fn: Callable[[], Any] | None
    output_dir: Path
    notices: tuple[str, ...] = ()  # what the user should know before training (e.g. tables left dense)
    first_batch: tuple = ()  # (features, labels) the model was built on (to build it again for saving)


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

        import raytf.model  # noqa: F401
    with clock.span("driver_model_build"):
        return _prepare(config)


def _prepare(config: TrainConfig) -> Prepared:
    import keras

    from raytf.imports import resolve_callable
    from raytf.layers import rows_on_servers
    from raytf.model import build_model, check_labels_in_range, eval_dataset, first_batch, train_dataset, variable_specs
    from raytf.sharding import plan_shards
    from raytf.sparse import find_tables

    output_dir = prepare_output_dir(config.output_dir)
    model_fn = resolve_callable(config.model, "model")
    train_fn = resolve_callable(config.data.train, "data.train")
    eval_fn = resolve_callable(config.data.eval, "data.eval") if config.data.eval else None
    keras.utils.set_random_seed(config.seed)
    features, labels = first_batch(train_dataset(train_fn, 0, config.distribution.workers), config.batch_size, "data.train")
    with rows_on_servers(config.batch_size):  # a ShardedEmbedding's table is created on the servers, not here
        model = build_model(model_fn, features, labels, config)
    if eval_fn is not None:
        eval_features, eval_labels = first_batch(eval_dataset(eval_fn), config.eval_batch_size, "data.eval")
        if [tuple(t.shape[1:]) for t in _flat(eval_features)] != [tuple(t.shape[1:]) for t in _flat(features)]:
            raise ConfigError(
                f"data.eval gives features of shape {[tuple(t.shape[1:]) for t in _flat(eval_features)]}, "
                f"but data.train gives {[tuple(t.shape[1:]) for t in _flat(features)]}.",
                "Make both datasets yield features of the same shape.",
            )
        check_labels_in_range(eval_labels, model(eval_features, training=False), config.loss, key="data.eval")
    tables, notices = find_tables(model, config, features, labels)
    plan = plan_shards(variable_specs(model), config.distribution.parameter_servers, tables)
    return Prepared(config=config, model=model, plan=plan, eval_fn=eval_fn, output_dir=output_dir,
                    notices=tuple(notices) + _table_notice(plan, config), first_batch=(features, labels))


def _flat(value):
    import tensorflow as tf

    return tf.nest.flatten(value)


def initial_states(prepared: Prepared) -> list:
    """What each server starts from: its dense buffer and its rows of every sparse table."""
    from raytf.checkpoint import ShardState, TableState

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
        from raytf.imports import resolve_callable
        from raytf.model import build_model

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
    from raytf.optimizers import RowOptimizer
    from raytf.sparse import describe

    notice = (f"Sparse tables, rows over {config.distribution.parameter_servers} servers "
              f"({config.sparse.partition}): {describe(plan.tables)}.")
    if config.optimizer.name in RowOptimizer.LAZY and config.sparse.slots == "lazy":
        notice += (f" {config.optimizer.name} updates only the rows a step touches (sparse.slots: lazy); "
                   "sparse.slots: dense updates every row, as the dense exchange does.")
    return (notice,)


def compile_for_saving(model, config: TrainConfig, build_optimizer: bool = True) -> None:
    """Compile with the Keras twin of the run's optimizer, built, so the saved model loads cleanly
    and can be fine-tuned with `model.fit` (its slots start fresh; the servers' slots are not Keras's).
    Not built for models with ShardedEmbedding tables: its slots would be as large as the tables."""
    from raytf.model import keras_optimizer, make_loss

    optimizer = keras_optimizer(config.optimizer)
    model.compile(optimizer=optimizer, loss=make_loss(config.loss), metrics=list(config.metrics))
    if build_optimizer:
        optimizer.build(model.trainable_variables)


def evaluate(model, prepared: Prepared) -> dict[str, float]:
    if prepared.eval_fn is None:
        return {}
    from raytf.model import eval_dataset

    config = prepared.config
    results = model.evaluate(eval_dataset(prepared.eval_fn).batch(config.eval_batch_size), return_dict=True, verbose=0)
    return {name: float(value) for name, value in results.items()}


def start_states(prepared: Prepared, resume: bool, restart: bool) -> list:
    """Where the servers start: the model's initial values, or the newest complete checkpoint.

    Checked before any cluster starts, like the rest of the config."""
    from raytf.checkpoint import complete, latest, load, root_of

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
        return load(newest, prepared.plan, config.optimizer.name, config.updates_per_step)
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


def fit(
    config: TrainConfig | Mapping[str, Any] | str | os.PathLike,
    *,
    overrides: Sequence[str] = (),
    address: str | None = None,
    progress=None,
    on_event: Callable[[str], None] = lambda message: None,
    resume: bool = False,
    restart: bool = False,
    started_at: float | None = None,
) -> dict[str, Any]:
    """Train as configured and return the summary (also written to output_dir/summary.json).

    `config` is a TrainConfig, a dict of the YAML's keys, or a path to a YAML file. Without
    `address` it trains on the cluster `raytf up` started, or on an embedded one for this run.
    `resume` continues from the newest checkpoint in output_dir; `restart` deletes the
    checkpoints there first. Ctrl-C / SIGTERM stop at the next step, write a checkpoint and
    raise `Interrupted` (a second one quits at once). `started_at` (wall clock) is when the
    command that calls this started, so that start-up accounting includes it (the CLI passes it).
    """
    import ray

    from raytf.actors import check_resources, get, launch, server_settings
    from raytf.checkpoint import root_of
    from raytf import local_cluster
    from raytf.cluster import connect, needs_embedded_cluster
    from raytf.supervisor import Supervisor, stop_on_signals
    from raytf.tensorboard import TensorBoardLog

    clock = StartupClock(origin=started_at or time.time())
    if started_at is not None:
        clock.add("command", "driver", started_at, time.time())
    cfg = coerce_config(config, overrides)
    # With no cluster up, the embedded head starts while this process imports TensorFlow and
    # checks the model (seconds each); bad input stops it again before it is used.
    head = local_cluster.launch() if needs_embedded_cluster(address) else None
    try:
        prepared = prepare(cfg, clock)
        states = start_states(prepared, resume, restart)
    except BaseException:
        if head is not None:
            head.stop()
        raise
    run_id = f"{cfg.name}-{uuid.uuid4().hex[:8]}"
    settings = server_settings(cfg, str(root_of(prepared.output_dir).resolve()), prepared.plan)
    tensorboard = TensorBoardLog(prepared.output_dir / "tensorboard", on_event)
    try:
        # job_name is the dashboard's Jobs "Name" column; the config sits in the job's details.
        metadata = {"job_name": f"raytf {run_id}", "raytf_run": run_id,
                    "raytf_config": json.dumps(cfg.to_dict(), sort_keys=True)}
        with connect(address, on_event=on_event, metadata=metadata, clock=clock, head=head) as connection:
            check_resources(cfg, ray.cluster_resources())
            actors = launch(cfg, run_id, prepared.plan, states, settings, clock)
            try:
                resumed = states[0].version // settings.updates_per_step
                for notice in prepared.notices:
                    on_event(notice)
                on_event(f"Run {run_id}: {cfg.distribution.workers} workers, {cfg.distribution.parameter_servers} "
                         f"parameter servers, {cfg.policy.describe()}, exchange via {_kinds(actors.link_kinds)}"
                         + (f", resuming at step {resumed}" if resumed else ""))
                supervisor = Supervisor(cfg, run_id, prepared.plan, actors, settings, states,
                                        [r for r in (progress, tensorboard) if r is not None], on_event)
                with stop_on_signals(supervisor.stop_requested):
                    supervisor.run()
                if supervisor.interrupted:
                    raise _interrupted(supervisor, cfg)
                buffers = get([s.get_params.remote() for s in actors.servers], "Collecting parameters")
                tables = [get([s.get_table.remote(k) for s in actors.servers], "Collecting the sparse tables")
                          for k in range(len(prepared.plan.tables))]
                stats = get([s.stats.remote() for s in actors.servers], "Collecting statistics")
                non_trainable = _non_trainable(actors.workers, prepared.model, on_event)
                train_ended = time.time()
                tracks = _tracks(actors.workers + actors.servers) if cfg.trace.enabled else None
                supervisor.finish()  # deaths Ray saw after the actors' work was done, up to this moment
            finally:
                actors.release()
        model = final_model(prepared, buffers, tables, non_trainable)
        compile_for_saving(model, cfg, build_optimizer=not any(t.cached for t in prepared.plan.tables))
        eval_results = evaluate(model, prepared)
        tensorboard.evaluation(eval_results, cfg.steps)
    finally:
        tensorboard.close()
    model_path = prepared.output_dir / "model.keras"
    model.save(model_path)
    results = [supervisor.results[i] for i in sorted(supervisor.results)]
    summary = _summary(cfg, prepared.plan, results, supervisor.steps_done, stats, eval_results, actors.link_kinds)
    ready = _first_steps(clock, supervisor.first_steps)
    summary.update(wall_seconds=time.time() - clock.origin, startup_seconds=ready - clock.origin,
                   train_seconds=train_ended - ready, startup_breakdown=clock.breakdown(ready))
    summary.update(model_path=str(model_path), run_id=run_id, ephemeral_cluster=connection.ephemeral,
                   tensorboard_dir=str(tensorboard.logdir), resumed_from_step=resumed or None,
                   restarts=supervisor.restarts, rollbacks=supervisor.rollbacks,
                   nonfinite_skipped=sum(s.exchange.nonfinite_skipped for s in stats),
                   checkpoint=_checkpoint_path(settings, supervisor.checkpoint_step))
    if tracks is not None:
        summary["trace"] = _write_trace(prepared.output_dir / "trace.json", tracks, run_id)
    _write_json(prepared.output_dir / "summary.json", summary)
    return summary


def _non_trainable(workers: list, model, on_event: Callable[[str], None]) -> list[np.ndarray]:
    """The trained non-trainable values (BatchNorm statistics, ...), from the first worker whose
    process still holds its replica: one that died after its work was done holds none (restarted,
    it was never set up), and that must not cost the finished run. If none does: none, and the model
    keeps its initial ones."""
    from raytf.actors import actor_state

    for worker in workers:
        known = actor_state(worker)
        if known is None or known[1] != "ALIVE":
            continue  # dead or being restarted: no replica there, and no waiting for its process
        values = _answer(worker.non_trainable, "Collecting non-trainable variables")
        if values is not None:
            return values
    if model.non_trainable_variables:
        on_event("Warning: no worker process holds its replica any more; the model keeps its initial "
                 "non-trainable values (BatchNorm statistics and the like).")
    return []


def _tracks(actors: list) -> list:
    """Every actor's recorded timeline; one that died after its work was done took its own along."""
    tracks = (_answer(actor.trace_track, "Collecting the trace") for actor in actors)
    return [track for track in tracks if track is not None]


def _answer(method, what: str) -> Any:
    """`method`'s answer, or None when its actor died (or is being restarted) meanwhile, or did not
    answer within the supervisor's CALL_TIMEOUT."""
    import ray

    from raytf.actors import get
    from raytf.supervisor import CALL_TIMEOUT

    ref = method.remote()
    try:
        return ray.get(ref, timeout=CALL_TIMEOUT)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return None
    except ray.exceptions.RayTaskError:
        get(ref, what)  # raises raytf's error for it
        raise


def _write_trace(path: Path, tracks: list, run_id: str) -> str:
    """The actors' timelines as one Chrome trace (`raytf.trace`); returns its path."""
    from raytf.trace import chrome_trace

    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(chrome_trace(tracks, run_id), separators=(",", ":")))
    os.replace(tmp, path)
    return str(path)


def _checkpoint_path(settings, step: int | None) -> str | None:
    from raytf.checkpoint import step_dir

    return str(step_dir(Path(settings.checkpoint_dir), step)) if step is not None else None


def _interrupted(supervisor, cfg: TrainConfig):
    from raytf.errors import Interrupted

    step = supervisor.stop_version // supervisor.ups
    where = _checkpoint_path(supervisor.settings, supervisor.checkpoint_step)
    if supervisor.checkpoint_step == step:
        problem = f"Stopped at step {step} of {cfg.steps}; the checkpoint is in {where}."
    else:
        problem = (f"Stopped at step {step} of {cfg.steps}, but its checkpoint could not be completed; "
                   + (f"the newest is {where}." if where else "there is no checkpoint."))
    return Interrupted(problem, "Continue with `raytf train CONFIG --resume` (same config and output_dir), "
                                "or raytf.fit(..., resume=True).")


def _kinds(link_kinds: list[list[str]]) -> str:
    kinds = sorted({kind for row in link_kinds for kind in row})
    return " and ".join(kinds) or "-"


def _first_steps(clock: StartupClock, first_steps: dict[int, dict]) -> float:
    """Add each worker's first pull and first (compiling) step to the clock; returns when the
    slowest worker finished its first step, the end of start-up."""
    ready = clock.origin
    for worker, spans in sorted(first_steps.items()):
        for phase, (start, end) in spans.items():
            clock.add(phase, f"worker-{worker}", start, end)
            if phase == "first_compile":
                ready = max(ready, end)
    return ready


def _summary(cfg: TrainConfig, plan, results: list, steps_done: list[int], stats: list, eval_results: dict,
             link_kinds: list[list[str]]) -> dict[str, Any]:
    """The run's summary from the workers' results and the servers' statistics (`raytf.exchange`).

    Gradient counts are server 0's: every worker pushes to every server, and with backup workers
    each server takes the first gradients that reach it (as TensorFlow's SyncReplicasOptimizer does
    per variable), so another server's counts can differ a little; `per_server` has each one's."""
    policy = cfg.policy
    workers = range(cfg.distribution.workers)
    exchanges = [s.exchange for s in stats]
    first = exchanges[0]
    applied = sum(e.staleness.applied for e in exchanges)
    pushes = max(sum(r.steps for r in results), 1)  # the gradients these (finished) worker runs computed
    return {
        "name": cfg.name,
        "mode": cfg.distribution.mode,
        "exchange": policy.describe(),
        "workers": cfg.distribution.workers,
        "parameter_servers": cfg.distribution.parameter_servers,
        "transport": _kinds(link_kinds),
        "links": [list(row) for row in link_kinds],  # [worker][server]: shm or object_store, at the end
        "optimizer": cfg.optimizer.name,
        "batch_size": cfg.batch_size,
        "steps": cfg.steps,
        "samples": cfg.steps * cfg.batch_size * cfg.distribution.workers,
        "samples_per_second": sum(r.samples_per_second for r in results),
        "final_loss": float(np.mean([r.final_loss for r in results])),
        "eval": eval_results,
        "staleness": {
            "mean": sum(e.staleness.mean * e.staleness.applied for e in exchanges) / applied if applied else 0.0,
            "max": max(e.staleness.max for e in exchanges),
        },
        "updates": first.updates,
        "gradients_applied": {"total": sum(first.applied.values()), "per_worker": [first.applied.get(w, 0) for w in workers]},
        "gradients_dropped": {"total": sum(first.dropped.values()), "per_worker": [first.dropped.get(w, 0) for w in workers]},
        **policy.summary(first),
        "per_worker": [
            {"index": r.index, "steps": steps_done[r.index], "final_loss": r.final_loss,
             "samples_per_second": r.samples_per_second, "ms_compute_per_step": r.ms_compute_per_step,
             "ms_exchange_per_step": r.ms_exchange_per_step}
            for r in results
        ],
        "per_server": [
            {"version": s.exchange.version, "pushes": s.exchange.pushes, "gradients_applied": sum(s.exchange.applied.values()),
             "gradients_dropped": sum(s.exchange.dropped.values()), "ms_apply_per_update": s.ms_apply_per_update,
             "ms_publish_per_update": s.ms_publish_per_update}
            for s in stats
        ],
        "bytes_pushed": sum(r.bytes_pushed for r in results),
        "bytes_pulled": sum(r.bytes_pulled for r in results),
        "bytes_per_worker_step": {"pushed": sum(r.bytes_pushed for r in results) / pushes,
                                  "pulled": sum(r.bytes_pulled for r in results) / pushes},
        "sparse": _sparse_summary(cfg, plan, results, pushes),
        "peak_rss_bytes": {"workers": [r.peak_rss for r in results], "servers": [s.peak_rss for s in stats]},
    }


def _sparse_summary(cfg: TrainConfig, plan, results: list, pushes: int) -> dict[str, Any]:
    from raytf.optimizers import RowOptimizer

    return {
        "tables": [{"layer": t.layer, "rows": t.rows, "width": t.width, "bytes": t.nbytes} for t in plan.tables],
        "partition": cfg.sparse.partition,
        "lazy": bool(plan.tables) and cfg.optimizer.name in RowOptimizer.LAZY and cfg.sparse.slots == "lazy",
        "unique_ids_per_step": sum(r.unique_ids for r in results) / pushes,
    }


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)
