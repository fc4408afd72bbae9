"""Checkpoints: every parameter server writes its own shard, the driver writes the manifest last.

Layout under `output_dir/checkpoints/`::

    step-00000100/ps-0.npz      parameters, optimizer slots, iteration count of shard 0
    step-00000100/ps-1.npz
    step-00000100/manifest.json the checkpoint exists once this does

Every file is written under a temporary name, fsynced and renamed, and the manifest only after
all shards reported their checksums. A crash at any moment therefore leaves every complete
checkpoint whole; a directory without a manifest is ignored and swept later.

The manifest records the variables (shapes) and which shard holds which, so a checkpoint can be
restored into a different number of parameter servers, and a checkpoint of another model is
refused with a clear error.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from raytf.errors import ConfigError, TrainingError
from raytf.exchange.shard_state import PREFIX, SavedShard, ShardState, TableState, atomic_write, checksum
from raytf.exchange.sharding import ShardPlan, aligned_offsets
from raytf.exchange.tables import TableSpec

FORMAT = 1
MANIFEST = "manifest.json"
NON_TRAINABLE = "non_trainable.npz"


@dataclass(frozen=True)
class Checkpoint:
    directory: Path
    manifest: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.manifest["step"])


def build_manifest(step: int, plan: ShardPlan, saved: Sequence[SavedShard], *, mode: str, updates_per_step: int,
                   optimizer: str, run_id: str) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "step": step,
        "mode": mode,
        "updates_per_step": updates_per_step,
        "optimizer": optimizer,
        "run_id": run_id,
        "written_at": time.time(),
        "variables": [{"name": v.name, "shape": list(v.shape)} for v in plan.variables],
        "tables": [{"variable": t.variable, "layer": t.layer, "rows": t.rows, "width": t.width, "servers": t.servers,
                    "partition": t.partition} for t in plan.tables],
        "shards": [
            {"file": s.file, "version": s.version, "crc32": s.crc32, "variables": list(shard.variables),
             "offsets": list(shard.offsets)}
            for s, shard in zip(sorted(saved, key=lambda s: s.index), plan.shards)
        ],
    }


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    atomic_write(directory / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=1).encode()))


def write_non_trainable(directory: Path, values: Sequence[np.ndarray]) -> None:
    """The workers' non-trainable values (BatchNorm statistics, averaged over them), beside the shards;
    written before the manifest, so a complete checkpoint has them."""
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / NON_TRAINABLE, lambda f: np.savez(f, *values))


def read_non_trainable(directory: Path) -> list[np.ndarray] | None:
    """What `write_non_trainable` wrote there; None for a checkpoint without (older, or of a model without any)."""
    path = directory / NON_TRAINABLE
    if not path.exists():
        return None
    with np.load(path) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def _read_manifest(directory: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None  # no manifest yet (or not ours): not a checkpoint
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT else None


def _step_dirs(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        if path.is_dir() and path.name.startswith(PREFIX) and path.name[len(PREFIX):].isdigit():
            found.append((int(path.name[len(PREFIX):]), path))
    return sorted(found)


def complete(root: Path) -> list[Checkpoint]:
    """Complete checkpoints under `root`, oldest first."""
    found = []
    for _, path in _step_dirs(root):
        manifest = _read_manifest(path)
        if manifest is not None:
            found.append(Checkpoint(path, manifest))
    return found


def latest(root: Path) -> Checkpoint | None:
    found = complete(root)
    return found[-1] if found else None


def prune(root: Path, keep: int, also: Iterable[int] = ()) -> list[Path]:
    """Delete complete checkpoints beyond the newest `keep` but those of the steps `also` (the best
    one, those still to be evaluated), and incomplete ones older than the newest complete one (left
    by a crash). Returns what was deleted."""
    done = complete(root)
    if not done:
        return []
    also = set(also)
    kept = {c.directory for c in done[-keep:]} | {c.directory for c in done if c.step in also}
    newest = done[-1].step
    doomed = [path for step, path in _step_dirs(root) if path not in kept and step <= newest]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def discard_after(root: Path, step: int) -> None:
    """Remove every checkpoint directory newer than `step` (after rolling back to it)."""
    for s, path in _step_dirs(root):
        if s > step:
            shutil.rmtree(path, ignore_errors=True)


def load(checkpoint: Checkpoint, plan: ShardPlan, optimizer: str, updates_per_step: int) -> list[ShardState]:
    """The servers' states for `plan` (which may have another number of servers than the
    checkpoint's), at version step * updates_per_step."""
    manifest = checkpoint.manifest
    where = f"checkpoint {checkpoint.directory}"
    theirs = [tuple(v["shape"]) for v in manifest["variables"]]
    ours = [tuple(v.shape) for v in plan.variables]
    if theirs != ours:
        raise ConfigError(
            f"{where} is of a different model: it holds {len(theirs)} variables of shapes {_shapes(theirs)}, "
            f"but the configured model has {len(ours)} of shapes {_shapes(ours)}.",
            "Resume with the model the checkpoint was trained with, or drop --resume (or use another output_dir) "
            "to start from scratch.",
        )
    if manifest["optimizer"] != optimizer:
        raise ConfigError(
            f"{where} holds the slots of optimizer '{manifest['optimizer']}', but the config asks for '{optimizer}'.",
            f"Resume with optimizer.name: {manifest['optimizer']}, or drop --resume to start from scratch.",
        )
    theirs_tables = [(t["variable"], t["rows"], t["width"]) for t in manifest.get("tables", [])]
    ours_tables = [(t.variable, t.rows, t.width) for t in plan.tables]
    if theirs_tables != ours_tables:
        raise ConfigError(
            f"{where} holds sparse tables {_tables(manifest.get('tables', []))}, but this run's are "
            f"{_tables([vars(t) for t in plan.tables])}.",
            "Resume with the same sparse settings (sparse.tables, sparse.min_bytes) as the checkpoint's run, or drop "
            "--resume to start from scratch.",
        )
    files = [_read_shard(checkpoint, entry) for entry in manifest["shards"]]
    per_variable: dict[str, list[np.ndarray | None]] = {}
    for entry, (arrays, _) in zip(manifest["shards"], files):
        for key, flat in arrays.items():
            if key.startswith("table"):
                continue
            parts = per_variable.setdefault(key, [None] * len(ours))
            # Checkpoints written before the aligned layout have no offsets: end to end.
            offsets = entry.get("offsets") or aligned_offsets([plan.variables[i].size for i in entry["variables"]], 1)
            for i, offset in zip(entry["variables"], offsets):
                parts[i] = flat[offset:offset + plan.variables[i].size]
    iterations = max(counters["iterations"] for _, counters in files)
    tables = [_recut_table(k, TableSpec(**t), plan.tables[k], files)
              for k, t in enumerate(manifest.get("tables", []))]
    version = checkpoint.step * updates_per_step
    states = []
    for server, shard in enumerate(plan.shards):
        packed = {key: shard.pack([parts[i] for i in shard.variables]) for key, parts in per_variable.items()}
        slots = {key[len("slot."):]: value for key, value in packed.items() if key.startswith("slot.")}
        states.append(ShardState(params=packed["params"], slots=slots, iterations=iterations, version=version,
                                 tables=tuple(table[server] for table in tables)))
    return states


