"""Sparse embedding tables against the whole-table exchange, in one run.

    python examples/recsys_benchmark.py [--steps 200] [--dense-steps 20] [--json runs/recsys.json]
    python examples/recsys_benchmark.py --huge       # also: a 10,000,000-row ShardedEmbedding
    python examples/recsys_benchmark.py --against-ceiling [--repeats 3] [--steps 2000]

The click model of examples/recsys.py (a 1,000,000 x 64 item table, 256 MB; 20 ids per example;
batch 256; 2 workers; 1 parameter server; sync SGD; no shuffling) trained with `sparse.tables: auto`
(rows sharded, only touched rows travel) and `none` (the whole table every step), on one local
cluster. Printed: steady-state samples/s, bytes per worker-step each way, distinct ids per step,
peak resident memory of the actors, and the final losses over the steps both ran (they must agree:
the same model either way). `--huge` adds a 10,000,000 x 64 `ShardedEmbedding` (2.56 GB, plus its
Adagrad slot) on 2 servers and 2 workers: no worker ever holds that table. It prints numbers; it
judges none.

`--against-ceiling` measures instead, as examples/benchmark.py does, raytf sync and async with rows
and TensorFlow's ParameterServerStrategy on the same model (examples/bench_tfps.py: the item table a
variable on the ps cut by the strategy's `variable_partitioner`, looked up row by row; asynchronous,
as that strategy trains) against a no-exchange reference interleaved around each run (R, sync, R,
async, R, tf-ps, R, ..., `--repeats` times): 2 Ray actors each training the same model with the whole
table local and Keras SGD's sparse update (examples/bench_baselines.IndependentTrainer), once
XLA-compiled and once as a graph, the faster of the two being the reference; a run's ratio is its
samples/s over the mean of the R before and after it. `--dynamic` adds sync and async with the item
table a `raytf.layers.DynamicEmbedding` over the same ids (rows made on first touch); `--strings` those and
sync and async with the items named ("item-<id>") in a `DynamicEmbedding(key_dtype="string")`; `--files` sync and
async reading the same examples from Parquet files (runs/data/recsys, written on first use), by raytf
and through Ray Data. Before each R, short reference runs are
repeated until two agree within 10 % (a contender's processes leave the machine slow for seconds).
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
sys.path.insert(0, str(REPO))
OUT = REPO / "runs" / "recsys-benchmark"
MB = 2**20


def config(name: str, steps: int, **changes) -> dict:
    base = {
        "name": name,
        "model": "examples.recsys:build_model",
        "data": {"train": "examples.recsys:train_examples", "eval": "examples.recsys:eval_examples", "shuffle_buffer": 0},
        "loss": "binary_crossentropy",
        "metrics": ["accuracy"],
        "optimizer": {"name": "sgd", "learning_rate": 0.5},
        "batch_size": 256,
        "steps": steps,
        "distribution": {"parameter_servers": 1, "workers": 2, "mode": "sync"},
        "checkpoint": {"every_steps": 0},
        "output_dir": str(OUT / name),
    }
    for key, value in changes.items():
        node = base
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return base


def run(cfg: dict) -> dict:
    import raytf

    summary = raytf.fit(cfg, restart=True)
    return {
        "samples_per_second": summary["samples_per_second"],
        "bytes_pushed_per_step": summary["bytes_per_worker_step"]["pushed"],
        "bytes_pulled_per_step": summary["bytes_per_worker_step"]["pulled"],
        "unique_ids_per_step": summary["sparse"]["unique_ids_per_step"],
        "peak_rss_workers": summary["peak_rss_bytes"]["workers"],
        "peak_rss_servers": summary["peak_rss_bytes"]["servers"],
        "final_loss": summary["final_loss"],
        "eval": summary["eval"],
        "train_seconds": summary["train_seconds"],
        "tables": summary["sparse"]["tables"],
    }


def line(name: str, r: dict) -> str:
    return (f"| {name} | {r['samples_per_second']:,.0f} | {r['bytes_pushed_per_step'] / MB:,.2f} / "
            f"{r['bytes_pulled_per_step'] / MB:,.2f} | {r['unique_ids_per_step']:,.0f} | "
            f"{max(r['peak_rss_workers']) / MB:,.0f} | {max(r['peak_rss_servers']) / MB:,.0f} | "
            f"{r['final_loss']:.4f} | {r['train_seconds']:.1f} |")


class Ceiling:
    """The no-exchange reference: per compile mode, 2 actors with the whole table (no logical CPUs
    held, so raytf's actors are scheduled beside them; they use CPU only while measured)."""

    def __init__(self, cfg: dict) -> None:
        import ray

        from examples.bench_baselines import IndependentTrainer
        from raytf.config import TrainConfig

        self.sets = {}
        for mode, jit in (("xla", True), ("graph", False)):
            settings = TrainConfig.model_validate(cfg | {"jit_compile": jit}).to_dict()
            actors = [ray.remote(num_cpus=0)(IndependentTrainer).remote() for _ in range(2)]
            ray.get([a.setup.remote(settings, i, 2) for i, a in enumerate(actors)])
            self.sets[mode] = actors
        self.measure(20)  # first-run costs (tracing, XLA) not recorded

    def measure(self, steps: int) -> dict:
        """samples/s per mode; graph mode (~30x slower than XLA here) runs a tenth of the steps, so a
        measurement takes about as long in both."""
        import ray

        result = {mode: sum(r["samples_per_second"] for r in ray.get(
                      [a.run.remote(steps if mode == "xla" else max(20, steps // 10)) for a in actors]))
                  for mode, actors in self.sets.items()}
        return result | {"best": max(result.values())}

    def settle(self, steps: int, tolerance: float = 0.1, tries: int = 6) -> int:
        """Short discarded measurements until two in a row agree within `tolerance`: right after a
        contender (tf-ps most) the reference ran at half its speed for several seconds, which made
        the R after it, and so that contender's and the next one's ratio, unfair. Returns the tries."""
        last = self.measure(steps)["best"]
        for attempt in range(1, tries):
            now = self.measure(steps)["best"]
            if abs(now - last) <= tolerance * max(now, last):
                return attempt + 1
            last = now
        return tries

    def close(self) -> None:
        import ray

        for actors in self.sets.values():
            for actor in actors:
                ray.kill(actor)


CONTENDERS = ("raytf sync", "raytf async", "tf-ps")
DYNAMIC = ("raytf sync dynamic", "raytf async dynamic")  # --dynamic: the same ids in a DynamicEmbedding
STRINGS = ("raytf sync strings", "raytf async strings")  # --strings: the items named, string keys
# --files: the same examples read from Parquet files by raytf, and through Ray Data
FILES = ("raytf sync files", "raytf async files", "raytf sync ray-data", "raytf async ray-data")


def file_data(ray_data: bool = False) -> dict:
    """data.train/data.eval as Parquet files of the same examples (examples.recsys.write_parquet, under
    the repository's runs/data/recsys); with `ray_data`, data.train reads them through Ray Data."""
    from examples.recsys import PARQUET_DIR, write_parquet

    write_parquet(str(REPO / PARQUET_DIR))
    spec = {"format": "parquet", "label": "clicked"}
    train = ({"format": "ray_data", "dataset": "examples.recsys:ray_train_dataset", "label": "clicked"} if ray_data
             else {**spec, "paths": str(REPO / PARQUET_DIR / "train-*.parquet")})
    return {"train": train, "eval": {**spec, "paths": str(REPO / PARQUET_DIR / "eval.parquet")}, "shuffle_buffer": 0}


def contender(name: str, steps: int) -> dict:
    if name.endswith((" files", " ray-data")):
        mode, source = name.split()[1:]
        return run(config(f"recsys-{source}-{mode}", steps, data=file_data(source == "ray-data"),
                          **{"distribution.mode": mode}))
    if name.endswith(" strings"):
        mode = name.split()[1]
        return run(config(f"recsys-strings-{mode}", steps, model="examples.recsys:build_string_model",
                          **{"data.train": "examples.recsys:string_train_examples",
                             "data.eval": "examples.recsys:string_eval_examples", "distribution.mode": mode}))
    if name.endswith(" dynamic"):
        mode = name.split()[1]
        return run(config(f"recsys-dynamic-{mode}", steps, model="examples.recsys:build_dynamic_model",
                          **{"distribution.mode": mode}))
    if name == "tf-ps":
        from examples.bench_tfps import run_tf_ps
        from raytf.config import TrainConfig

        return run_tf_ps(TrainConfig.model_validate(config("recsys-tf-ps", steps)), steps)
    mode = name.split()[-1]
    return run(config(f"recsys-rows-{mode}", steps, **{"distribution.mode": mode}))


def against_ceiling(steps: int, repeats: int, contenders: tuple[str, ...] = CONTENDERS) -> list[dict]:
    """R, sync, R, async, R, tf-ps, R ... `repeats` times; every run with the R before and after it."""
    ceiling = Ceiling(config("recsys-ceiling", steps))
    runs: list[dict] = []
    try:
        before = ceiling.measure(steps)
        print(f"[recsys] R {before}", file=sys.stderr, flush=True)
        for repeat in range(repeats):
            for name in contenders:
                try:
                    result = contender(name, steps)
                except Exception as err:  # noqa: BLE001 - report it and go on to the next contender
                    print(f"[recsys] {name} failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
                    continue
                settled = ceiling.settle(max(60, steps // 4))
                after = ceiling.measure(steps)
                reference = (before["best"] + after["best"]) / 2
                runs.append({"contender": name, "repeat": repeat + 1, **result, "reference": reference,
                             "ratio": result["samples_per_second"] / reference, "R_before": before, "R_after": after})
                print(f"[recsys] {name}: {result['samples_per_second']:,.0f} samples/s, R {after} (settled after "
                      f"{settled} short runs), ratio {runs[-1]['ratio']:.3f}", file=sys.stderr, flush=True)
                before = after
    finally:
        ceiling.close()
    return runs


def stream_line(steps: int) -> str:
    """One run of the flood of new keys (examples/recsys_dynamic.py) as a table row."""
    import raytf
    from examples.recsys_dynamic import IDS_PER_EXAMPLE

    cfg = {"name": f"recsys-flood-{steps}", "model": "examples.recsys_dynamic:build_flood_model",
           "data": {"train": "examples.recsys_dynamic:flood_train_examples",
                    "eval": "examples.recsys_dynamic:eval_examples", "shuffle_buffer": 0},
           "loss": "binary_crossentropy", "optimizer": {"name": "adam", "learning_rate": 0.01}, "batch_size": 256,
           "steps": steps, "distribution": {"parameter_servers": 2, "workers": 2, "mode": "async"},
           "checkpoint": {"every_steps": 0}, "output_dir": str(OUT / f"flood-{steps}")}
    summary = raytf.fit(cfg, restart=True)
    (table,) = summary["sparse"]["tables"]
    looked_up = steps * 2 * 256 * IDS_PER_EXAMPLE
    # Keys seen: every admitted key was created (and seen at least twice); a key not admitted was seen once or
    # more (its sightings bound it from above); so seen is between created and created + not_admitted.
    seen = table["created"] + table["not_admitted"]
    rss = " / ".join(f"{b / MB:,.0f}" for b in summary["peak_rss_bytes"]["servers"])
    return (f"| {steps:,} | {looked_up:,} | <= {seen:,} | {table['live']:,} / {table['created']:,} / {table['evicted']:,} | "
            f"{table['not_admitted']:,} | {rss} | {summary['samples_per_second']:,.0f} |")


def repeats_of(runs: list[dict], name: str) -> int:
    return max(1, sum(1 for r in runs if r["contender"] == name))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="steps of the sparse run (default 200)")
    parser.add_argument("--dense-steps", type=int, default=20, help="steps of the whole-table run (default 20)")
    parser.add_argument("--huge", action="store_true", help="also train the 10,000,000-row ShardedEmbedding")
    parser.add_argument("--huge-steps", type=int, default=100)
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--against-ceiling", action="store_true",
                        help="raytf sync and async with rows, and tf-ps, against the interleaved no-exchange reference")
    parser.add_argument("--repeats", type=int, default=3,
                        help="--against-ceiling: rounds of R, sync, R, async, R, tf-ps (default 3)")
    parser.add_argument("--stream", type=int, nargs="+", metavar="STEPS",
                        help="only the flood of new keys (examples/recsys_dynamic.py: half of all ids new, admitted at "
                             "their second sighting, 50,000 rows at most), once per number of steps given: keys seen, "
                             "rows live/created/evicted and the servers' peak memory, to show it stays flat")
    parser.add_argument("--dynamic", action="store_true",
                        help="--against-ceiling: also sync and async with the table a DynamicEmbedding (same ids)")
    parser.add_argument("--strings", action="store_true",
                        help="with --against-ceiling: also the items as string keys (and the int64 DynamicEmbedding runs)")
    parser.add_argument("--files", action="store_true",
                        help="--against-ceiling: also sync and async reading the same examples from Parquet files "
                             "(data.train a file spec, and a Ray Data dataset) instead of the in-memory function")
    args = parser.parse_args(argv)
    from raytf.cluster.connection import connect

    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    os.chdir(REPO)  # examples.recsys writes and reads its Parquet files under runs/data/recsys, from here
    started = time.perf_counter()
    results = {}
    if args.stream:
        with connect(on_event=lambda m: print(f"[recsys] {m}", file=sys.stderr, flush=True)):
            print("| steps | ids looked up | keys seen (about) | rows live / created / evicted | sightings not admitted | "
                  "peak RSS per server MB | samples/s |")
            print("|---:|---:|---:|---|---:|---|---:|")
            for steps in args.stream:
                print(stream_line(steps), flush=True)
        return 0
    if args.against_ceiling:
        with connect(on_event=lambda m: print(f"[recsys] {m}", file=sys.stderr, flush=True)):
            names = (CONTENDERS + (DYNAMIC if args.dynamic or args.strings else ()) + (STRINGS if args.strings else ())
                     + (FILES if args.files else ()))
            runs = against_ceiling(args.steps, args.repeats, names)
        print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}\n"
              f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}, CPUs: {os.cpu_count()}, "
              f"total {time.perf_counter() - started:.0f} s\n")
        print("| contender | samples/s mean | ratio mean | ratio spread | reference (faster of XLA, graph) mean |")
        print("|---|---:|---:|---|---:|")
        for name in names:
            mine = [r for r in runs if r["contender"] == name]
            if not mine:
                print(f"| {name} | failed | - | - | - |")
                continue
            ratios = [r["ratio"] for r in mine]
            print(f"| {name} | {sum(r['samples_per_second'] for r in mine) / len(mine):,.0f} | "
                  f"{sum(ratios) / len(ratios):.3f} | {min(ratios):.3f}-{max(ratios):.3f} | "
                  f"{sum(r['reference'] for r in mine) / len(mine):,.0f} |")
        mean = {name: sum(r["samples_per_second"] for r in runs if r["contender"] == name) / repeats_of(runs, name)
                for name in CONTENDERS}
        if mean["tf-ps"]:
            print(f"\nraytf sync / tf-ps samples/s: {mean['raytf sync'] / mean['tf-ps']:.2f}x; "
                  f"raytf async / tf-ps: {mean['raytf async'] / mean['tf-ps']:.2f}x")
        for extra, label, base in ((DYNAMIC, "DynamicEmbedding / fixed table", CONTENDERS),
                                   (STRINGS, "string keys / int64 keys (both DynamicEmbedding)", DYNAMIC),
                                   (FILES[:2], "Parquet files / in-memory function", CONTENDERS),
                                   (FILES[2:], "Ray Data / in-memory function", CONTENDERS)):
            for mode in ("sync", "async"):
                mine = [r for r in runs if r["contender"] in extra and r["contender"].split()[1:2] == [mode]]
                against = [r for r in runs if r["contender"] in base and r["contender"].split()[1:2] == [mode]]
                if mine and against:
                    ratio = (sum(r["samples_per_second"] for r in mine) / len(mine)
                             / (sum(r["samples_per_second"] for r in against) / len(against)))
                    print(f"{label}, {mode}: {ratio:.2f}x")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(runs, indent=2))
        return 0
    with connect(on_event=lambda m: print(f"[recsys] {m}", file=sys.stderr, flush=True)):
        # The same number of steps first, for the losses; then the sparse run's longer steady state.
        results["rows, same steps"] = run(config("recsys-rows-short", args.dense_steps))
        results["whole table"] = run(config("recsys-whole", args.dense_steps, **{"sparse.tables": "none"}))
        results["rows"] = run(config("recsys-rows", args.steps))
        if args.huge:
            results["10M ShardedEmbedding"] = run(config(
                "recsys-huge", args.huge_steps, model="examples.recsys:build_huge_model",
                **{"data.train": "examples.recsys:huge_train_examples", "data.eval": "examples.recsys:huge_eval_examples",
                   "distribution.parameter_servers": 2, "optimizer": {"name": "adagrad", "learning_rate": 0.1}}))
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}\n"
          f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}, CPUs: {os.cpu_count()}, "
          f"total {time.perf_counter() - started:.0f} s\n")
    print("| exchange | samples/s | MB pushed / pulled per worker-step | distinct ids per step | peak RSS worker MB "
          "| peak RSS server MB | final loss | train s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(line(name, r))
    rows, whole = results["rows"], results["whole table"]
    print(f"\nrows / whole table samples/s: {rows['samples_per_second'] / whole['samples_per_second']:.1f}x")
    same = results["rows, same steps"]
    print(f"final loss after {args.dense_steps} steps: rows {same['final_loss']:.6f}, whole table "
          f"{whole['final_loss']:.6f} (difference {abs(same['final_loss'] - whole['final_loss']):.2e})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
