"""The package's layout is its architecture, and stays so: every import between raytf's files
(at the top or inside a function) goes in the direction of the layering below, and no files
import each other in a circle. The rules are the "may import" lines of each package's docstring."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "raytf"

# The layers, lowest first. A file may import its own layer and what its layer lists.
MAY_IMPORT: dict[str, set[str]] = {
    "raytf.errors": set(),
    "raytf.config": {"raytf.errors"},
    "raytf.observe": {"raytf.errors"},
    "raytf.runtime": {"raytf.observe", "raytf.errors"},
    "raytf.cluster": {"raytf.config", "raytf.observe", "raytf.runtime", "raytf.errors"},
    "raytf.exchange": {"raytf.config", "raytf.observe", "raytf.runtime", "raytf.errors"},
    "raytf.data": {"raytf.config", "raytf.errors"},
    "raytf.replica": {"raytf.data", "raytf.exchange", "raytf.config", "raytf.observe", "raytf.runtime", "raytf.errors"},
    "raytf.pool": {"raytf.replica", "raytf.exchange", "raytf.config", "raytf.observe", "raytf.runtime", "raytf.errors"},
    "raytf.driver": {"raytf.cluster", "raytf.data", "raytf.exchange", "raytf.replica", "raytf.pool", "raytf.config",
                     "raytf.observe", "raytf.runtime", "raytf.errors"},
    # The public face: the CLI, `raytf.fit`/`raytf.connect`, `raytf.layers`.
    "raytf.layers": {"raytf.replica"},
    "raytf.cli": {"*"},
    "raytf": {"*"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    """The layer a module belongs to: the longest MAY_IMPORT key that is it or a package above it."""
    candidates = [key for key in MAY_IMPORT if module == key or module.startswith(key + ".")]
    return max(candidates, key=len)


def imports_of(path: Path) -> set[str]:
    """raytf modules that `path` imports, anywhere in it (function-level imports count too)."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            for alias in node.names:  # `from raytf.cluster import local` imports the module raytf.cluster.local
                sub = f"{name}.{alias.name}"
                found.add(sub if resolve(sub) else name)
    return {name for name in found if name == "raytf" or name.startswith("raytf.")}


def resolve(module: str) -> Path | None:
    relative = Path(*module.split("."))
    for candidate in (PACKAGE.parent / relative.with_suffix(".py"), PACKAGE.parent / relative / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def graph() -> dict[str, set[str]]:
    return {module_name(path): {m for m in imports_of(path) if resolve(m)} - {module_name(path)}
            for path in sorted(PACKAGE.rglob("*.py"))}


def test_the_layers_cover_every_module():
    for module in graph():
        assert layer_of(module), module


def test_no_import_points_against_the_layering():
    wrong = []
    for module, targets in graph().items():
        own = layer_of(module)
        allowed = MAY_IMPORT[own]
        for target in sorted(targets):
            theirs = layer_of(target)
            if theirs != own and "*" not in allowed and theirs not in allowed:
                wrong.append(f"{module} -> {target} ({own} may import {sorted(allowed) or 'nothing of raytf'})")
    assert wrong == []


def test_no_files_import_each_other_in_a_circle():
    edges = graph()
    # Imports of a package's __init__ re-export what lies below it; an arrow to a package is an
    # arrow to its __init__, which is itself a node here, so a circle through it is still found.
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                circles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert circles == []


@pytest.mark.parametrize("package", sorted(key for key in MAY_IMPORT if resolve(key) and resolve(key).name == "__init__.py"
                                           and key != "raytf"))
def test_each_package_says_what_it_owns_and_may_import(package):
    doc = ast.get_docstring(ast.parse(resolve(package).read_text())) or ""
    assert "May import:" in doc, f"{package}/__init__.py: say what the package may import"
    said = doc.split("May import:", 1)[1].split(".\n")[0]
    for allowed in MAY_IMPORT[package]:
        assert f"`{allowed}`" in said, f"{package}: the docstring does not list {allowed}"


def test_the_checks_can_fail(tmp_path, monkeypatch):
    """The graph sees function-level imports and circles (a check that cannot fail proves nothing)."""
    fake = tmp_path / "raytf"
    (fake / "config").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "errors.py").write_text("")
    (fake / "config" / "__init__.py").write_text("")
    (fake / "config" / "a.py").write_text("def f():\n    from raytf.driver import b\n")
    (fake / "driver").mkdir()
    (fake / "driver" / "__init__.py").write_text("")
    (fake / "driver" / "b.py").write_text("from raytf.config.a import f\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["PACKAGE"]), "PACKAGE", fake)
    with pytest.raises(AssertionError, match=r"raytf.config.a -> raytf.driver.b"):
        test_no_import_points_against_the_layering()
    with pytest.raises(AssertionError, match=r"raytf.config.a -> raytf.driver.b -> raytf.config.a"):
        test_no_files_import_each_other_in_a_circle()
