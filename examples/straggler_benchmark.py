"""Stragglers: what each consistency policy does with a slow worker, and with short stalls.

    python examples/straggler_benchmark.py [--steps 400] [--json runs/straggler.json]

Digits (examples/digits.py), 3 workers with 0.5 CPU each (so they fit on 2 cores), 1 parameter
server, Adam, batch 64, every policy on ONE local Ray cluster (the one `raytf up` started, else an
embedded one for this invocation):

* slow worker: worker 2's data pipeline takes ~0.2 s per batch (examples/straggler.py). sync waits
  for it every round; sync with backup_workers: 1 applies the first 2 gradients of each round and
  drops the late one; async applies everything on arrival; ssp bounds how far the fast ones lead.
* staggered stalls: every worker stalls 0.3 s once every 8 batches, at its own phase. sync waits
  out each stall; ssp (bound 3) lets the others go on.

rounds/s is training steps per second (server updates / updates per step) over the training time
(after start-up); gradients/s counts gradients applied to the model. It prints numbers; it judges none.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `examples.*` importable when run as a script, here and in the actors
OUT = REPO / "runs" / "straggler"

BASE = {
    "model": "examples.straggler:build_model",
    "data": {"train": "examples.straggler:train_slow_last_shard", "eval": "examples.straggler:eval_examples",
             "shuffle_buffer": 0},  # in order: the delays fall where examples/straggler.py puts them
    "loss": "sparse_categorical_crossentropy",
    "metrics": ["accuracy"],
    "optimizer": {"name": "adam", "learning_rate": 0.002},
    "batch_size": 64,
    "distribution": {"workers": 3, "parameter_servers": 1, "worker_resources": {"num_cpus": 0.5}},
    "checkpoint": {"every_steps": 0},
}
RUNS = [  # (scenario, label, data function, distribution overrides)
    ("slow worker", "sync", "train_slow_last_shard", {"mode": "sync"}),
    ("slow worker", "sync, backup_workers 1", "train_slow_last_shard", {"mode": "sync", "backup_workers": 1}),
    ("slow worker", "async", "train_slow_last_shard", {"mode": "async"}),
    ("slow worker", "ssp, bound 3", "train_slow_last_shard", {"mode": "ssp", "staleness_bound": 3}),
    ("staggered stalls", "sync", "train_staggered_stalls", {"mode": "sync"}),
    ("staggered stalls", "ssp, bound 3", "train_staggered_stalls", {"mode": "ssp", "staleness_bound": 3}),
]


def run_one(index: int, data: str, distribution: dict, steps: int) -> dict:
    import raytf

    config = json.loads(json.dumps(BASE))
    config["name"] = f"straggler-{index}"
    config["steps"] = steps
    config["data"]["train"] = f"examples.straggler:{data}"
    config["distribution"].update(distribution)
    config["output_dir"] = str(OUT / config["name"])
    summary = raytf.fit(config, restart=True)
    from raytf.exchange import make_policy

    seconds = summary["train_seconds"]
    updates_per_step = make_policy(summary["mode"], summary["workers"]).updates_per_step
    return {
        "rounds_per_second": summary["updates"] / updates_per_step / seconds,
        "gradients_per_second": summary["gradients_applied"]["total"] / seconds,
        "gradients_applied": summary["gradients_applied"],
        "gradients_dropped": summary["gradients_dropped"],
        "accuracy": summary["eval"]["accuracy"],
        "clock_skew_max": summary.get("clock_skew_max"),
        "bound_wait_seconds": (summary.get("bound_wait_seconds") or {}).get("total"),
        "staleness_max": summary["staleness"]["max"],
        "train_seconds": seconds,
    }


def table(rows: list[dict]) -> str:
    lines = ["| scenario | policy | rounds/s | gradients/s | applied / dropped | eval accuracy | clock skew max | train s |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        skew = "-" if r["clock_skew_max"] is None else str(r["clock_skew_max"])
        lines.append(f"| {r['scenario']} | {r['policy']} | {r['rounds_per_second']:.1f} | {r['gradients_per_second']:.1f} | "
                     f"{r['gradients_applied']['total']:,} / {r['gradients_dropped']['total']:,} | {r['accuracy']:.3f} | "
                     f"{skew} | {r['train_seconds']:.1f} |")
    return "\n".join(lines)


def ratios(rows: list[dict], only: str | None = None) -> list[str]:
    def row(scenario: str, policy: str) -> dict:
        return next(r for r in rows if r["scenario"] == scenario and r["policy"] == policy)

    lines = []
    if only in (None, "slow worker"):
        slow_sync, backup = row("slow worker", "sync"), row("slow worker", "sync, backup_workers 1")
        lines.append(f"backup_workers 1 / sync rounds/s with a slow worker: "
                     f"{backup['rounds_per_second'] / slow_sync['rounds_per_second']:.2f}x")
    if only in (None, "staggered stalls"):
        stall_sync, stall_ssp = row("staggered stalls", "sync"), row("staggered stalls", "ssp, bound 3")
        lines.append(f"ssp / sync gradients/s with staggered stalls: "
                     f"{stall_ssp['gradients_per_second'] / stall_sync['gradients_per_second']:.2f}x")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="training steps per run (default 400)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--only", choices=sorted({scenario for scenario, *_ in RUNS}), help="one scenario only")
    args = parser.parse_args(argv)
    from raytf.cluster.connection import connect

    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    started = time.perf_counter()
    rows = []
    with connect(on_event=lambda message: print(f"[straggler] {message}", file=sys.stderr, flush=True)):
        for index, (scenario, policy, data, distribution) in enumerate(RUNS):
            if args.only and scenario != args.only:
                continue
            print(f"[straggler] {scenario}: {policy} ...", file=sys.stderr, flush=True)
            rows.append({"scenario": scenario, "policy": policy, **run_one(index, data, distribution, args.steps)})
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}\n"
          f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}, CPUs: {os.cpu_count()}, "
          f"{args.steps} steps per run, total {time.perf_counter() - started:.0f} s\n")
    print(table(rows))
    print()
    print("\n".join(ratios(rows, args.only)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
