"""docs/hostile-input.md is backed row by row: every test it names exists."""

from __future__ import annotations

import re

from tests.support import ROOT

DOC = ROOT / "docs" / "hostile-input.md"


def defined_tests() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        names.update(re.findall(r"^(?:async )?def (test_\w+)", path.read_text(), re.M))
    return names


def test_every_row_names_a_test_and_every_named_test_exists() -> None:
    rows = [line for line in DOC.read_text().splitlines() if line.startswith("| ")]
    rows = [r for r in rows if not r.startswith(("| input", "| hostile input"))]
    assert len(rows) > 60
    known = defined_tests()
    for row in rows:
        cell = re.sub(r"tests/test_\w+\.py", "", row.split("|")[-2])  # file names are not tests
        named = set(re.findall(r"\b(test_\w+)", cell))
        assert named, f"a row without its test: {row}"
        missing = {n for n in named if n not in known}
        assert not missing, f"{missing} named in {row}"
