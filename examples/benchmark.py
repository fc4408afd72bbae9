"""Steady-state training throughput of raytf against Ray Train, TF's ParameterServerStrategy and
two references, measured interleaved so that a machine whose speed drifts does not skew the ratios.

    python examples/benchmark.py                      # every contender, 3 repeats of 300 steps each
    python examples/benchmark.py --steps 30 --repeats 1 --only raytf-sync --json runs/bench.json
    python examples/benchmark.py --steps 60 --repeats 2 --only raytf-sync,raytf-async,tf-ps
    python examples/benchmark.py --steps 100 --only raytf-sync,raytf-sync-objstore,raytf-sync-2nodes
    sudo python examples/benchmark.py --link 1gbit,0.1ms --only raytf-sync-2nodes,raytf-sync-2nodes-int8

Same model and data for all (examples/mlp_benchmark.yaml: MLP 784-1024-1024-10, batch 256 per
worker, 2 workers, 1 parameter server, SGD), on ONE local Ray cluster bound to 127.0.0.1 that is
started once and stopped at the end; the `-2nodes` contenders run on a second cluster of two Ray
nodes on this machine (server on one, workers on the other: the wire, or the object store, between
nodes), over loopback, or with `--link RATE,DELAY` (root) in two network namespaces joined by a link
shaped with `tc` (examples/netns_cluster.py; 198.18.0.0/15 inside them only; deleted at the end).
`wire-floor-2nodes` is a bound on that cluster, not a trainer: the ceiling's actors with a sync round's
bytes moved across and back after every step, overlapped (examples/bench_baselines.run_wire_floor).

The protocol: both references (examples/bench_baselines.py: `ceiling`, 2 independent actors with
no exchange; `single-process`, one actor with 2 TF threads doing the same math at a global batch
of 512) are measured at every R of R, C1, R, C2, R, ..., Cn, R, and that sequence is run
`--repeats` times (one repeat's last R is the next one's first). A contender run's ratio is its
samples/s over the larger of the two references, each the mean of the R just before and just
after it. samples/s is summed over the workers and excludes start-up and the first warm-up steps
(`raytf.observe.steady.warmup_steps`). It prints numbers; it judges none.
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
# On a cluster of two Ray nodes (both on this machine, tests/driver/multinode.py): the server on one, both
# workers on the other, so every exchange crosses nodes: over the wire (`transport: auto`), through Ray's
# object store (`-objstore`), or over the wire compressed (`-bf16`: both directions; `-int8`: int8 pushes
# with error feedback, bf16 pulls; `-int8both`: int8 pulls too, the parameters' changes with the error kept
# on the server); `-whole`: sync rounds received whole before the update (no pipeline); `-each`: every
# worker pushes its own gradient across (no node-local sum, raytf.exchange.local_reduce).
# name: (mode, transport, more overrides)
COMPRESSION = {"bf16": ["distribution.compression.push=bf16", "distribution.compression.pull=bf16"],
               "int8": ["distribution.compression.push=int8", "distribution.compression.pull=bf16"],
               "int8both": ["distribution.compression.push=int8", "distribution.compression.pull=int8"]}
TWO_NODES = {
    "raytf-sync-2nodes": ("sync", "auto", []),
    "raytf-async-2nodes": ("async", "auto", []),
    "raytf-sync-2nodes-objstore": ("sync", "object_store", []),
    "raytf-async-2nodes-objstore": ("async", "object_store", []),
    "raytf-sync-2nodes-whole": ("sync", "auto", ["distribution.pipeline=false"]),  # rounds not pipelined
    "raytf-sync-2nodes-each": ("sync", "auto", ["distribution.local_reduce=false"]),  # no node-local sum
    "raytf-sync-2nodes-bf16": ("sync", "auto", COMPRESSION["bf16"]),
    "raytf-sync-2nodes-int8": ("sync", "auto", COMPRESSION["int8"]),
    "raytf-async-2nodes-int8": ("async", "auto", COMPRESSION["int8"]),
    "raytf-sync-2nodes-int8both": ("sync", "auto", COMPRESSION["int8both"]),
    "raytf-async-2nodes-int8both": ("async", "auto", COMPRESSION["int8both"]),
}
PLACEMENT = ["distribution.ps_resources.resources.bench_ps=1", "distribution.worker_resources.resources.bench_worker=1"]
TWO_NODE_TF_PS = "tf-ps-2nodes"  # TF's ParameterServerStrategy with its ps on one node, its workers on the other
# A bound, not a trainer (examples/bench_baselines.run_wire_floor): the ceiling's actors, one of them moving a
# sync round's bytes across and back after every step, overlapped with the next: no data plane over that link
# can beat it without compressing.
WIRE_FLOOR = "wire-floor-2nodes"
CONTENDERS = (*RAYTF, *TWO_NODES, "ray-train", "tf-ps", TWO_NODE_TF_PS, WIRE_FLOOR)
REFERENCE_NAMES = ("ceiling", "single-process")  # examples/bench_baselines.REFERENCES; measured at every R


def say(message: str) -> None:
    print(f"[benchmark] {message}", file=sys.stderr, flush=True)


TRACE: list[str] = []  # --trace: the overrides that record a timeline


def run_raytf(base: dict, name: str, steps: int, address: str | None = None) -> dict:
    import raytf

    if name in TWO_NODES:
        mode, transport, compression = TWO_NODES[name]
        extra = PLACEMENT + compression
    else:
        (mode, transport), extra = RAYTF[name], []
    summary = raytf.fit(base, address=address, restart=True, overrides=[  # each benchmark run starts over
        f"steps={steps}", f"distribution.mode={mode}", f"distribution.transport={transport}",
        f"output_dir={OUT / name}", *extra, *TRACE])
    workers = summary["per_worker"]
    return {
        "samples_per_second": summary["samples_per_second"],
        "transport": summary["transport"],
        "ms_compute_per_step": sum(w["ms_compute_per_step"] for w in workers) / len(workers),
        "ms_exchange_per_step": sum(w["ms_exchange_per_step"] for w in workers) / len(workers),
        **cpu_bound(summary),
    }


def cpu_bound(summary: dict) -> dict:
    """The CPU a round of one step per worker costs (every worker's process, and every server's for the
    updates such a round makes), in core-ms, and the samples/s this machine's cores could reach at that
    cost if they never idled: where the exchange's CPU (socket copies, updates) leaves no room."""
    workers, servers = summary["per_worker"], summary["per_server"]
    steps = sum(w["steps"] for w in workers)
    if not steps or not all(w.get("cpu_ms_per_step") for w in workers):
        return {}
    def per_round(kind: str) -> float:  # kind: "cpu" or "cpu_sys"
        return (sum(w[f"{kind}_ms_per_step"] for w in workers)
                + sum(s[f"{kind}_ms_per_update"] * s["version"] * len(workers) / steps for s in servers))

    round_ms = per_round("cpu")
    samples = len(workers) * summary["batch_size"]
    return {"cpu_ms_per_round": round_ms, "cpu_sys_ms_per_round": per_round("cpu_sys"),
            "cpu_bound_samples_per_second": (os.cpu_count() or 1) * 1000 / round_ms * samples}


