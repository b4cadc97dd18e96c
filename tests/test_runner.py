"""``graceful.runner``: what the loop's owner does before closing it, each step bounded.

``cancel_leftovers`` runs on the test's own loop (it is the loop's owner here);
``exit_now_if_threads_block`` calls ``os._exit``, so it runs only in a child process.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import structlog
import uvloop
from structlog.testing import capture_logs

from graceful.runner import cancel_leftovers, task_label
from tests.support import ROOT

LOG = structlog.get_logger("graceful")
LOOP_FACTORIES = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


async def poll_forever() -> None:
    await asyncio.Event().wait()


async def test_task_label_is_name_and_coroutine() -> None:
    task = asyncio.get_running_loop().create_task(poll_forever(), name="poller")
    try:
        assert task_label(task) == "poller (poll_forever)"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_leftover_tasks_are_cancelled_and_named() -> None:
    loop = asyncio.get_running_loop()
    first = loop.create_task(poll_forever(), name="first")
    second = loop.create_task(poll_forever(), name="second")
    with capture_logs() as logs:
        labels, generators_closed = await cancel_leftovers(loop.time() + 10, LOG)
    assert {"first (poll_forever)", "second (poll_forever)"} <= set(labels)
    assert first.cancelled()
    assert second.cancelled()
    assert generators_closed
    (warning,) = [e for e in logs if e["event"] == "tasks.leftover_cancelled"]
    assert warning["count"] == len(labels)
    assert warning["tasks"] == labels
    assert "current_runtime().create_task" in warning["hint"]
    assert "background=True" in warning["hint"]
    assert not [e for e in logs if e["event"] == "task.refused_to_exit"]


async def test_nothing_left_over_logs_nothing() -> None:
    loop = asyncio.get_running_loop()
    with capture_logs() as logs:
        labels, generators_closed = await cancel_leftovers(loop.time() + 10, LOG)
    assert (labels, generators_closed, logs) == ([], True, [])


async def test_task_already_being_cancelled_by_its_owner_is_not_a_leftover() -> None:
    """1. ``closing`` was cancelled by its owner and is still cleaning up (it awaits ``release``).
    2. ``forgotten`` was never cancelled (the control).
    Result: only ``forgotten`` is a leftover; ``closing`` finishes its clean-up undisturbed."""
    loop = asyncio.get_running_loop()
    release = asyncio.Event()
    cleaning = asyncio.Event()

    async def close_connection() -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cleaning.set()
            await release.wait()  # a clean-up that takes a while
            return "closed"
        return "never"

    closing = loop.create_task(close_connection(), name="closing")
    forgotten = loop.create_task(poll_forever(), name="forgotten")
    await asyncio.sleep(0)
    closing.cancel()
    await cleaning.wait()
    assert closing.cancelling()  # the state the exclusion keys on

    with capture_logs():
        labels, _ = await cancel_leftovers(loop.time() + 10, LOG)
    assert "forgotten (poll_forever)" in labels
    assert not any(label.startswith("closing ") for label in labels)
    assert forgotten.cancelled()
    release.set()
    assert await closing == "closed"  # not cancelled a second time


async def test_task_refusing_to_exit_is_logged_with_its_stack() -> None:
    loop = asyncio.get_running_loop()
    release = asyncio.Event()
    refusals = 0

    async def stubborn_worker() -> None:
        nonlocal refusals
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                refusals += 1

    stubborn = loop.create_task(stubborn_worker(), name="stubborn")
    cooperative = loop.create_task(poll_forever(), name="cooperative")  # control
    await asyncio.sleep(0)
    try:
        with capture_logs() as logs:
            async with asyncio.timeout(10):  # a failure guard: the deadline must bound the wait
                labels, _ = await cancel_leftovers(loop.time() + 0.05, LOG)
    finally:
        release.set()  # after the call: only then may the stubborn task end
    assert {
        "stubborn (test_task_refusing_to_exit_is_logged_with_its_stack.<locals>.stubborn_worker)",
        "cooperative (poll_forever)",
    } <= set(labels)
    refused = [e for e in logs if e["event"] == "task.refused_to_exit"]
    assert [e["task"] for e in refused] == ["stubborn"]
    assert refused[0]["log_level"] == "error"
    assert "stubborn_worker" in refused[0]["stack"]
    assert refusals == 1
    assert cooperative.cancelled()
    await stubborn  # it ended when released, not when cancelled


async def close_generator_on_a_fresh_loop(*, hang: bool) -> tuple[bool, list[str], list[Any]]:
    """Suspend an async generator at ``yield``, then run ``cancel_leftovers`` (50 ms left)."""
    journal: list[str] = []

    async def stream() -> AsyncIterator[int]:
        try:
            yield 1
        finally:
            journal.append("closing")
            if hang:
                await asyncio.Event().wait()

    generator = stream()
    assert await anext(generator) == 1
    with capture_logs() as logs:
        async with asyncio.timeout(10):  # a failure guard: the deadline must bound the wait
            _, closed = await cancel_leftovers(asyncio.get_running_loop().time() + 0.05, LOG)
    return closed, journal, logs


@pytest.mark.parametrize("factory", LOOP_FACTORIES.values(), ids=LOOP_FACTORIES.keys())
def test_hanging_async_generator_is_abandoned_at_the_deadline(
    factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    """1. An async generator is suspended at ``yield``; its ``finally`` waits forever.
    2. Control: one whose ``finally`` returns is closed.
    Result: the hanging one is abandoned at the deadline and the call returns False.

    Each on a fresh loop of its own: a loop closes its async generators once."""
    with asyncio.Runner(loop_factory=factory) as runner:
        closed, journal, logs = runner.run(close_generator_on_a_fresh_loop(hang=False))
    assert (closed, journal, logs) == (True, ["closing"], [])

    with asyncio.Runner(loop_factory=factory) as runner:
        closed, journal, logs = runner.run(close_generator_on_a_fresh_loop(hang=True))
    assert (closed, journal) == (False, ["closing"])
    assert [(e["event"], e["reason"]) for e in logs] == [
        ("shutdown.asyncgens_abandoned", "exit deadline")
    ]


# --- threads that would hold the exit (a child process: os._exit) ---------------------------------

THREADS_CHILD = textwrap.dedent(
    """
    import sys
    import threading

    from graceful.logs import configure_logging, get_logger
    from graceful.runner import exit_now_if_threads_block

    configure_logging(format="json")
    kind = sys.argv[1]
    release = threading.Event()
    started = threading.Event()

    def work():
        started.set()
        release.wait()

    thread = threading.Thread(target=work, name="sync-flush", daemon=kind == "daemon")
    thread.start()
    started.wait()
    if kind == "finishing":
        release.set()
    exit_now_if_threads_block(7, 0.2 if kind != "finishing" else 30.0, get_logger())
    print("returned", flush=True)
    release.set()
    """
)


def run_threads_child(kind: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", THREADS_CHILD, kind],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_stuck_thread_makes_the_process_exit_now_with_exit_6() -> None:
    """A thread that will not end is an overrun (ExitCode.OVERRAN), whatever the stop's code
    was: the process could not end on its own (it used to exit with the stop's code, 0)."""
    done = run_threads_child("stuck")
    assert done.returncode == 6, done.stderr
    assert "returned" not in done.stdout
    assert '"event": "shutdown.threads_abandoned"' in done.stdout
    assert '"threads": ["sync-flush"]' in done.stdout


def test_threads_that_finish_or_are_daemons_let_the_exit_continue() -> None:
    for kind in ("finishing", "daemon"):
        done = run_threads_child(kind)
        assert done.returncode == 0, (kind, done.stderr)
        assert "returned" in done.stdout
        assert "threads_abandoned" not in done.stdout


END_CHILD = textwrap.dedent(
    """
    import atexit, logging, sys, threading, time

    from graceful.runner import end_process

    how, marks = sys.argv[1], sys.argv[2]

    class TornDown:
        # Alive until the interpreter's module teardown, which end_process skips. What it
        # needs is its own: the module's globals are gone by the time it runs.
        def __init__(self, path, write):
            self.path, self.write = path, write

        def __del__(self):
            self.write(self.path, "teardown")

    def append(path, line, open=open):
        with open(path, "a") as f:
            f.write(line + "\\n")

    kept = TornDown(marks, append)
    atexit.register(lambda: open(marks, "a").write("atexit first registered\\n"))
    atexit.register(lambda: open(marks, "a").write("atexit last registered\\n"))
    handler = logging.FileHandler(marks + ".log", delay=False)
    logging.getLogger("app").addHandler(handler)

    def slow_writer():
        time.sleep(0.3)
        with open(marks, "a") as f:
            f.write("thread done\\n")

    threading.Thread(target=slow_writer).start()
    logging.getLogger("app").warning("logged")  # flushed by logging.shutdown (atexit)
    sys.stdout.write("unflushed stdout")  # a pipe: block-buffered, no newline
    if how == "end":
        end_process(5)
    raise SystemExit(5)
    """
)


@pytest.mark.parametrize("how", ["end", "exit"])
def test_end_process_runs_what_an_exit_owes_and_keeps_the_code(how: str, tmp_path: Any) -> None:
    """end_process joins the threads, runs every atexit handler in the interpreter's order
    (last registered first), flushes stdout and the log handlers and exits with the code, as
    ``SystemExit`` does (the control, ``exit``); only the module teardown is skipped."""
    marks = tmp_path / "marks"
    done = subprocess.run(
        [sys.executable, "-c", END_CHILD, how, str(marks)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 5, done.stderr
    assert done.stdout == "unflushed stdout"
    lines = marks.read_text().splitlines()
    expected = ["thread done", "atexit last registered", "atexit first registered"]
    assert lines[:3] == expected, lines
    assert (tmp_path / "marks.log").read_text() == "logged\n"
    # The control shows the teardown that end_process leaves out.
    assert lines[3:] == ([] if how == "end" else ["teardown"]), lines


def test_end_process_off_the_main_thread_raises_system_exit() -> None:
    from graceful.runner import end_process

    raised: list[BaseException] = []

    def off_main() -> None:
        try:
            end_process(3)
        except SystemExit as exc:
            raised.append(exc)

    thread = threading.Thread(target=off_main)
    thread.start()
    thread.join(10)
    assert [type(e) for e in raised] == [SystemExit]
    assert raised[0].code == 3
