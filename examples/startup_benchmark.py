"""Start-up of the digits example, cold (no cluster up) and warm (after `raytf up`), by phase.

    python examples/startup_benchmark.py [--runs 3] [--steps 20] [--repo DIR] [--vs OTHER_DIR]

Each run is the README's command as a user types it, `raytf train examples/digits.yaml` (shortened
with --set steps=N), in a process of its own with a private RAYTF_HOME. Cold runs start their own
embedded cluster; warm runs train on a cluster `raytf up` started before them. Printed: the median
of each start-up phase from the run's `summary.json` (`startup_breakdown`: seconds from the
command's start until the slowest worker finished its first step), and the whole command's wall
time measured from outside. `--repo DIR` runs another checkout of raytf (e.g. an older commit in a
git worktree) the same way; a version without `startup_breakdown` shows only its own
`startup_seconds` and the wall time. `--vs OTHER_DIR` measures a second checkout in the same
invocation, alternating runs of the two, and prints the ratio of their whole-command times.
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
    return {key: statistics.median(r[key] for r in rows if key in r) for key in rows[0]}


def measure(repos: list[Path], runs: int, steps: int, tmp: Path) -> list[dict[str, dict]]:
    """Per checkout: {"cold": medians, "warm": medians}. With two checkouts the runs alternate
    (A, B, A, B, ...), so a drift of the machine's speed hits both alike."""
    homes = [tmp / f"home-{i}" for i in range(len(repos))]
    cold: list[list[dict]] = [[] for _ in repos]
    warm: list[list[dict]] = [[] for _ in repos]
    for n in range(runs):
        for i, repo in enumerate(repos):
            cold[i].append(train(repo, homes[i], tmp / f"runs-{i}" / f"cold-{n}", steps))
    for i, repo in enumerate(repos):
        raytf(repo, homes[i], "up")
    try:
        for i, repo in enumerate(repos):
            train(repo, homes[i], tmp / f"runs-{i}" / "warm-up", steps)  # a new cluster's first run is not warm yet
        for n in range(runs):
            for i, repo in enumerate(repos):
                warm[i].append(train(repo, homes[i], tmp / f"runs-{i}" / f"warm-{n}", steps))
    finally:
        for i, repo in enumerate(repos):
            raytf(repo, homes[i], "down")
    return [{"cold": median_row(cold[i]), "warm": median_row(warm[i])} for i in range(len(repos))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each kind (default 3)")
    parser.add_argument("--steps", type=int, default=20, help="training steps per run (default 20)")
    parser.add_argument("--repo", type=Path, default=HERE, help="the raytf checkout to run (default: this one)")
    parser.add_argument("--vs", type=Path, help="a second checkout to compare, run alternately with the first")
    args = parser.parse_args()
    repos = [args.repo.resolve()] + ([args.vs.resolve()] if args.vs else [])
    with tempfile.TemporaryDirectory(prefix="raytf-startup-") as tmp:
        results = measure(repos, args.runs, args.steps, Path(tmp))
    print(f"digits, {args.steps} steps, {args.runs} runs of each kind; medians in seconds")
    for i, repo in enumerate(repos):
        print(f"  {'AB'[i]}: {repo}")
    header = "".join(f"{f'{kind} {ab}':>10}" for kind in ("cold", "warm") for ab in "AB"[: len(repos)])
    print(f"{'phase':<20}{header}")
    keys = [p for p in PHASES if p in results[0]["cold"]] + ["wall"]
    for key in keys:
        label = "start-up (total)" if key == "total" else ("whole command" if key == "wall" else key)
        cells = "".join(f"{r[kind].get(key, float('nan')):>10.2f}" for kind in ("cold", "warm") for r in results)
        print(f"{label:<20}{cells}")
    if len(results) == 2:
        for kind in ("cold", "warm"):
            a, b = results[0][kind]["wall"], results[1][kind]["wall"]
            print(f"whole command, {kind}: A/B = {a / b:.2f}")


if __name__ == "__main__":
    main()
