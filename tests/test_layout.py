"""graceful/ as a whole keeps one job per module: no import cycle anywhere (imports for type
checking count too), no module over ~500 lines. (The harness has its own, stricter check.)"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.test_harness_layout import cycles

PACKAGE = Path(__file__).resolve().parent.parent / "graceful"
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        # A package's __init__ re-exports its own modules: that is not a cycle.
        graph[name] = {m for m in found if m in modules and m != name and m != "graceful"}
    return graph


def test_no_import_cycle_in_graceful() -> None:
    graph = import_graph()
    assert "graceful.shutdown" in graph["graceful.runtime"]  # the graph sees real imports
    assert cycles(graph) == []


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_no_module_is_over_500_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= MAX_LINES