def _read_shard(checkpoint: Checkpoint, entry: dict) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """A server's arrays and counters, checked against the manifest's checksum."""
    where = f"checkpoint {checkpoint.directory}"
    path = checkpoint.directory / entry["file"]
    try:
        with np.load(path) as data:
            counters = {key: int(data[key]) for key in data.files if key in ("iterations", "version")
                        or key.endswith(".iterations")}
            arrays = {key: data[key] for key in data.files if key not in counters}
    except (OSError, ValueError, KeyError) as err:
        raise TrainingError(f"{where}: cannot read {entry['file']} ({err}).",
                            f"Delete {checkpoint.directory} to fall back to the checkpoint before it.") from None
    if checksum(arrays) != entry["crc32"]:
        raise TrainingError(f"{where}: {entry['file']} does not match its checksum in the manifest (damaged file).",
                            f"Delete {checkpoint.directory} to fall back to the checkpoint before it.")
    return arrays, counters


def _recut_table(k: int, theirs: TableSpec, ours: TableSpec, files: list) -> list[TableState]:
    """Table `k`'s rows as the checkpoint's servers held them, re-cut for this run's servers."""
    if theirs.is_dynamic:
        return _recut_dynamic(k, ours, files)
    keys = [key[len(f"table{k}."):] for key in files[0][0] if key.startswith(f"table{k}.")]
    whole = {key: np.empty((theirs.rows, theirs.width), np.float32) for key in keys}
    for server, (arrays, _) in enumerate(files):
        ids = theirs.global_ids(server)
        for key in keys:
            whole[key][ids] = arrays[f"table{k}.{key}"]
    iterations = max(counters.get(f"table{k}.iterations", 0) for _, counters in files)
    states = []
    for server in range(ours.servers):
        ids = ours.global_ids(server)
        mine = {key: value[ids] for key, value in whole.items()}
        slots = {key[len("slot."):]: value for key, value in mine.items() if key.startswith("slot.")}
        states.append(TableState(params=mine["params"], slots=slots, iterations=iterations))
    return states


def _recut_dynamic(k: int, ours: TableSpec, files: list) -> list[TableState]:
    """A dynamic table's rows, by key, to the servers that own their keys in this run (a hash of the key)."""
    names = [key[len(f"table{k}."):] for key in files[0][0] if key.startswith(f"table{k}.")]
    every = {name: np.concatenate([arrays[f"table{k}.{name}"] for arrays, _ in files]) for name in names}
    iterations = max(counters.get(f"table{k}.iterations", 0) for _, counters in files)
    owners = ours.owner(every["keys"])
    states = []
    for server in range(ours.servers):
        mine = {name: value[owners == server] for name, value in every.items()}
        slots = {name[len("slot."):]: value for name, value in mine.items() if name.startswith("slot.")}
        states.append(TableState(params=mine["params"], slots=slots, iterations=iterations, keys=mine["keys"],
                                 touches=mine.get("touches"), last=mine.get("last")))
    return states


def _tables(tables: list[dict]) -> str:
    return "[" + ", ".join(f"{t['layer']} {t['rows']}x{t['width']}" for t in tables) + "]" if tables else "none"


def _shapes(shapes: list[tuple[int, ...]], limit: int = 6) -> str:
    text = ", ".join(str(list(s)) for s in shapes[:limit])
    return text + (", ..." if len(shapes) > limit else "")
