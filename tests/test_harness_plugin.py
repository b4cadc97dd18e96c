"""graceful.harness.pytest_plugin without an engine: cheap to load, skips (or fails in CI)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_plugin_imports_without_docker() -> None:
    # The plugin loads in every pytest run: importing it must not import the docker SDK.
    code = (
        "import sys, graceful.harness.pytest_plugin, graceful.harness.engine; "
        "print('docker' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"


CHAOS_TEST = """
import pytest

@pytest.mark.graceful_chaos
def test_needs_an_engine():
    pass

def test_uses_the_fixture(graceful_harness):
    pass
"""


def test_pytest_plugin_skips_without_an_engine_but_fails_in_ci(tmp_path: Path) -> None:
    (tmp_path / "test_chaos.py").write_text(CHAOS_TEST)
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    env.pop("CI", None)
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs"]
    local = subprocess.run(
        args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert local.returncode == 0, local.stdout + local.stderr
    assert "2 skipped" in local.stdout
    assert "make engine" in local.stdout
    ci = subprocess.run(
        args,
        cwd=tmp_path,
        env={**env, "CI": "true"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ci.returncode == 1, ci.stdout + ci.stderr
    assert "CI=true and no Docker engine answers" in ci.stdout
