"""``graceful.startup.run_startup``: steps in order, a failure stops them, a stop aborts them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
import structlog
from structlog.testing import capture_logs

from graceful.startup import StartOutcome, StartupStep, run_startup

LOG = structlog.get_logger("graceful")


def recording(name: str, journal: list[str]) -> StartupStep:
    async def step() -> None:
        await asyncio.sleep(0)
        journal.append(name)

    return name, step


def named(name: str, func: Callable[[], Awaitable[object]]) -> StartupStep:
    return name, func


async def test_steps_run_in_order_and_each_is_logged() -> None:
    journal: list[str] = []
    steps = [recording(name, journal) for name in ("config", "db", "cache")]
    with capture_logs() as logs:
        outcome = await run_startup(steps, asyncio.Event(), LOG)
    assert outcome is StartOutcome.STARTED
    assert journal == ["config", "db", "cache"]
    assert [(e["event"], e["hook"]) for e in logs] == [
        ("startup.step", "config"),
        ("startup.step", "db"),
        ("startup.step", "cache"),
    ]
    assert all(e["seconds"] >= 0 for e in logs)


async def test_no_steps_is_started() -> None:
    assert await run_startup([], asyncio.Event(), LOG) is StartOutcome.STARTED


async def test_failing_step_is_failed_logged_and_ends_startup() -> None:
    journal: list[str] = []

    async def connect() -> None:
        raise ConnectionRefusedError("db:5432 refused")

    steps = [recording("config", journal), named("connect", connect), recording("cache", journal)]
    with capture_logs() as logs:
        outcome = await run_startup(steps, asyncio.Event(), LOG)
    assert outcome is StartOutcome.FAILED
    assert journal == ["config"]  # the step after the failure never ran
    failed = [e for e in logs if e["event"] == "startup.failed"]
    assert len(failed) == 1
    assert failed[0]["log_level"] == "error"
    assert failed[0]["error"] == "ConnectionRefusedError: db:5432 refused"
    assert isinstance(failed[0]["exc_info"], ConnectionRefusedError)


async def test_stop_during_a_step_aborts_and_cancels_the_step() -> None:
    """1. The second step waits for something that never comes.
    2. A stop is requested while it waits.
    Result: ABORTED; the step saw its cancellation and cleaned up; the third never ran."""
    journal: list[str] = []
    waiting = asyncio.Event()
    cancelled = asyncio.Event()
    stop = asyncio.Event()

    async def migrate() -> None:
        waiting.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            journal.append("migrate cancelled")
            cancelled.set()
            raise

    steps = [recording("config", journal), named("migrate", migrate), recording("cache", journal)]
    starting = asyncio.get_running_loop().create_task(run_startup(steps, stop, LOG))
    await waiting.wait()
    assert not starting.done()  # control: without the stop, startup would wait
    stop.set()
    async with asyncio.timeout(10):  # a failure guard: the step must be cancelled
        await cancelled.wait()
    assert await starting is StartOutcome.ABORTED
    assert journal == ["config", "migrate cancelled"]


async def test_stop_requested_after_startup_leaves_it_started() -> None:
    stop = asyncio.Event()
    journal: list[str] = []
    assert await run_startup([recording("only", journal)], stop, LOG) is StartOutcome.STARTED
    stop.set()
    assert journal == ["only"]


async def test_step_raising_cancelled_error_by_itself_is_failed() -> None:
    async def wait_for_cancelled_connect() -> None:
        connect = asyncio.get_running_loop().create_future()
        connect.cancel()
        await connect

    with capture_logs():
        outcome = await run_startup(
            [named("connect", wait_for_cancelled_connect)], asyncio.Event(), LOG
        )
    assert outcome is StartOutcome.FAILED


async def test_cancelling_the_caller_cancels_the_running_step() -> None:
    waiting = asyncio.Event()
    release = asyncio.Event()
    journal: list[str] = []

    async def migrate() -> None:
        waiting.set()
        try:
            await release.wait()
            journal.append("migrate finished")
        except asyncio.CancelledError:
            journal.append("migrate cancelled")
            raise

    starting = asyncio.get_running_loop().create_task(
        run_startup([named("migrate", migrate)], asyncio.Event(), LOG)
    )
    await waiting.wait()
    starting.cancel()
    try:
        with pytest.raises(asyncio.CancelledError):
            await starting
        assert journal == ["migrate cancelled"]
    finally:
        release.set()  # let an orphaned step end, if there is one
