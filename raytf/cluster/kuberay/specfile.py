"""Reading a cluster spec file: YAML with line numbers, validation errors a human can act on.

PyYAML's composed node tree keeps a line mark for every key and value; pydantic reports error
locations as key paths. Walking one with the other turns "worker_groups.0.replcas: extra" into
"kuberay-cpu.yaml:12: worker_groups[0].replcas: unknown key; did you mean 'replicas'?".
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from raytf.cluster.kuberay.errors import ClusterSpecError
from raytf.cluster.kuberay.spec import ClusterSpec

# Starts on its own line: spec problems are multi-line lists.
_FIX = "Edit the spec file (format: docs/kuberay.md) and retry; `raytf up <spec> --dry-run` checks it offline."

Loc = tuple[str | int, ...]


def load_cluster_spec(path: str | Path) -> ClusterSpec:
    """Parse and validate a spec file. Touches nothing but the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ClusterSpecError(f"Cluster spec {path} does not exist.", "Pass the path of a spec file, e.g. cluster-configs/kuberay-cpu.yaml.") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ClusterSpecError(f"Cannot read cluster spec {path}: {err}.", "Check the path and its permissions.") from None
    return parse_cluster_spec(text, str(path))


def parse_cluster_spec(text: str, source: str = "<spec>") -> ClusterSpec:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(err, "problem", None) or str(err)
        raise ClusterSpecError(f"{where}: YAML syntax error: {problem}.", _FIX) from None
    if not isinstance(root, yaml.MappingNode) or not isinstance(data, dict):
        raise ClusterSpecError(f"{source}: a cluster spec must be a YAML mapping (provider: kuberay, name: ..., ...).", _FIX)
    problems = _duplicate_keys(root, (), source)
    if problems:
        raise ClusterSpecError(f"Invalid cluster spec {source}:\n  " + "\n  ".join(problems), _FIX)
    try:
        return ClusterSpec.model_validate(data)
    except ValidationError as err:
        described = sorted((_describe(e, root, source) for e in err.errors()), key=lambda d: d[0])
        lines = [text for _, text in described]
        raise ClusterSpecError(f"Invalid cluster spec {source}:\n  " + "\n  ".join(lines), _FIX) from None


def is_kuberay_spec(path: str | Path) -> bool:
    """True when the YAML file says `provider: kuberay` (lets the CLI pick the provider)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and data.get("provider") == "kuberay"


def _duplicate_keys(node: yaml.Node, loc: Loc, source: str) -> list[str]:
    # PyYAML keeps the last of two equal keys silently; a spec with both is almost surely a mistake.
    found: list[str] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if key.value in seen:
                found.append(f"{source}:{key.start_mark.line + 1}: {_dotted(loc + (key.value,))}: key appears twice")
            seen.add(key.value)
            found += _duplicate_keys(value, loc + (key.value,), source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found += _duplicate_keys(item, loc + (i,), source)
    return found


def _describe(error: Any, root: yaml.Node, source: str) -> tuple[int, str]:
    """(line, message) for one pydantic error."""
    loc: Loc = tuple(error["loc"])
    kind = error["type"]
    line = _line(root, loc, key=kind == "extra_forbidden")
    where = f"{source}:{line}"
    key = _dotted(loc) or "(top level)"
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return line, f"{where}: {key}: unknown key.{hint} Allowed keys: {', '.join(allowed)}."
    if kind == "missing":
        return line, f"{where}: {key}: required key is missing."
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind.startswith("literal_error") and " or " in message:
        message = message.replace("Input should be", "must be one of")
    message = message.replace("Input should be", "must be")
    value = error.get("input")
    got = f" (got {value!r})" if isinstance(value, (str, int, float, bool)) else ""
    if isinstance(value, str) and "@" in value:
        got = " (value not shown: it holds credentials)"  # e.g. redis://:password@host; never echo a secret
    return line, f"{where}: {key}: {message}{got}"


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line(root: yaml.Node, loc: Loc, *, key: bool) -> int:
    """1-based line of the node at `loc` (of the key itself when `key`), else of its deepest parent."""
    node, line = root, root.start_mark.line + 1
    for i, part in enumerate(loc):
        child = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == part:
                    child = k if (key and i == len(loc) - 1) else v
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
        if child is None:
            break
        node, line = child, child.start_mark.line + 1
    return line


def _allowed_keys(loc: Loc) -> list[str]:
    """Field names of the model found at `loc` (walking the ClusterSpec annotations)."""
    model: type[BaseModel] = ClusterSpec
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        nested = _model_in(field.annotation) if field else None
        if nested is None:
            return []
        model = nested
    return list(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, tuple):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None
