"""graceful.harness.prober: the new-connection prober's program, run for real on loopback,
and the parsing of what it prints."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import graceful.harness
from graceful.harness.prober import ProbeEvent, parse_probe_output, probe_script
from tests.harness_servers import contract_server as start_contract_server
from tests.support import free_port


@pytest.fixture
async def contract_server() -> AsyncIterator[int]:
    async with start_contract_server() as port:
        yield port


async def test_probe_script_sees_answers_and_refusals(contract_server: int) -> None:
    closed_port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        probe_script(),
        str(contract_server),
        str(closed_port),
        "/work",
        "/readyz",
        "0.01",
        "0.2",
        stdout=subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    events = parse_probe_output(out.decode())
    main = [e for e in events if e.kind == "main"]
    ready = [e for e in events if e.kind == "ready"]
    assert main
    assert all(e.outcome == "answered" and e.status == 200 for e in main)
    assert ready
    assert all(e.outcome == "refused" for e in ready)


def test_parse_probe_output_skips_noise() -> None:
    text = 'hello\n{"t": 1.5, "kind": "main", "outcome": "refused", "status": null}\n{bad\n'
    assert parse_probe_output(text) == [ProbeEvent(1.5, "main", "refused", None)]


def test_the_script_is_the_shipped_module() -> None:
    """The sidecar runs the text of graceful/harness/probe_script.py, the module that is
    linted and type-checked with the rest (and shipped in the wheel, as package data)."""
    module = Path(graceful.harness.__file__).parent / "probe_script.py"
    assert probe_script() == module.read_text()
    compile(probe_script(), "probe_script.py", "exec")


def test_the_script_needs_only_the_standard_library() -> None:
    """Sidecar images have a python3 but no graceful: with site-packages and the environment
    ignored (-I -S), the script still runs and reports a refused port."""
    args = [str(free_port()), "0", "/work", "/readyz", "0.01", "0.05"]
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe_script(), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    events = parse_probe_output(proc.stdout)
    assert events
    assert {(e.kind, e.outcome) for e in events} == {("main", "refused")}  # admin 0: not probed
