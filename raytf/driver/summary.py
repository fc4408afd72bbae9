"""What a run reports: the summary (returned by `raytf.fit`, written to output_dir/summary.json),
the trace file, and the start-up accounting."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from raytf.config import TrainConfig
from raytf.exchange.policies import policy_for
from raytf.observe.startup import StartupClock


def build_summary(cfg: TrainConfig, plan, results: list, steps_done: list[int], stats: list, eval_results: dict,
             link_kinds: list[list[str]]) -> dict[str, Any]:
    """The run's summary from the workers' results and the servers' statistics (`raytf.exchange`).

    Gradient counts are server 0's: every worker pushes to every server, and with backup workers
    each server takes the first gradients that reach it (as TensorFlow's SyncReplicasOptimizer does
    per variable), so another server's counts can differ a little; `per_server` has each one's."""
    policy = policy_for(cfg.distribution)
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
        "transport": link_kinds_text(link_kinds),
        "links": [list(row) for row in link_kinds],  # [worker][server]: shm or object_store, at the end
        "optimizer": cfg.optimizer.name,
        "batch_size": cfg.batch_size,
        "steps": cfg.steps,
        "samples": cfg.steps * cfg.batch_size * cfg.distribution.workers,
        "samples_per_second": sum(r.samples_per_second for r in results),
        "final_loss": final_loss(results),
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
             "ms_exchange_per_step": r.ms_exchange_per_step, "cpu_ms_per_step": r.cpu_ms_per_step,
             "cpu_sys_ms_per_step": r.cpu_sys_ms_per_step}
            for r in results
        ],
        "per_server": [
            {"version": s.exchange.version, "pushes": s.exchange.pushes, "gradients_applied": sum(s.exchange.applied.values()),
             "gradients_dropped": sum(s.exchange.dropped.values()), "ms_apply_per_update": s.ms_apply_per_update,
             "ms_publish_per_update": s.ms_publish_per_update, "cpu_ms_per_update": s.cpu_ms_per_update,
             "cpu_sys_ms_per_update": s.cpu_sys_ms_per_update}
            for s in stats
        ],
        "bytes_pushed": sum(r.bytes_pushed for r in results),
        "bytes_pulled": sum(r.bytes_pulled for r in results),
        "bytes_per_worker_step": {"pushed": sum(r.bytes_pushed for r in results) / pushes,
                                  "pulled": sum(r.bytes_pulled for r in results) / pushes},
        # What crossed the wire links (compressed, with frame headers); 0 without one.
        "wire_bytes_per_worker_step": {"pushed": sum(r.wire_sent for r in results) / pushes,
                                       "pulled": sum(r.wire_received for r in results) / pushes},
        "sparse": sparse_summary(cfg, plan, results, pushes, stats),
        "peak_rss_bytes": {"workers": [r.peak_rss for r in results], "servers": [s.peak_rss for s in stats]},
    }


def final_loss(results: list) -> float:
    """The mean of the workers' last losses; a worker whose last run trained no step (it rejoined
    after the others had trained every one) has none and is left out. NaN if no worker has one."""
    losses = [r.final_loss for r in results if r.steps and math.isfinite(r.final_loss)]
    return float(np.mean(losses)) if losses else float("nan")


def sparse_summary(cfg: TrainConfig, plan, results: list, pushes: int, stats: list = ()) -> dict[str, Any]:
    from raytf.exchange.tables import LAZY_OPTIMIZERS

    tables = []
    for k, t in enumerate(plan.tables):
        table = {"layer": t.layer, "rows": t.rows, "width": t.width, "bytes": t.nbytes}
        if t.is_dynamic:  # its rows over all servers: created, evicted, live, ...
            counts = [s.dynamic[k] for s in stats if len(s.dynamic) > k and s.dynamic[k]]
            table.update(dynamic=True, **{key: sum(c[key] for c in counts) for key in (counts[0] if counts else {})})
        tables.append(table)
    return {
        "tables": tables,
        "partition": cfg.sparse.partition,
        "lazy": bool(plan.tables) and cfg.optimizer.name in LAZY_OPTIMIZERS and cfg.sparse.slots == "lazy",
        "unique_ids_per_step": sum(r.unique_ids for r in results) / pushes,
    }


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)

def write_trace(path: Path, tracks: list, run_id: str) -> str:
    """The actors' timelines as one Chrome trace (`raytf.observe.trace`); returns its path."""
    from raytf.observe.trace import chrome_trace

    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(chrome_trace(tracks, run_id), separators=(",", ":")))
    os.replace(tmp, path)
    return str(path)


def link_kinds_text(link_kinds: list[list[str]]) -> str:
    kinds = sorted({kind for row in link_kinds for kind in row})
    return " and ".join(kinds) or "-"


def first_steps(clock: StartupClock, first_steps: dict[int, dict]) -> float:
    """Add each worker's first pull and first (compiling) step to the clock; returns when the
    slowest worker finished its first step, the end of start-up."""
    ready = clock.origin
    for worker, spans in sorted(first_steps.items()):
        for phase, (start, end) in spans.items():
            clock.add(phase, f"worker-{worker}", start, end)
            if phase == "first_compile":
                ready = max(ready, end)
    return ready
