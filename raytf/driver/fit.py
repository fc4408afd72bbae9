"""`raytf.fit`: one training run from config to saved model and summary.

Prepare (`raytf.driver.prepare`: everything checked before a cluster is used), launch the actors
(`raytf.driver.actors`), supervise the run (`raytf.driver.supervisor`), collect the trained values,
evaluate, save, and report (`raytf.driver.summary`).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from raytf.config import TrainConfig
from raytf.driver.checkpoints import prune
from raytf.driver.prepare import (
    check_on_host,
    checks_in_pool,
    coerce_config,
    finish_on_host,
    prepare,
    prepare_and_start,
    prepare_output_dir,
    reads_ray_data,
    resumed_statistics,
    trained_model,
)
from raytf.driver.output_lock import holding
from raytf.driver.signals import stop_on_signals, terminate_as_interrupt
from raytf.driver.summary import build_summary, first_steps, link_kinds_text, write_json, write_trace
from raytf.driver.validation import Evaluation
from raytf.exchange.policies import policy_for
from raytf.observe.startup import StartupClock


@terminate_as_interrupt()  # before training and after it; stop_on_signals while it trains
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
    raise `Interrupted` (a second one quits at once); before training starts and after it ends,
    they raise KeyboardInterrupt, taking down what was started (an embedded cluster, actors).
    `started_at` (wall clock) is when the command that calls this started, so that start-up
    accounting includes it (the CLI passes it). One run at a time may use an output_dir
    (raytf.driver.output_lock): a second one fails at once with a ConfigError.
    """
    clock = StartupClock(origin=started_at or time.time())
    if started_at is not None:
        clock.add("command", "driver", started_at, time.time())
    cfg = coerce_config(config, overrides)
    with holding(prepare_output_dir(cfg.output_dir)):
        return _fit(cfg, clock, address, progress, on_event, resume, restart)


