"""Start-up of the digits example, cold (no cluster up), warm (after `raytf up --warm 0`: no pool) and
pool (after `raytf up`, whose warm pool has TensorFlow imported), by phase.

    python examples/startup_benchmark.py [--runs 3] [--steps 20] [--full] [--repo DIR] [--vs OTHER_DIR]

Each run is the README's command as a user types it, `raytf train examples/digits.yaml` (shortened
with --set steps=N; `--full` keeps the config's 600 steps), in a process of its own with a private
RAYTF_HOME. Cold runs start their own embedded cluster; warm and pool runs train on clusters `raytf up`
started before them (both up at once; idle, they take no CPU). The kinds alternate run by run
(cold, warm, pool, cold, ...), so a drift of the machine's speed hits all alike. Printed: the median
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
PHASES = ("command", "cluster_start", "driver_imports", "driver_model_build", "connect", "pool_take", "pool_model_check", "actor_processes",
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


KINDS = ("cold", "warm", "pool")


def train(repo: Path, home: Path, out: Path, steps: int | None) -> dict:
    shorter = ["--set", f"steps={steps}"] if steps else []
    wall, _ = raytf(repo, home, "train", "examples/digits.yaml", "--plain", *shorter, "--set", f"output_dir={out}")
    summary = json.loads((out / "summary.json").read_text())
    row = dict(summary.get("startup_breakdown") or {"total": summary["startup_seconds"]})
    row.pop("timeline", None)
    row["wall"] = wall
    row["pool actors"] = summary.get("warm_pool", {}).get("hosted", 0)
    return row


def median_row(rows: list[dict]) -> dict:
    return {key: statistics.median(r[key] for r in rows if key in r) for key in rows[0]}


def wait_for_pool(repo: Path, home: Path, timeout: float = 180.0) -> None:
    """Until `raytf status` shows no pool process still importing TensorFlow."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, status = raytf(repo, home, "status")
        if "warm pool" in status.stdout and "importing" not in status.stdout:
            return
        time.sleep(1.0)
    sys.exit(f"the warm pool of {home} did not get ready in {timeout:.0f} s")


def has_pool(repo: Path) -> bool:
    """Whether that checkout of raytf has the warm pool (older ones measure cold and warm only)."""
    return (repo / "raytf" / "pool").is_dir()


def measure(repos: list[Path], runs: int, steps: int | None, tmp: Path) -> list[dict[str, dict]]:
    """Per checkout: {"cold": medians, "warm": medians, "pool": medians}, the runs alternating over
    kinds and checkouts."""
    homes = {(i, kind): tmp / f"home-{i}-{kind}" for i in range(len(repos)) for kind in KINDS
             if kind != "pool" or has_pool(repos[i])}
    rows: dict[tuple[int, str], list[dict]] = {key: [] for key in homes}
    try:
        for i, repo in enumerate(repos):
            raytf(repo, homes[i, "warm"], "up", *(["--warm", "0"] if has_pool(repo) else []))
            if (i, "pool") in homes:
                raytf(repo, homes[i, "pool"], "up")
                wait_for_pool(repo, homes[i, "pool"])
            for kind in ("warm", "pool"):  # a new cluster's first run is not warm yet
                if (i, kind) in homes:
                    train(repo, homes[i, kind], tmp / f"runs-{i}" / f"{kind}-first", steps)
        for n in range(runs):
            for kind in KINDS:
                for i, repo in enumerate(repos):
                    if (i, kind) in homes:
                        rows[i, kind].append(train(repo, homes[i, kind], tmp / f"runs-{i}" / f"{kind}-{n}", steps))
    finally:
        for (i, kind), home in homes.items():
            if kind != "cold":
                raytf(repos[i], home, "down")
    return [{kind: median_row(rows[i, kind]) if rows.get((i, kind)) else {} for kind in KINDS} for i in range(len(repos))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each kind (default 3)")
    parser.add_argument("--steps", type=int, default=20, help="training steps per run (default 20)")
    parser.add_argument("--full", action="store_true", help="train the config's own 600 steps (the whole command as the README runs it)")
    parser.add_argument("--repo", type=Path, default=HERE, help="the raytf checkout to run (default: this one)")
    parser.add_argument("--vs", type=Path, help="a second checkout to compare, run alternately with the first")
    args = parser.parse_args()
    repos = [args.repo.resolve()] + ([args.vs.resolve()] if args.vs else [])
    with tempfile.TemporaryDirectory(prefix="raytf-startup-") as tmp:
        results = measure(repos, args.runs, None if args.full else args.steps, Path(tmp))
    print(f"digits, {600 if args.full else args.steps} steps, {args.runs} runs of each kind; medians in seconds")
    for i, repo in enumerate(repos):
        print(f"  {'AB'[i]}: {repo}")
    header = "".join(f"{f'{kind} {ab}':>10}" for kind in KINDS for ab in "AB"[: len(repos)])
    print(f"{'phase':<20}{header}")
    keys = [p for p in PHASES if any(p in results[0][kind] for kind in KINDS)] + ["wall", "pool actors"]
    for key in keys:
        label = "start-up (total)" if key == "total" else ("whole command" if key == "wall" else key)
        cells = "".join(f"{r[kind].get(key, float('nan')):>10.2f}" for kind in KINDS for r in results)
        print(f"{label:<20}{cells}")
    if len(results) == 2:
        for kind in KINDS:
            if results[0][kind] and results[1][kind]:
                a, b = results[0][kind]["wall"], results[1][kind]["wall"]
                print(f"whole command, {kind}: A/B = {a / b:.2f}")


if __name__ == "__main__":
    main()
