"""Steady-state training throughput of raytf against Ray Train and the no-exchange ceiling.

    python examples/benchmark.py                      # every contender, 300 steps each
    python examples/benchmark.py --steps 30 --only raytf-sync,ceiling --json runs/bench.json
    python examples/benchmark.py --steps 100 --only raytf-sync,raytf-sync-objstore,raytf-sync-2nodes

Same model and data for all (examples/mlp_benchmark.yaml: MLP 784-1024-1024-10, batch 256 per
worker, 2 workers, 1 parameter server, SGD), all on ONE local Ray cluster bound to 127.0.0.1 that is
started once and stopped at the end; the `-2nodes` contenders run on a second cluster of two Ray
nodes on this machine (server on one, workers on the other: the object store between nodes). samples/s is summed over the workers and excludes start-up and
the first warm-up steps (`raytf.worker.warmup_steps`). It prints numbers; it judges none.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `examples.*` importable when run as a script, here and in the actors
CONFIG = REPO / "examples" / "mlp_benchmark.yaml"
OUT = REPO / "runs" / "benchmark"

RAYTF = {  # name: (mode, transport)
    "raytf-sync": ("sync", "auto"),
    "raytf-async": ("async", "auto"),
    "raytf-sync-objstore": ("sync", "object_store"),
    "raytf-async-objstore": ("async", "object_store"),
}
# On a cluster of two Ray nodes (both on this machine, tests/multinode.py): the server on one, both
# workers on the other, so every exchange crosses nodes through the object store (`transport: auto`).
TWO_NODES = {
    "raytf-sync-2nodes": "sync",
    "raytf-async-2nodes": "async",
}
PLACEMENT = ["distribution.ps_resources.resources.bench_ps=1", "distribution.worker_resources.resources.bench_worker=1"]
CONTENDERS = (*RAYTF, *TWO_NODES, "ray-train", "ceiling")


def run_raytf(base: dict, name: str, steps: int) -> dict:
    import raytf

    mode, transport = RAYTF[name]
    summary = raytf.fit(base, overrides=[f"steps={steps}", f"distribution.mode={mode}",
                                         f"distribution.transport={transport}", f"output_dir={OUT / name}"],
                        restart=True)  # each benchmark run starts over
    return _row(summary)


def run_two_nodes(base: dict, names: list[str], steps: int, record) -> None:
    """The two-node contenders, on a cluster of their own (started once, stopped after)."""
    import tempfile

    import raytf
    from raytf import local_cluster
    from tests import multinode

    with tempfile.TemporaryDirectory(prefix="raytf-bench-") as root:
        cluster = multinode.start(Path(root))
        try:
            cluster.add_node("servers", num_cpus=1, resources={"bench_ps": 1})
            cluster.add_node("workers", num_cpus=2, resources={"bench_worker": 2})
            with local_cluster.token_auth(cluster.head):
                for name in names:
                    def run(name=name) -> dict:
                        summary = raytf.fit(base, address=cluster.address, restart=True, overrides=[
                            f"steps={steps}", f"distribution.mode={TWO_NODES[name]}", "distribution.transport=auto",
                            f"output_dir={OUT / name}", *PLACEMENT])
                        return _row(summary)
                    record(name, run)
        finally:
            cluster.stop()


def _row(summary: dict) -> dict:
    workers = summary["per_worker"]
    return {
        "samples_per_second": summary["samples_per_second"],
        "transport": summary["transport"],
        "ms_compute_per_step": sum(w["ms_compute_per_step"] for w in workers) / len(workers),
        "ms_exchange_per_step": sum(w["ms_exchange_per_step"] for w in workers) / len(workers),
    }


def run_one(base: dict, name: str, steps: int) -> dict:
    from examples import bench_baselines
    from raytf.config import config_from_dict

    if name in RAYTF:
        return run_raytf(base, name, steps)
    cfg = config_from_dict(base, [f"steps={steps}"])
    if name == "ceiling":
        return bench_baselines.run_ceiling(cfg, steps)
    return bench_baselines.run_ray_train(cfg, steps, str(OUT / "ray-train"))


def table(rows: list[dict]) -> str:
    ceiling = next((r.get("samples_per_second") for r in rows if r["name"] == "ceiling"), None)
    lines = ["| contender | samples/s | ratio to ceiling | ms compute/step | ms exchange/step | wall s |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | failed | - | - | - | {r['wall_seconds']:.0f} |")
            continue
        sps = r["samples_per_second"]
        ratio = f"{sps / ceiling:.2f}" if ceiling else "-"
        ms = [f"{r[k]:.1f}" if k in r else "-" for k in ("ms_compute_per_step", "ms_exchange_per_step")]
        lines.append(f"| {r['name']} | {sps:,.0f} | {ratio} | {ms[0]} | {ms[1]} | {r['wall_seconds']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps per contender (default 300)")
    parser.add_argument("--only", default=",".join(CONTENDERS), help=f"comma-separated subset of {','.join(CONTENDERS)}")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(CONTENDERS))
    if unknown or not names:
        parser.error(f"--only: unknown contender(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(CONTENDERS)}")
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first is warm-up)")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import ray
    import tensorflow as tf
    import yaml

    from examples.bench_baselines import jit_setting
    from raytf.config import config_from_dict

    base = yaml.safe_load(CONFIG.read_text())
    started = time.perf_counter()
    rows: list[dict] = []
    from raytf.cluster import connect

    # Examples import from the repo root, in this process and in every actor.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    # One cluster for every contender: the one `raytf up` started, else an embedded one for this run.
    def record(name: str, run) -> None:
        print(f"[benchmark] {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            row = run()
        except Exception as err:  # noqa: BLE001 - report it in the table and go on to the next contender
            row = {"error": f"{type(err).__name__}: {err}"}
            print(f"[benchmark] {name} failed: {row['error']}", file=sys.stderr, flush=True)
        rows.append({"name": name, **row, "wall_seconds": time.perf_counter() - t0})

    one_node = [n for n in names if n not in TWO_NODES]
    if one_node:
        with connect(on_event=lambda message: print(f"[benchmark] {message}", file=sys.stderr, flush=True)):
            for name in one_node:
                record(name, lambda name=name: run_one(base, name, args.steps))
    two_nodes = [n for n in names if n in TWO_NODES]
    if two_nodes:
        run_two_nodes(base, two_nodes, args.steps, record)

    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpus": os.cpu_count(), "python": platform.python_version(), "tensorflow": tf.__version__, "ray": ray.__version__,
        "steps": args.steps, "config": str(CONFIG.relative_to(REPO)), "total_seconds": time.perf_counter() - started,
        "jit_compile": jit_setting(config_from_dict(base)),
    }
    print(f"command: {meta['command']}\ndate: {meta['date']}\nCPUs: {meta['cpus']}, Python {meta['python']}, "
          f"TensorFlow {meta['tensorflow']}, Ray {meta['ray']}\n"
          f"model: {meta['config']} (jit_compile {meta['jit_compile']}), {args.steps} steps per contender, "
          f"total {meta['total_seconds']:.0f} s\n")
    print(table(rows))
    for r in rows:
        if "error" in r:
            print(f"\n{r['name']} failed: {r['error']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**meta, "results": rows}, indent=2))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
