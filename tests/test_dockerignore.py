"""The build context leaves local databases out of images (issue 9, item 13).

A local run of an example leaves ``state.sqlite`` (or ``state.db`` and its ``-wal``/``-shm``
files) next to it; ``COPY examples/`` would bake someone's data into the image. The rules are
read as Docker reads them, by the Docker SDK's own ``.dockerignore`` matcher.
"""

from __future__ import annotations

from pathlib import Path

import pytest

build = pytest.importorskip("docker.utils.build")

ROOT = Path(__file__).resolve().parent.parent

DATABASES = [
    "state.db",
    "state.sqlite",
    "examples/state.db",
    "examples/state.db-wal",
    "examples/state.db-shm",
    "examples/state.db-journal",
    "examples/state.sqlite",
    "examples/state.sqlite-wal",
    "examples/state.sqlite3",
    "deep/er/jobs.db-shm",
    "deep/er/cache.sqlite3-journal",
]
KEPT = [
    "examples/asgi_service.py",
    "graceful/state.py",
    "docs/state.md",
    "build/wheelhouse/graceful_stop-0.1.0-py3-none-any.whl",
]


def dockerignore_patterns() -> list[str]:
    """The patterns, parsed the way the Docker SDK's ``build`` parses them."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def test_databases_at_any_depth_stay_out_of_the_build_context(tmp_path: Path) -> None:
    for name in DATABASES + KEPT:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    context = build.exclude_paths(str(tmp_path), dockerignore_patterns())
    assert not [name for name in DATABASES if name in context]
    # Control: the matcher does include files, the ones an image needs.
    assert [name for name in KEPT if name in context] == KEPT
