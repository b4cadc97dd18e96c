"""A store used as a library (outside ``graceful.run``) prints nothing the application did not
ask for: no structlog console lines on stdout while nothing is configured, and its events
where the application sends them once it configures ``logging`` or structlog.

Each case is a real child process, so structlog's global configuration starts untouched.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support import ROOT

SCRIPT = textwrap.dedent(
    """
    import asyncio, logging, sys
    import structlog
    from graceful.state import Batcher, DurableStore

    setup = sys.argv[2]
    if setup == "stdlib":
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="LOG %(message)s")
    elif setup == "structlog":
        structlog.configure(processors=[structlog.processors.KeyValueRenderer()])
    elif setup == "bare-structlog":
        # The control: what the store did before, structlog's default on an unconfigured app.
        structlog.get_logger("graceful").info("state.opened", path=sys.argv[1])

    async def main():
        async with DurableStore(sys.argv[1], registry=None) as store:
            async def flush(items):
                await store.put_many([(i, None) for i in items])
            async with Batcher(flush, max_items=10) as batcher:
                await store.put("a", "1")
                await batcher.add("b")
        print("result", await asyncio.sleep(0, "ok"))

    asyncio.run(main())
    """
)


def run(tmp_path: Path, setup: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "state.db"), setup],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=ROOT,
    )


def test_nothing_configured_prints_nothing(tmp_path: Path) -> None:
    out = run(tmp_path, "none")
    assert out.stdout == "result ok\n"  # only the application's own output
    assert out.stderr == ""


def test_control_structlogs_default_prints_console_lines_on_stdout(tmp_path: Path) -> None:
    # What the check above would see: structlog's unconfigured default writes to stdout.
    out = run(tmp_path, "bare-structlog")
    assert "[info     ] state.opened" in out.stdout
    assert out.stdout.endswith("result ok\n")


@pytest.mark.parametrize(
    ("setup", "where", "line"),
    [
        ("stdlib", "stderr", "LOG state.opened path="),
        ("structlog", "stdout", "event='state.opened'"),
    ],
)
def test_events_go_where_the_application_configured(
    tmp_path: Path, setup: str, where: str, line: str
) -> None:
    out = run(tmp_path, setup)
    text = getattr(out, where)
    assert line in text, out
    assert "state.closed" in text, out
    assert "state.flushed" in text, out
    assert "[info     ]" not in out.stdout  # never structlog's default console format
