"""The README's runnable examples run: services stop cleanly on SIGTERM, scripts finish."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, ServiceProcess

BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
SERVICES = [b for b in BLOCKS if "__main__" in b and "myservice" not in b]
SCRIPTS = [b for b in BLOCKS if "asyncio.run(" in b]


def test_readme_has_the_examples_this_test_runs() -> None:
    assert len(SERVICES) >= 2
    assert SCRIPTS


@pytest.mark.parametrize("source", SERVICES, ids=lambda s: s.split("\n", 1)[0][:30])
def test_service_example_stops_cleanly(source: str, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(source)
    with ServiceProcess.python(script, cwd=tmp_path) as service:
        service.wait_event("service.starting")
        service.wait_for('"event": "service.ready"')
        service.signal(signal.SIGTERM)
        assert service.wait() == 0
        assert service.wait_event("shutdown.report")["exit_code"] == 0


@pytest.mark.parametrize("source", SCRIPTS)
def test_script_example_runs(source: str, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(source)
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