def _fit(cfg: TrainConfig, clock: StartupClock, address: str | None, progress, on_event: Callable[[str], None],
         resume: bool, restart: bool) -> dict[str, Any]:
    import ray

    from raytf.cluster import local as local_cluster
    from raytf.cluster.connection import connect, needs_embedded_cluster
    from raytf.driver.actors import UNTRIED, check_resources, launch, server_settings, take_pool
    from raytf.driver.groups import trace_tracks
    from raytf.driver.supervisor import Supervisor
    from raytf.exchange.shard_state import root_of
    from raytf.observe.tensorboard import TensorBoardLog

    # With no cluster up, the embedded head starts while this process imports TensorFlow and
    # checks the model (seconds each); bad input stops it again before it is used.
    head = local_cluster.launch() if needs_embedded_cluster(address) else None
    # A Ray Data dataset is opened on the cluster: then the driver connects first, and prepares there.
    ray_first = reads_ray_data(cfg)
    # On a cluster `raytf up` started, a warm pool process checks the model: this process needs no TensorFlow.
    in_pool = head is None and checks_in_pool(cfg)
    try:
        if not ray_first and not in_pool:
            prepared, states = prepare_and_start(cfg, resume, restart, clock)
            cfg = prepared.config  # steps known now, also where it gave epochs
    except BaseException:
        if head is not None:
            head.stop()
        raise
    run_id = f"{cfg.name}-{uuid.uuid4().hex[:8]}"
    tensorboard = TensorBoardLog(Path(cfg.output_dir) / "tensorboard", on_event)
    try:
        # job_name is the dashboard's Jobs "Name" column; the config sits in the job's details.
        metadata = {"job_name": f"raytf {run_id}", "raytf_run": run_id,
                    "raytf_config": json.dumps(cfg.to_dict(), sort_keys=True)}
        with connect(address, on_event=on_event, metadata=metadata, clock=clock, head=head) as connection:
            pool = None if connection.ephemeral else UNTRIED  # an embedded cluster has no pool: no need to look
            try:
                if in_pool:
                    check_resources(cfg, ray.cluster_resources())
                    with clock.span("pool_take"):
                        pool = take_pool(cfg, run_id, on_event)
                    prepared, states = _checked(pool, cfg, resume, restart, clock)
                    cfg = prepared.config
                if ray_first:
                    prepared, states = prepare_and_start(cfg, resume, restart, clock)
                    cfg = prepared.config
                settings = server_settings(cfg, str(root_of(prepared.output_dir).resolve()), prepared.plan)
                check_resources(cfg, ray.cluster_resources())
                actors = launch(cfg, run_id, prepared.plan, states, settings, clock, data=prepared.data,
                                share=_ray_data_share(prepared),
                                statistics=resumed_statistics(prepared) if states[0].version else None,
                                on_event=on_event, pool=pool)
            except BaseException:
                if pool is not UNTRIED and pool is not None:
                    pool.give_back()  # taken before the actors existed (launch gives back what it was handed)
                raise
            try:
                resumed = states[0].version // settings.updates_per_step
                for notice in [*actors.notices, *prepared.notices]:
                    on_event(notice)
                on_event(f"Run {run_id}: {cfg.distribution.workers} workers, {cfg.distribution.parameter_servers} "
                         f"parameter servers, {policy_for(cfg.distribution).describe()}, exchange via {link_kinds_text(actors.link_kinds)}"
                         + (f", workers pinned to cores {' / '.join(','.join(map(str, c)) for c in actors.cores)}"
                            if actors.cores and all(actors.cores) else "")
                         + (f", resuming at step {resumed}" if resumed else ""))
                compression = cfg.distribution.compression
                if (compression.push, compression.pull) != ("none", "none") and not any(
                        kind == "wire" for kinds in actors.link_kinds for kind in kinds):
                    on_event(f"Note: distribution.compression (push {compression.push}, pull {compression.pull}) "
                             "applies to links over the wire only, and no worker reaches a server over it in this "
                             "run (they share nodes, or transport is not auto/wire): nothing is compressed.")
                validator = _validator(prepared, actors, tensorboard, on_event)
                supervisor = Supervisor(cfg, run_id, prepared.plan, actors, settings, states,
                                        [r for r in (progress, tensorboard) if r is not None], on_event, validator)
                with stop_on_signals(supervisor.stop_requested):
                    supervisor.run()
                if validator is not None and not supervisor.interrupted:
                    validator.finish()  # its evaluations still under way ask the workers for their statistics
                    supervisor.report_validation()
                if supervisor.interrupted:
                    raise _interrupted(supervisor, cfg)
                buffers = actors.servers.parameters()
                tables = [actors.servers.table(k) for k in range(len(prepared.plan.tables))]
                stats = actors.servers.final_statistics()
                non_trainable = _non_trainable(actors.workers, prepared.model, on_event)
                train_ended = time.time()
                # Checked in a pool process: the final model is made in one too, before the hosts go back.
                finished = (_finished_in_pool(actors, cfg, buffers, tables, non_trainable)
                            if prepared.model is None else None)
                tracks = trace_tracks([actors.workers, actors.servers]) if cfg.trace.enabled else None
                supervisor.finish()  # deaths Ray saw after the actors' work was done, up to this moment
            finally:
                actors.release()
        if finished is not None:
            model, (eval_results, model_bytes) = None, finished
        else:
            if prepared.model is None:  # checked in a pool process that is gone now: made here, as without a pool
                prepared = replace(prepare(cfg), notices=prepared.notices)  # (after start-up: not on its clock)
            model, eval_results = trained_model(prepared, buffers, tables, non_trainable)
        if validator is not None and eval_results:  # the last step's evaluation, in the history too
            validator.record(Evaluation(cfg.steps, cfg.epochs, eval_results))
            if settings.checkpoint_dir:  # what waited for its evaluation, and is neither the best nor new, goes
                prune(Path(settings.checkpoint_dir), cfg.checkpoint.keep, also=validator.kept_steps())
        else:
            tensorboard.evaluation(eval_results, cfg.steps)
    finally:
        tensorboard.close()
    model_path = prepared.output_dir / "model.keras"
    if model is not None:
        model.save(model_path)
    else:
        model_path.write_bytes(model_bytes)
    results = [supervisor.results[i] for i in sorted(supervisor.results)]
    summary = build_summary(cfg, prepared.plan, results, supervisor.steps_done, stats, eval_results, actors.link_kinds)
    ready = first_steps(clock, supervisor.first_steps)
    summary.update(wall_seconds=time.time() - clock.origin, startup_seconds=ready - clock.origin,
                   train_seconds=train_ended - ready, startup_breakdown=clock.breakdown(ready))
    summary.update(model_path=str(model_path), run_id=run_id, ephemeral_cluster=connection.ephemeral,
                   tensorboard_dir=str(tensorboard.logdir), resumed_from_step=resumed or None,
                   worker_cores=[list(cores) for cores in actors.cores],  # [] per worker not pinned
                   warm_pool=_pool_counts(actors),
                   restarts=supervisor.restarts, rollbacks=supervisor.rollbacks,
                   nonfinite_skipped=sum(s.exchange.nonfinite_skipped for s in stats),
                   checkpoint=_checkpoint_path(settings, supervisor.checkpoint_step))
    if validator is not None:
        summary["eval_history"] = [evaluation.as_dict() for evaluation in validator.history]
        best = validator.best
        if best is not None:
            metric = cfg.checkpoint.keep_best
            summary["best_checkpoint"] = {"step": best.step, "metric": metric, "value": best.results[metric],
                                          "checkpoint": _checkpoint_path(settings, best.step)}
    if tracks is not None:
        summary["trace"] = write_trace(prepared.output_dir / "trace.json", tracks, run_id)
    write_json(prepared.output_dir / "summary.json", summary)
    return summary


