"""YAML loading that remembers where every key came from.

Config errors must name the file and line of the offending key, so we compose the node tree
first (PyYAML keeps marks there), construct plain Python data from it, and keep the tree to
look up a dotted key's line later. Duplicate keys are an error rather than a silent overwrite.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from raytf.errors import ConfigError


class _StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(
                    f"{self.name}:{line}: key '{key}' appears twice in the same mapping "
                    f"(first on line {seen[key]}).",
                    "Keep one of them; YAML would silently use the last one.",
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


@dataclass(frozen=True)
class YamlSource:
    """Parsed YAML data plus its node tree, for line lookups."""

    name: str
    data: Any
    root: yaml.Node | None

    def line_of(self, path: Sequence[Any]) -> int | None:
        """1-based line of the key at `path` (or of the deepest existing parent)."""
        node, line = self.root, None
        for part in path:
            if isinstance(node, yaml.MappingNode):
                for key_node, value_node in node.value:
                    if key_node.value == str(part):
                        line, node = key_node.start_mark.line + 1, value_node
                        break
                else:
                    return line
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                return line
        return line


def parse_yaml(text: str, name: str) -> YamlSource:
    loader = _StrictLoader(text)
    loader.name = name
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark else name
        start = err.context_mark
        opened = f" ({err.context} that starts on line {start.line + 1})" if err.problem and err.context and start and mark and start.line != mark.line else ""
        raise ConfigError(
            f"{where}: YAML syntax error: {err.problem or err.context}{opened}.",
            "Fix the YAML at that line (check indentation, colons and quotes).",
        ) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{name}: YAML error: {err}.", "Fix the YAML syntax.") from None
    finally:
        loader.dispose()
    return YamlSource(name=name, data=data, root=root)


def read_yaml_file(path: str | Path) -> YamlSource:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"Config file {path} does not exist.", "Check the path (it is relative to the current directory).") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory, not a config file.", "Pass the path of a YAML file.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file.", "Pass the path of a YAML config file.") from None
    except PermissionError:
        raise ConfigError(f"Config file {path} is not readable.", "Check its permissions.") from None
    return parse_yaml(text, str(path))