def run_contender(base: dict, name: str, steps: int, address: str | None = None) -> dict:
    from raytf.config import config_from_dict

    if name in RAYTF or name in TWO_NODES:
        return run_raytf(base, name, steps, address)
    cfg = config_from_dict(base, [f"steps={steps}"])
    if name == WIRE_FLOOR:
        from examples import bench_baselines

        return bench_baselines.run_wire_floor(cfg, steps)
    if name in ("tf-ps", TWO_NODE_TF_PS):
        from examples import bench_tfps

        return bench_tfps.run_tf_ps(cfg, steps, across_nodes=name == TWO_NODE_TF_PS)
    from examples import bench_baselines

    return bench_baselines.run_ray_train(cfg, steps, str(OUT / "ray-train"))


class Protocol:
    """Runs R, C1, R, ..., Cn, R `repeats` times on the cluster this process is connected to, and
    records every measurement in `runs` (shared by both clusters, in order)."""

    def __init__(self, base: dict, steps: int, repeats: int, runs: list[dict]) -> None:
        self.base, self.steps, self.repeats, self.runs = base, steps, repeats, runs

    def run(self, cluster: str, names: list[str], address: str | None = None) -> None:
        from examples.bench_baselines import References
        from raytf.config import config_from_dict

        say(f"{cluster} cluster: starting the reference actors (ceiling, single-process)")
        references = References(config_from_dict(self.base, [f"steps={self.steps}"]))
        try:
            before = self._reference(references, cluster, 1)
            for repeat in range(1, self.repeats + 1):
                if not names and repeat > 1:
                    before = self._reference(references, cluster, repeat)
                for name in names:
                    at = len(self.runs)
                    self.runs.append(self._contender(name, cluster, repeat, address) | {"ref_before": before})
                    before = self._reference(references, cluster, repeat)
                    self.runs[at]["ref_after"] = before
        finally:
            references.close()

    def _reference(self, references, cluster: str, repeat: int) -> int:
        say(f"repeat {repeat}/{self.repeats}: references (ceiling, single-process) ...")
        t0 = time.perf_counter()
        results = references.measure(self.steps)
        for name, result in results.items():
            if "error" in result:
                say(f"reference {name} failed: {result['error']}")
        self.runs.append({"kind": "reference", "cluster": cluster, "repeat": repeat, "results": results,
                          "wall_seconds": time.perf_counter() - t0})
        return len(self.runs) - 1

    def _contender(self, name: str, cluster: str, repeat: int, address: str | None) -> dict:
        say(f"repeat {repeat}/{self.repeats}: {name} ...")
        t0 = time.perf_counter()
        try:
            row = run_contender(self.base, name, self.steps, address)
        except Exception as err:  # noqa: BLE001 - report it in the table and go on to the next contender
            row = {"error": f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"}
            say(f"{name} failed: {row['error']}")
        return {"kind": "contender", "name": name, "cluster": cluster, "repeat": repeat, **row,
                "wall_seconds": time.perf_counter() - t0}


def run_two_nodes(protocol: Protocol, names: list[str]) -> None:
    """The two-node contenders, on a cluster of their own (started once, stopped after), with the
    references measured around them on that cluster too."""
    import tempfile

    from raytf.cluster import local as local_cluster
    from raytf.cluster.connection import connect
    from tests.driver import multinode

    with tempfile.TemporaryDirectory(prefix="raytf-bench-") as root:
        cluster = multinode.start(Path(root))
        try:
            cluster.add_node("servers", num_cpus=1, resources={"bench_ps": 1})
            cluster.add_node("workers", num_cpus=2, resources={"bench_worker": 2})
            with local_cluster.token_auth(cluster.head), connect(address=cluster.address, on_event=say):
                protocol.run("two-node", names, address=cluster.address)
        finally:
            cluster.stop()


def run_two_nodes_shaped(protocol: Protocol, names: list[str], link: str) -> str | None:
    """The two-node contenders on two Ray nodes in two network namespaces joined by a shaped link:
    a driver inside the head's namespace runs them (and the references around them) and hands its
    measurements back. Returns how the link was shaped, or None when namespaces cannot be made here
    (the caller runs them on loopback)."""
    import tempfile

    from examples.netns import Link, NamespacesUnavailable
    from examples.netns_cluster import ShapedCluster

    try:
        cluster = ShapedCluster(Link.parse(link)).__enter__()
    except NamespacesUnavailable as err:
        say(f"--link {link}: {err}; the two-node contenders run on loopback instead")
        return None
    try:
        say(f"shaped two-node cluster up at {cluster.address}: {cluster.shaping}")
        with tempfile.TemporaryDirectory(prefix="raytf-bench-") as out:
            runs_path = Path(out) / "runs.json"
            argv = [sys.executable, str(Path(__file__).resolve()), "--steps", str(protocol.steps), "--repeats",
                    str(protocol.repeats), "--only", ",".join(names), "--in-cluster", cluster.address,
                    "--runs-out", str(runs_path), *(["--trace"] if TRACE else [])]
            done = cluster.run_in_head_namespace(argv, env={"PYTHONPATH": os.environ["PYTHONPATH"]})
            if done.returncode or not runs_path.exists():
                raise RuntimeError(f"the driver in the shaped cluster failed ({done.returncode})\n{cluster.log_tail()}")
            runs = json.loads(runs_path.read_text())
        offset = len(protocol.runs)  # its runs' references are indices into its own list
        for run in runs:
            for key in ("ref_before", "ref_after"):
                if key in run:
                    run[key] += offset
        protocol.runs.extend(runs)
        return cluster.shaping
    finally:
        cluster.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] + " " + __doc__.splitlines()[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--steps", type=int, default=300, help="training steps per run, contenders and references (default 300)")
    parser.add_argument("--repeats", type=int, default=3, help="times the whole R, C1, R, ..., Cn, R sequence runs (default 3)")
    parser.add_argument("--only", default=",".join(CONTENDERS),
                        help=f"comma-separated subset of {','.join(CONTENDERS)} (default: all); the references "
                             f"({', '.join(REFERENCE_NAMES)}) are measured anyway and may be named too")
    parser.add_argument("--json", type=Path, help="also write every raw run and the aggregates to this file")
    parser.add_argument("--link", help="RATE,DELAY, e.g. 1gbit,0.1ms: run the -2nodes contenders on two Ray nodes in two "
                                       "network namespaces joined by a link shaped with tc (needs root; else loopback)")
    parser.add_argument("--in-cluster", help=argparse.SUPPRESS)  # the driver inside the shaped cluster
    parser.add_argument("--runs-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true",
                        help="record raytf's timeline in every raytf run (costs a little); read it with "
                             "`raytf trace runs/benchmark/<contender>`")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONTENDERS and n not in REFERENCE_NAMES]
    if unknown or not names:
        import difflib

        hints = [f"{n!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(n, CONTENDERS + REFERENCE_NAMES, 1))
                 else repr(n) for n in unknown]
        print(f"benchmark.py: --only: unknown name(s) {', '.join(hints) or '(none given)'}; "
              f"choose from {', '.join(CONTENDERS + REFERENCE_NAMES)}", file=sys.stderr)  # one line, no usage dump
        return 2
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first is warm-up)")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.link:
        from examples.netns import Link

        try:
            Link.parse(args.link)
        except ValueError as err:
            parser.error(str(err))
    names = list(dict.fromkeys(n for n in names if n in CONTENDERS))  # in the order given, once each
    if args.trace:
        TRACE.extend(["trace.enabled=true", f"trace.max_steps={args.steps}"])

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import ray
    import tensorflow as tf
    import yaml

    from examples.bench_baselines import jit_setting
    from examples.bench_report import aggregate, ratio_table, table, versus_table
    from raytf.cluster.connection import connect
    from raytf.config import config_from_dict

    base = yaml.safe_load(CONFIG.read_text())
    started = time.perf_counter()
    runs: list[dict] = []
    protocol = Protocol(base, args.steps, args.repeats, runs)
    # Examples import from the repo root, in this process and in every actor.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)

    if args.in_cluster:  # inside the shaped cluster's head namespace (run_two_nodes_shaped)
        with connect(address=args.in_cluster, on_event=say):
            protocol.run("two-node", names, address=args.in_cluster)
        args.runs_out.write_text(json.dumps(runs))
        return 0
    one_node = [n for n in names if n not in TWO_NODES and n not in (TWO_NODE_TF_PS, WIRE_FLOOR)]
    two_nodes = [n for n in names if n in TWO_NODES or n in (TWO_NODE_TF_PS, WIRE_FLOOR)]
    if one_node or not two_nodes:
        # One cluster for every contender: the one `raytf up` started, else an embedded one for this run.
        with connect(on_event=say):
            protocol.run("one-node", one_node)
    shaped = None
    if two_nodes and args.link:
        shaped = run_two_nodes_shaped(protocol, two_nodes, args.link)
    if two_nodes and not shaped:
        run_two_nodes(protocol, two_nodes)

    aggregates = aggregate(runs, names)
    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpus": os.cpu_count(), "python": platform.python_version(), "tensorflow": tf.__version__, "ray": ray.__version__,
        "steps": args.steps, "repeats": args.repeats, "config": str(CONFIG.relative_to(REPO)),
        "total_seconds": time.perf_counter() - started, "jit_compile": jit_setting(config_from_dict(base)),
        "two_node_link": shaped or "loopback",
    }
    print(f"command: {meta['command']}\ndate: {meta['date']}\nCPUs: {meta['cpus']}, Python {meta['python']}, "
          f"TensorFlow {meta['tensorflow']}, Ray {meta['ray']}\n"
          f"model: {meta['config']} (jit_compile {meta['jit_compile']}), {args.steps} steps per run, "
          f"{args.repeats} repeat(s) of R, C1, R, ..., Cn, R; total {meta['total_seconds']:.0f} s\n"
          "ratio: contender samples/s over the larger reference (named), each reference the mean of the R "
          "just before and just after the run; spread: min–max, sd over the repeats\n")
    print(table(aggregates))
    if names:
        print()
        print(ratio_table(aggregates))
    for rival in ("tf-ps", TWO_NODE_TF_PS):  # TF's own strategy, the one a user would try first
        versus = versus_table(aggregates, rival) if rival in names else ""
        if versus:
            print()
            print(versus)
    if two_nodes:
        where = f"in two network namespaces joined by a link shaped as {shaped}" if shaped else "on loopback"
        print("\n[2-node cluster]: these contenders and the references around them ran on the second cluster "
              f"(two Ray nodes on this machine, {where}); their ratios are to those references.")
    for name, a in aggregates["contenders"].items():
        for error in dict.fromkeys(a["failed"]):
            print(f"\n{name} failed: {error}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**meta, "runs": runs, "aggregates": aggregates}, indent=2))
    return 1 if any(a["failed"] for a in aggregates["contenders"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
