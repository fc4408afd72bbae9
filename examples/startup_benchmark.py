"""Start-up of the digits example, cold (no cluster up) and warm (after `raytf up`), by phase.

    python examples/startup_benchmark.py [--runs 3] [--steps 20] [--repo DIR]

Each run is the README's command as a user types it, `raytf train examples/digits.yaml` (shortened
with --set steps=N), in a process of its own with a private RAYTF_HOME. Cold runs start their own
embedded cluster; warm runs train on a cluster `raytf up` started before them. Printed: the median
of each start-up phase from the run's `summary.json` (`startup_breakdown`: seconds from the
command's start until the slowest worker finished its first step), and the whole command's wall
time measured from outside. `--repo DIR` runs another checkout of raytf (e.g. an older commit in a
git worktree) the same way; a version without `startup_breakdown` shows only its own
`startup_seconds` and the wall time. Numbers drift between runs of the machine: compare versions
in one invocation each, back to back.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
PHASES = ("command", "cluster_start", "driver_imports", "driver_model_build", "connect", "actor_processes",
          "actor_imports", "actor_model_build", "first_pull", "first_compile", "total")


def raytf(repo: Path, home: Path, *args: str, timeout: float = 900) -> tuple[float, subprocess.CompletedProcess]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAYTF_HOME=str(home), PYTHONPATH=str(repo))
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "raytf.cli", *args], cwd=repo, env=env, capture_output=True,
                            text=True, timeout=timeout)
    if result.returncode != 0:
        sys.exit(f"raytf {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return time.perf_counter() - started, result


def train(repo: Path, home: Path, out: Path, steps: int) -> dict:
    wall, _ = raytf(repo, home, "train", "examples/digits.yaml", "--plain", "--set", f"steps={steps}",
                    "--set", f"output_dir={out}")
    summary = json.loads((out / "summary.json").read_text())
    row = dict(summary.get("startup_breakdown") or {"total": summary["startup_seconds"]})
    row.pop("timeline", None)
    row["wall"] = wall
    return row


def median_row(rows: list[dict]) -> dict:
    return {key: statistics.median(r[key] for r in rows) for key in rows[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each kind (default 3)")
    parser.add_argument("--steps", type=int, default=20, help="training steps per run (default 20)")
    parser.add_argument("--repo", type=Path, default=HERE, help="the raytf checkout to run (default: this one)")
    args = parser.parse_args()
    repo = args.repo.resolve()
    with tempfile.TemporaryDirectory(prefix="raytf-startup-") as tmp:
        home, runs = Path(tmp) / "home", Path(tmp) / "runs"
        cold = [train(repo, home, runs / f"cold-{i}", args.steps) for i in range(args.runs)]
        up_seconds, _ = raytf(repo, home, "up")
        try:
            train(repo, home, runs / "warm-up", args.steps)  # the first run on a new cluster is not "warm" yet
            warm = [train(repo, home, runs / f"warm-{i}", args.steps) for i in range(args.runs)]
        finally:
            raytf(repo, home, "down")
    cold_m, warm_m = median_row(cold), median_row(warm)
    print(f"raytf at {repo}; digits, {args.steps} steps, {args.runs} runs each; medians in seconds "
          f"(`raytf up` itself took {up_seconds:.1f} s)")
    print(f"{'phase':<20}{'cold':>8}{'warm':>8}")
    for key in [p for p in PHASES if p in cold_m] + ["wall"]:
        label = "start-up (total)" if key == "total" else ("whole command" if key == "wall" else key)
        print(f"{label:<20}{cold_m[key]:>8.2f}{warm_m.get(key, float('nan')):>8.2f}")


if __name__ == "__main__":
    main()
