"""Writes checkpoints in a loop, as servers and the driver do, printing each step once its
manifest is in. tests/driver/test_checkpoint.py SIGKILLs it mid-write.

    python -m tests.driver.checkpoint_writer OUTPUT_DIR
"""

from __future__ import annotations

import sys

import numpy as np

from raytf.driver.checkpoints import build_manifest, write_manifest
from raytf.exchange.shard_state import ShardState, root_of, step_dir, write_shard
from raytf.exchange.sharding import VariableSpec, plan_shards

# Two big shards, so a kill usually lands inside a write.
PLAN = plan_shards([VariableSpec("a", (4_000_000,)), VariableSpec("b", (4_000_000,))], 2)


def state_at(step: int, shard: int) -> ShardState:
    size = PLAN.shards[shard].size
    return ShardState(params=np.full(size, step + shard / 10, np.float32),
                      slots={"m": np.full(size, -step, np.float32)}, iterations=step, version=step)


def main(output_dir: str) -> None:
    root = root_of(output_dir)
    for step in range(1, 1000):
        directory = step_dir(root, step)
        saved = [write_shard(directory, j, state_at(step, j)) for j in range(len(PLAN.shards))]
        write_manifest(directory, build_manifest(step, PLAN, saved, mode="sync", updates_per_step=1,
                                                 optimizer="adam", run_id="writer"))
        print(step, flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
