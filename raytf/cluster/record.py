"""Where raytf remembers the cluster that `raytf up` brought up.

One JSON record per machine user in `$RAYTF_HOME/cluster.json` (default `~/.raytf`), so `raytf
status`, `raytf train`, `raytf dashboard` and `raytf down` find the cluster without arguments.
The record's `provider` key says who owns it: "local" (embedded Ray head) or "kuberay".
Writes are atomic (temp file + rename) so a crash never leaves a half-written record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def raytf_home() -> Path:
    return Path(os.environ.get("RAYTF_HOME") or Path.home() / ".raytf")


def record_path() -> Path:
    return raytf_home() / "cluster.json"


def load_cluster_record() -> dict[str, Any] | None:
    path = record_path()
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, OSError):
        # A record we cannot read describes nothing we can manage; treat it as absent.
        return None


def save_cluster_record(record: dict[str, Any]) -> None:
    path = record_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    os.replace(tmp, path)


def clear_cluster_record() -> None:
    try:
        record_path().unlink()
    except FileNotFoundError:
        pass
