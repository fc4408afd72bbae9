"""A plain `pip install raytf` must bring everything raytf imports (no test extra may hide a gap)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]


def declared_distributions() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[\s<>=!~;\[]", spec, maxsplit=1)[0] for spec in project["dependencies"]}
    return {_normal(name) for name in names}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_top_level_modules() -> dict[str, str]:
    """Top-level module -> a file of raytf that imports it (every import, also those inside functions)."""
    found: dict[str, str] = {}
    for path in sorted((REPO / "raytf").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    return found


def test_every_third_party_import_of_raytf_is_a_declared_dependency():
    provided_by = importlib.metadata.packages_distributions()
    declared = declared_distributions()
    missing = {}
    for module, where in imported_top_level_modules().items():
        if module == "raytf" or module in sys.stdlib_module_names or module == "__future__":
            continue
        distributions = {_normal(d) for d in provided_by.get(module, [])}
        assert distributions, f"{where} imports {module!r}, which no installed distribution provides"
        if not distributions & declared:
            missing[module] = (where, sorted(distributions))
    assert missing == {}, f"imported but not in [project].dependencies: {missing}"


def test_the_test_extra_brings_no_runtime_dependency():
    """What raytf imports must not come only from the test extra (CI would then pass while users fail)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    test_only = {_normal(re.split(r"[\s<>=!~;\[]", spec, maxsplit=1)[0]) for spec in project["optional-dependencies"]["test"]}
    provided_by = importlib.metadata.packages_distributions()
    used = {_normal(d) for module in imported_top_level_modules() for d in provided_by.get(module, [])}
    assert test_only & used - declared_distributions() == set()


def test_tensorboard_events_are_written_without_tensorflow(tmp_path):
    """The driver's event writer needs only the `tensorboard` package (and never loads TensorFlow for it)."""
    script = f"""
import sys
from pathlib import Path
from raytf.observe.progress import Snapshot
from raytf.observe.tensorboard import TensorBoardLog
log = TensorBoardLog(Path({str(tmp_path / 'tb')!r}))
log.update(Snapshot(step=1, total=2, loss=0.5, samples_per_second=10.0, elapsed=1.0))
log.close()
print('tensorflow' in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