def _checked(pool, cfg: TrainConfig, resume: bool, restart: bool, clock: StartupClock):
    """`prepare` and `start_states` in one of the run's pool processes (this process never imports
    TensorFlow then), or here where the pool gave the run none. Bad input fails with the same errors."""
    from raytf.driver.groups import get

    host = next((h for h in (pool.hosted if pool is not None else []) if h is not None), None)
    if host is None:
        return prepare_and_start(cfg, resume, restart, clock)
    with clock.span("pool_model_check"):
        return get(host.host.run_task.remote(host.lease, os.getcwd(), check_on_host, cfg, resume, restart),
                   "Checking the model")


def _finished_in_pool(actors, cfg: TrainConfig, buffers, tables, non_trainable) -> tuple[dict, bytes] | None:
    """The final model's evaluation and file, made by a worker's (else a server's) pool process; None
    when every one of them died meanwhile (the driver then makes it itself)."""
    import ray

    from raytf.driver.groups import get

    hosted = sorted((h for h in actors.pool.hosted if h is not None), key=lambda h: (h.lease.role != "worker", h.lease.index))
    for host in hosted:
        ref = host.host.run_task.remote(host.lease, os.getcwd(), finish_on_host, cfg, buffers, tables, non_trainable)
        try:
            ray.get(ref)
        except ray.exceptions.RayActorError:
            continue  # that process is gone (or restarting): the next one
        except ray.exceptions.RayTaskError:
            pass  # raised below as raytf's error
        return get(ref, "Saving the trained model")
    return None


def _pool_counts(actors) -> dict[str, int]:
    """How many of the run's actors were warm processes of the pool (raytf.pool), and how many started afresh."""
    hosted = sum(h is not None for h in actors.pool.hosted) if actors.pool is not None else 0
    return {"hosted": hosted, "fresh": len(actors.servers) + len(actors.workers) - hosted}


def _ray_data_share(prepared):
    """For a Ray Data data.train: what gives the workers their parts once their nodes are known (the
    splits' locality hints); None for other data."""
    if prepared.train is None:  # checked in a pool process: data.train is no Ray Data dataset
        return None
    ray_input, config = prepared.train.ray, prepared.config
    if ray_input is None:
        return None
    return lambda nodes: replace(prepared.data, ray=ray_input.share(config.distribution.workers, nodes,
                                                                   config.batch_size))


def _validator(prepared, actors, tensorboard, on_event: Callable[[str], None]):
    """Validation while training where eval asks for it (raytf.driver.validation), else None."""
    every = prepared.config.eval_every_steps()
    if every is None:
        return None
    from raytf.driver.validation import Validator

    def published(evaluation) -> None:
        on_event(evaluation.line())
        tensorboard.evaluation(evaluation.results, evaluation.step)

    return Validator(prepared, every, actors.workers.non_trainable, published, on_event)


def _non_trainable(workers, model, on_event: Callable[[str], None]) -> list[np.ndarray]:
    """The trained non-trainable values (BatchNorm statistics, ...) from a worker that still holds its
    replica (one that died after its work was done must not cost the finished run). If none does:
    none, and the model keeps its initial ones (not the driver replica's values: their order may differ)."""
    values = workers.non_trainable()
    if values is not None:
        return values
    if model is None or model.non_trainable_variables:
        on_event("Warning: no worker process holds its replica any more; the model keeps its initial "
                 "non-trainable values (BatchNorm statistics and the like).")
    return []


def _checkpoint_path(settings, step: int | None) -> str | None:
    from raytf.exchange.shard_state import step_dir

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

