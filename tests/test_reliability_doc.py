"""docs/reliability.md and the tests behind it, both ways.

Every row of its tables names the tests that assert its claim; each of those tests carries the row
(`@pytest.mark.backs("<the row's first cell>")`), and every test that says it backs a row is named there.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from pathlib import Path

from tests.conftest import ROOT


def doc_rows(text: str) -> dict[str, list[str]]:
    """Row (its first cell) -> the test functions its test cell names (parameters dropped)."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if not line.startswith("| ") or len(cells) < 3 or cells[1] == "test":
            continue
        names = [name.split("[")[0] for name in re.findall(r"`(test_[^`]+)`", cells[1])]
        rows[cells[0]] = list(dict.fromkeys(names))
    return rows


def backed_rows(tests: Path) -> dict[str, list[str]]:
    """Test function -> the rows its `pytest.mark.backs(...)` names, for every test module below `tests`."""
    found: dict[str, list[str]] = {}
    for path in sorted(tests.rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                rows = found.setdefault(node.name, [])
                for deco in node.decorator_list:
                    if isinstance(deco, ast.Call) and ast.unparse(deco.func) == "pytest.mark.backs":
                        rows += [arg.value for arg in deco.args if isinstance(arg, ast.Constant)]
    return found


def mismatches(rows: Mapping[str, list[str]], tests: Mapping[str, list[str]]) -> list[str]:
    """Every way the page and the tests disagree."""
    found = []
    for row, names in rows.items():
        if not names:
            found.append(f"row {row!r} names no test")
        for name in names:
            if name not in tests:
                found.append(f"row {row!r} names {name}, which does not exist")
            elif row not in tests[name]:
                found.append(f"{name} does not say it backs row {row!r}")
    for name, backed in tests.items():
        found += [
            f"{name} backs row {row!r}, which does not name it"
            for row in backed
            if name not in rows.get(row, [])
        ]
    return found


def test_every_row_names_tests_that_back_it_and_every_backing_test_is_named():
    rows = doc_rows((ROOT / "docs" / "reliability.md").read_text(encoding="utf-8"))
    tests = backed_rows(ROOT / "tests")
    assert len(rows) > 50 and sum(map(bool, tests.values())) > 50  # the page and the marks were both read
    assert mismatches(rows, tests) == []


def test_a_missing_test_a_missing_mark_and_a_stray_mark_are_found(tmp_path):
    (tmp_path / "test_a.py").write_text(
        "import pytest\n\n"
        '@pytest.mark.backs("row one")\ndef test_one():\n    pass\n\n'
        "def test_two():\n    pass\n\n"
        '@pytest.mark.backs("row three")\ndef test_three():\n    pass\n'
    )
    rows = doc_rows(
        "| case | test | outcome |\n|---|---|---|\n"
        "| row one | `test_one`, `test_gone[p]` | x |\n| row two | `test_two` | y |\n"
    )
    assert mismatches(rows, backed_rows(tmp_path)) == [
        "row 'row one' names test_gone, which does not exist",
        "test_two does not say it backs row 'row two'",
        "test_three backs row 'row three', which does not name it",
    ]
