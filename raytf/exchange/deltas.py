"""Delta export of dynamic tables, for an online serving store that follows training.

With `checkpoint.deltas: true`, every checkpoint directory (`step-XXXXXXXX/`) also holds, per
server, `delta-ps-<i>.npz`: for each dynamic table `k` (the manifest's `tables[k]`), what changed on
that server since its previous checkpoint, as three columns:

    table<k>.key  int64 (n,)        the key
    table<k>.op   int8  (n,)        0: upsert (the key's row is `row`), 1: delete (the key was evicted)
    table<k>.row  float32 (n, width) the row at this checkpoint (zeros for a delete)

Deletes come first, then upserts, so a key evicted and created again in one interval ends up present.
The full snapshot is the checkpoint itself (`ps-<i>.npz`: `table<k>.keys`, `table<k>.params`).
`replay` applies deltas to a table; `read_table` rebuilds a table from the oldest checkpoint kept and
the deltas of every later one (what a serving store would have after following them), and
`snapshot` reads one checkpoint's table whole.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

UPSERT, DELETE = 0, 1
DELTA_PREFIX = "delta-ps-"


def delta_arrays(k: int, upsert_keys: np.ndarray, upsert_rows: np.ndarray, deleted: np.ndarray) -> dict:
    """Table `k`'s columns for one delta file."""
    width = upsert_rows.shape[1]
    return {
        f"table{k}.key": np.concatenate([deleted, upsert_keys]).astype(np.int64),
        f"table{k}.op": np.concatenate([np.full(len(deleted), DELETE, np.int8), np.full(len(upsert_keys), UPSERT, np.int8)]),
        f"table{k}.row": np.concatenate([np.zeros((len(deleted), width), np.float32), upsert_rows]).astype(np.float32),
    }


def replay(table: dict[int, np.ndarray], key: np.ndarray, op: np.ndarray, row: np.ndarray) -> None:
    """Apply one delta's columns to `table` (key -> row), in order."""
    for k, o, r in zip(key.tolist(), op.tolist(), row):
        if o == DELETE:
            table.pop(k, None)
        else:
            table[k] = r


def _steps(output_dir: Path) -> list[Path]:
    """Complete checkpoints (with a manifest), oldest first."""
    root = Path(output_dir) / "checkpoints"
    return sorted(d for d in root.glob("step-*") if (d / "manifest.json").exists())


def _table_index(directory: Path, layer: str) -> int:
    tables = json.loads((directory / "manifest.json").read_text()).get("tables", [])
    names = [t["layer"] for t in tables]
    if layer not in names:
        raise KeyError(f"checkpoint {directory} has no table '{layer}' (its tables: {', '.join(names) or 'none'})")
    return names.index(layer)


def snapshot(directory: Path, layer: str) -> dict[int, np.ndarray]:
    """A dynamic table as one checkpoint holds it: key -> row, over every server's shard."""
    k = _table_index(directory, layer)
    table: dict[int, np.ndarray] = {}
    for shard in sorted(directory.glob("ps-*.npz")):
        with np.load(shard) as data:
            table.update(zip(data[f"table{k}.keys"].tolist(), data[f"table{k}.params"]))
    return table


def read_table(output_dir: str | Path, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """(keys sorted, rows): the oldest checkpoint kept, then every later checkpoint's deltas in order."""
    steps = _steps(Path(output_dir))
    if not steps:
        raise FileNotFoundError(f"no complete checkpoint under {Path(output_dir) / 'checkpoints'}")
    table = snapshot(steps[0], layer)
    for directory in steps[1:]:
        k = _table_index(directory, layer)
        files = sorted(directory.glob(f"{DELTA_PREFIX}*.npz"))
        if not files:
            raise FileNotFoundError(f"{directory} has no delta files: was it written with checkpoint.deltas: true?")
        for path in files:
            with np.load(path) as data:
                replay(table, data[f"table{k}.key"], data[f"table{k}.op"], data[f"table{k}.row"])
    keys = np.array(sorted(table), np.int64)
    rows = np.stack([table[k] for k in keys.tolist()]) if len(keys) else np.zeros((0, 0), np.float32)
    return keys, rows
