"""Eval accuracy of the wire's compression settings, against `none`, on the same model and seed.

    python examples/compression_accuracy.py                       # digits, 400 steps, sync
    python examples/compression_accuracy.py --config examples/mlp_benchmark.yaml --steps 300
    python examples/compression_accuracy.py --mode async --json runs/compression.json

Every run uses `distribution.transport: wire` (compression applies to wire pairs only), on one
local Ray cluster started once. Settings: none, bf16 both ways, int8 pushes (always with error
feedback in raytf) and bf16 pulls, int8 both ways. It prints each setting's eval metrics and their difference to
`none`; it judges nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `examples.*` importable when run as a script, here and in the actors

SETTINGS = {
    "none": ("none", "none"),
    "bf16": ("bf16", "bf16"),
    "int8+ef": ("int8", "bf16"),
    "int8 both": ("int8", "int8"),  # pulls: the parameters' changes, the error kept on the server
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "examples" / "digits.yaml"))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--mode", default="sync", choices=["sync", "async", "ssp"])
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    import os

    import yaml

    import raytf
    from raytf.cluster.connection import connect

    base = yaml.safe_load(Path(args.config).read_text())
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    results = {}
    # One cluster for every setting: the one `raytf up` started, else an embedded one for this run.
    with connect(on_event=lambda m: print(f"[compression] {m}", file=sys.stderr, flush=True)):
        for name, (push, pull) in SETTINGS.items():
            print(f"[compression] {name} ...", file=sys.stderr, flush=True)
            summary = raytf.fit(base, restart=True, overrides=[
                f"steps={args.steps}", f"distribution.mode={args.mode}", "distribution.transport=wire",
                f"distribution.compression.push={push}", f"distribution.compression.pull={pull}",
                f"output_dir={REPO / 'runs' / 'compression' / name}"])
            results[name] = {"eval": summary["eval"], "final_loss": summary["final_loss"],
                             "samples_per_second": summary["samples_per_second"], "transport": summary["transport"]}
    base = results["none"]["eval"]
    print(f"{Path(args.config).name}, {args.steps} steps, {args.mode}, transport wire")
    print(f"{'setting':10} " + " ".join(f"{k:>12}" for k in base) + f" {'vs none':>22} {'samples/s':>10}")
    for name, result in results.items():
        diff = ", ".join(f"{k} {result['eval'][k] - base[k]:+.4f}" for k in base)
        print(f"{name:10} " + " ".join(f"{v:12.4f}" for v in result["eval"].values())
              + f" {diff:>22} {result['samples_per_second']:10,.0f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
