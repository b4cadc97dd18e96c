"""An app that fails to load, in JSON logs: one JSON line, not a traceback's lines.

Real ``graceful serve`` (and ``graceful run``) processes, one and several workers, on a module
that raises while it is imported; every line of stdout and of stderr must parse as a JSON
object (what a log pipeline that parses each line needs). The control is the console format,
whose traceback the same check rejects.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support import free_port
from tests.test_serve import GRACEFUL, HANG_GUARD

pytestmark = pytest.mark.slow

BROKEN = """\
def read_settings():
    raise ValueError("DATABASE_URL is not set")


settings = read_settings()
"""


def run(
    tmp_path: Path, *argv: str, log_format: str | None = None
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "broken.py").write_text(BROKEN)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRACEFUL_")}
    if log_format is not None:
        env["GRACEFUL_LOG_FORMAT"] = log_format  # unset: "auto", JSON off a terminal
    return subprocess.run(
        [GRACEFUL, *argv],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
        cwd=tmp_path,
        env=env,
    )


def parse_every_line(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    lines = result.stdout.splitlines() + result.stderr.splitlines()
    events = [json.loads(line) for line in lines]
    assert all(isinstance(event, dict) for event in events)
    return events


def check_failure(event: dict[str, Any], spec: str) -> None:
    assert event["level"] == "error"
    assert event["app"] == spec
    assert event["error"] == f"{spec} failed to load: ValueError: DATABASE_URL is not set"
    (raised,) = event["exception"]
    assert (raised["exc_type"], raised["exc_value"]) == ("ValueError", "DATABASE_URL is not set")
    # The app's frames only, without locals: graceful's and importlib's say nothing of the bug.
    frames = [(Path(f["filename"]).name, f["name"]) for f in raised["frames"]]
    assert frames == [("broken.py", "<module>"), ("broken.py", "read_settings")]
    assert all("locals" not in f for f in raised["frames"])


def test_a_worker_whose_app_raises_at_import_writes_one_json_line(tmp_path: Path) -> None:
    """``graceful serve --workers 2 broken:app``: each worker that fails says so in one JSON
    line, ``serve.failed_to_load`` with ``worker``, among the supervisor's JSON lines.
    Old code: the traceback's lines and ``graceful serve: worker 0: ...``, plain, on stderr."""
    port = str(free_port())
    result = run(tmp_path, "serve", "broken:app", "--workers", "2", "--port", port)
    assert result.returncode == 1
    events = parse_every_line(result)
    failed = [e for e in events if e["event"] == "serve.failed_to_load"]
    assert failed, result.stdout
    for event in failed:
        check_failure(event, "broken:app")
        assert event["worker"] in (0, 1)
    assert "startup.failed" in [e["event"] for e in events]  # the supervisor's, as before


@pytest.mark.parametrize("command", ["serve", "run"])
def test_one_process_whose_app_raises_at_import_writes_one_json_line(
    tmp_path: Path, command: str
) -> None:
    """Without workers, the same: ``serve.failed_to_load`` (``run.failed_to_load``), one line."""
    result = run(tmp_path, command, "broken:app")
    assert result.returncode == 1
    (event,) = parse_every_line(result)
    assert event["event"] == f"{command}.failed_to_load"
    check_failure(event, "broken:app")


def test_a_worker_that_cannot_find_its_app_writes_one_json_line(tmp_path: Path) -> None:
    """A module that is not there is one JSON line per worker too (no traceback: a bad
    target, not a bug in the app)."""
    port = str(free_port())
    result = run(tmp_path, "serve", "missing_module:app", "--workers", "2", "--port", port)
    assert result.returncode == 1
    failed = [e for e in parse_every_line(result) if e["event"] == "serve.failed_to_load"]
    assert failed, result.stdout
    assert all("missing_module" in e["error"] for e in failed)


@pytest.mark.parametrize("workers", [["--workers", "2"], []], ids=["workers", "one-process"])
def test_control_the_console_format_shows_the_traceback_the_check_rejects(
    tmp_path: Path, workers: list[str]
) -> None:
    """For a person (``GRACEFUL_LOG_FORMAT=console``): the traceback, then one line; the
    check of the tests above fails on it."""
    port = str(free_port())
    result = run(tmp_path, "serve", "broken:app", *workers, "--port", port, log_format="console")
    assert result.returncode == 1
    assert "Traceback (most recent call last):" in result.stderr
    assert 'broken.py", line 5, in <module>' in result.stderr
    assert "graceful/" not in result.stderr  # the app's frames only there too
    assert "broken:app failed to load: ValueError: DATABASE_URL is not set" in result.stderr
    with pytest.raises(json.JSONDecodeError):
        parse_every_line(result)
