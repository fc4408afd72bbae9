"""docs/bad-input.md lists every bad input with the test that makes it; this keeps the two in step.

The table's rows are checked for form (unique ids, known categories, the exit column), and every
test named there must exist: its module imports, it defines the function, and a parametrized test
has the named id. Its `xfail` marker must sit exactly where the row is marked ✗ (a known gap) and
its `slow` marker exactly where the row says (slow). Tests named in the catalogue give their
parameters explicit ids (`pytest.param(..., id=...)` or `ids=[...]`), which are read here.
"""

from __future__ import annotations

import importlib
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "bad-input.md"
HEADER = ["id", "category", "bad input", "exit", "error", "test"]
CATEGORIES = {"CLI", "config", "model & data", "cluster", "filesystem", "checkpoint"}
ID = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
EXIT = re.compile(r"(0|1|2|warning)( ✗)?")
TEST = re.compile(r"`(?P<file>tests/[\w/]+)\.py::(?P<name>\w+)(?:\[(?P<param>[^\]`]+)\])?`(?P<slow> \(slow\))?")


@dataclass(frozen=True)
class Row:
    line: int
    id: str
    category: str
    bad_input: str
    exit: str
    error: str
    test: str

    @property
    def node(self) -> str:
        return self.test.split("`")[1] if self.test.count("`") == 2 else self.test

    @property
    def gap(self) -> bool:
        return self.exit.endswith("✗")


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def catalogue() -> list[Row]:
    """Every table row after the catalogue's header (rows may be appended anywhere below it)."""
    lines = DOC.read_text().splitlines()
    starts = [n for n, line in enumerate(lines) if line.startswith("|") and cells(line) == HEADER]
    assert len(starts) == 1, f"{DOC}: expected one table with the header | {' | '.join(HEADER)} |"
    rows = []
    for number, line in enumerate(lines[starts[0] + 1 :], starts[0] + 2):
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue  # prose, blank lines, comments, the separator
        values = cells(line)
        assert len(values) == len(HEADER), f"{DOC.name}:{number}: {len(values)} cells, expected {len(HEADER)}: {line}"
        rows.append(Row(number, *values))
    return rows


ROWS = catalogue()


def marks_named(marks, name: str) -> list:
    marks = marks if isinstance(marks, (list, tuple)) else [marks]
    return [mark for mark in marks if getattr(mark, "name", None) == name]


def parameter_sets(function) -> dict[str, set[str]]:
    """The ids pytest gives the parametrized variants of `function`, with the marks of each."""
    variants: list[list[tuple[str, set[str]]]] = []
    for mark in marks_named(getattr(function, "pytestmark", []), "parametrize"):  # innermost decorator first
        values = mark.args[1] if len(mark.args) > 1 else mark.kwargs["argvalues"]
        ids = mark.kwargs.get("ids")
        assert ids is None or isinstance(ids, (list, tuple)), f"{function.__name__}: give ids as a list"
        one = []
        for n, value in enumerate(values):
            given = getattr(value, "id", None) or (ids[n] if ids else None)
            assert given, f"{function.__name__}: parameter {n} has no explicit id (pytest.param(..., id=...) or ids=[...])"
            one.append((given, {m.name for m in getattr(value, "marks", ())}))
        variants.append(one)
    if not variants:
        return {}
    return {"-".join(i for i, _ in combo): set().union(*(m for _, m in combo)) for combo in itertools.product(*variants)}


def resolve(row: Row) -> set[str]:
    """The marker names of the test a row names; AssertionError if there is no such test."""
    match = TEST.fullmatch(row.test)
    assert match, f"the test cell {row.test!r} is not `tests/FILE.py::NAME` or `...::NAME[ID]`, optionally + (slow)"
    module = importlib.import_module(match["file"].replace("/", "."))
    function = getattr(module, match["name"], None)
    assert callable(function), f"{match['file']}.py defines no test {match['name']}"
    names = {mark.name for mark in getattr(function, "pytestmark", [])}
    names |= {mark.name for mark in marks_named(getattr(module, "pytestmark", []), "slow")}
    variants = parameter_sets(function)
    if match["param"] is not None:
        assert variants, f"{match['name']} is not parametrized, so it has no [{match['param']}]"
        assert match["param"] in variants, f"{match['name']} has no parameter id [{match['param']}]; it has {sorted(variants)}"
        names |= variants[match["param"]]
    else:
        assert not variants, f"{match['name']} is parametrized: name one of {sorted(variants)}"
    return names


def test_at_least_30_distinct_bad_inputs_meet_the_bar():
    ids = [row.id for row in ROWS]
    assert len(ids) == len(set(ids)), f"duplicate ids: {sorted({i for i in ids if ids.count(i) > 1})}"
    nodes = [row.node for row in ROWS]
    assert len(nodes) == len(set(nodes)), f"tests named twice: {sorted({n for n in nodes if nodes.count(n) > 1})}"
    clean = [row.id for row in ROWS if row.exit == "2"]
    assert len(clean) >= 30, f"only {len(clean)} bad inputs exit with status 2 without a known gap"


def test_rows_are_well_formed():
    problems = []
    for row in ROWS:
        where = f"{DOC.name}:{row.line} ({row.id})"
        if not ID.fullmatch(row.id):
            problems.append(f"{where}: an id is lower-case words joined by '-'")
        if row.category not in CATEGORIES:
            problems.append(f"{where}: category {row.category!r} is not one of {sorted(CATEGORIES)}")
        if not EXIT.fullmatch(row.exit):
            problems.append(f"{where}: exit {row.exit!r} is not 0, 1, 2 or warning (with ✗ for a known gap)")
        if not row.bad_input or not row.error:
            problems.append(f"{where}: the bad input or the error is empty")
    assert not problems, "\n".join(problems)


def test_every_listed_test_exists_with_the_markers_the_row_gives():
    problems = []
    for row in ROWS:
        where = f"{DOC.name}:{row.line} ({row.id})"
        try:
            markers = resolve(row)
        except (AssertionError, ImportError, KeyError) as error:
            problems.append(f"{where}: {error}")
            continue
        if row.gap != ("xfail" in markers):
            problems.append(f"{where}: {'marked ✗' if row.gap else 'not marked ✗'}, but {row.node} is "
                            f"{'' if 'xfail' in markers else 'not '}xfail")
        if row.test.endswith(" (slow)") != ("slow" in markers):
            problems.append(f"{where}: {'(slow)' if row.test.endswith(' (slow)') else 'not (slow)'}, but {row.node} is "
                            f"{'' if 'slow' in markers else 'not '}marked slow")
    assert not problems, "docs/bad-input.md disagrees with the tests:\n" + "\n".join(problems)
