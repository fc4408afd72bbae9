"""Shared helpers for the bad-input tests."""

from __future__ import annotations

import textwrap
from pathlib import Path

from raytf.errors import ConfigError, RaytfError

# A valid config; tests append to it or replace lines in it. Import paths are real, so a
# config built from it passes validation (it is never trained).
GOOD_YAML = textwrap.dedent(
    """\
    model: tests.badinput.models:build_model
    data:
      train: tests.badinput.models:train_data
    loss: sparse_categorical_crossentropy
    """
)


def write(tmp_path: Path, text: str, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based line of the `occurrence`-th line of `text` containing `needle`."""
    hits = [n for n, line in enumerate(textwrap.dedent(text).splitlines(), 1) if needle in line]
    assert len(hits) >= occurrence, f"{needle!r} is not in the test's YAML"
    return hits[occurrence - 1]


def assert_names(error: RaytfError, problem: tuple[str, ...] = (), fix: tuple[str, ...] = ()) -> None:
    """The error is a ConfigError whose problem and fix mention every given fragment."""
    assert isinstance(error, ConfigError), f"expected a ConfigError, got {type(error).__name__}: {error}"
    for fragment in problem:
        assert fragment in error.problem, f"{fragment!r} not in problem: {error.problem!r}"
    for fragment in fix:
        assert fragment in error.fix, f"{fragment!r} not in fix: {error.fix!r}"
    assert error.fix.strip(), f"no fix given for: {error.problem!r}"
