"""Issue 17: a FastAPI (or aiohttp) app of the usual shape, unchanged, under ``graceful serve``.

The apps (``tests/apps/fastapi_typical.py``, ``aiohttp_typical.py``) start a poller in their
startup that nothing cancels and serve a ``while True`` event stream. Under uvicorn such an app
exits 0; under graceful it used to exit 3 on every stop (the poller counted as cut work) and the
stream was cut mid-body at the drain deadline. Each check has its control beside it: work left
running by a request handler is still cut work (exit 3), and an endless stream that is not an
event stream is still cut at the deadline unless the app opts it in.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import time
from collections.abc import Iterator

import pytest

from tests.support import ServiceProcess
from tests.test_pid1 import UNSHARE, namespace_pid1
from tests.test_serve import Background, RawStream, ended_cleanly, get, report, serving

pytestmark = pytest.mark.slow

FASTAPI = "fastapi_typical:app"
AIOHTTP = "aiohttp_typical:app"

HAS_UNSHARE = os.geteuid() == 0 and shutil.which("unshare") is not None


@contextlib.contextmanager
def service_as_pid1(
    target: str, *options: str, pid1: bool
) -> Iterator[tuple[ServiceProcess, int, int]]:
    """``graceful serve target``, as a PID namespace's PID 1 when ``pid1``; yields the pid to
    signal too."""
    if pid1 and not HAS_UNSHARE:
        pytest.skip("needs root and unshare(1) to make a PID namespace")
    with serving(target, *options, argv=UNSHARE if pid1 else None) as (service, port):
        target_pid = namespace_pid1(service.pid) if pid1 else service.pid
        try:
            yield service, port, target_pid
        finally:
            if pid1:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(target_pid, signal.SIGKILL)


class Stream(RawStream):
    """A raw streaming GET that notes when its body's last chunk arrived."""

    ended_at: float | None = None

    def _recv(self) -> bytes:
        chunk = super()._recv()
        if self.ended_at is None and ended_cleanly(bytes(self.data) + chunk):
            self.ended_at = time.monotonic()
        return chunk

    def wait_flowing(self) -> None:
        deadline = time.monotonic() + 20
        while b"\r\n\r\n" not in self.data or self.data.endswith(b"\r\n\r\n"):
            assert time.monotonic() < deadline, bytes(self.data)
            time.sleep(0.01)


SHAPES = [
    pytest.param(FASTAPI, [], True, id="fastapi-pid1"),
    pytest.param(FASTAPI, ["--workers", "2"], True, id="fastapi-workers2-pid1"),
    pytest.param(AIOHTTP, [], False, id="aiohttp"),
]


@pytest.mark.parametrize(("target", "options", "pid1"), SHAPES)
def test_idle_stop_with_a_never_cancelled_startup_task_exits_0(
    target: str, options: list[str], pid1: bool
) -> None:
    """1. The app's startup started a poller nobody cancels. 2. SIGTERM, nothing in flight.
    Result: exit 0; the poller is cancelled after the app's own shutdown, logged at info by
    name, and is not in the report's ``leftover_tasks``."""
    with service_as_pid1(target, *options, pid1=pid1) as (service, _port, pid):
        os.kill(pid, signal.SIGTERM)
        assert service.wait() == 0, service.output()
    cancelled = [e for e in service.events() if e.get("event") == "tasks.background_cancelled"]
    assert cancelled, service.output()
    assert all(e["level"] == "info" for e in cancelled)
    assert any("poll" in label for e in cancelled for label in e["tasks"])
    assert "tasks.leftover_cancelled" not in service.event_names()
    assert report(service)["exit_code"] == 0


@pytest.mark.parametrize("target", [FASTAPI, AIOHTTP])
def test_control_a_task_left_running_by_a_handler_is_still_cut_work(target: str) -> None:
    """The control: the same never-ending task, started by a request handler, may be a job a
    client was told was accepted: exit 3, ``tasks.leftover_cancelled`` names it."""
    with serving(target) as (service, port):
        assert get(port, "/spawn")[0] == 200
        service.signal(signal.SIGTERM)
        assert service.wait() == 3, service.output()
    leftover = service.wait_event("tasks.leftover_cancelled")
    assert any("forever" in label for label in leftover["tasks"])
    assert "background=True" in leftover["hint"]


def test_a_handlers_background_task_is_cancelled_not_cut() -> None:
    """``current_runtime().create_task(..., background=True)`` from a handler: the drain does
    not wait for it (the stop takes milliseconds, not the drain deadline), exit 0."""
    with serving(FASTAPI, "--stop-timeout", "5") as (service, port):
        assert get(port, "/spawn-background")[0] == 200
        began = time.monotonic()
        service.signal(signal.SIGTERM)
        assert service.wait() == 0, service.output()
        assert time.monotonic() - began < 2.5  # the drain deadline is at 3.5 s
    cancelled = [e for e in service.events() if e.get("event") == "tasks.background_cancelled"]
    # Right after the drain (phase cancel), before the flush; the lifespan's poller after close.
    (refresher,) = [e for e in cancelled if any(t.startswith("refresher") for t in e["tasks"])]
    assert refresher["phase"] == "cancel"


@pytest.mark.parametrize(("target", "options", "pid1"), SHAPES)
def test_slow_requests_are_answered_and_event_streams_end_cleanly_at_once(
    target: str, options: list[str], pid1: bool
) -> None:
    """1. Two slow requests and three ``while True`` event streams are open. 2. SIGTERM.
    Result: each stream gets its chunked terminator within a second of the signal and the
    app's generator ran its ``finally``; the slow requests are answered; exit 0, drained."""
    with service_as_pid1(target, *options, pid1=pid1) as (service, port, pid):
        slow = [Background(port, "/slow?s=1.5") for _ in range(2)]
        streams = [Stream(port, "/events") for _ in range(3)]
        for stream in streams:
            stream.wait_first_event()
        signalled = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        for stream in streams:
            body = stream.result()
            assert ended_cleanly(body), body[-120:]
        assert all(s.ended_at is not None for s in streams)
        streams_ended = max(s.ended_at or 0.0 for s in streams) - signalled
        for request in slow:
            assert request.result()[0] == 200
        assert service.wait() == 0, service.output()
    assert streams_ended < 1.0
    assert service.output().count("APP events finally") == 3
    stop = report(service)
    assert stop["exit_code"] == 0
    ended = [e for e in service.events() if e.get("event") == "streams.ended"]
    assert sorted(r for e in ended for r in e["requests"]) == ["GET /events"] * 3


@pytest.mark.parametrize("target", [FASTAPI, AIOHTTP])
def test_control_an_endless_plain_stream_is_still_cut_at_the_deadline(target: str) -> None:
    """The control: an endless ``text/plain`` stream is not an event stream; it keeps the
    contract of other streams (told through ``draining()``, cut at the drain deadline):
    no terminator, exit 3."""
    with serving(target, "--stop-timeout", "2") as (service, port):
        stream = Stream(port, "/plain-stream")
        stream.wait_flowing()
        service.signal(signal.SIGTERM)
        body = stream.result()
        assert not ended_cleanly(body)
        assert service.wait() == 3, service.output()


def test_an_endless_plain_stream_opted_in_ends_cleanly() -> None:
    """``end_on_drain(scope)`` opts another stream in: it ends like an event stream, exit 0."""
    with serving(FASTAPI, "--stop-timeout", "2") as (service, port):
        stream = Stream(port, "/plain-stream?end=1")
        stream.wait_flowing()
        service.signal(signal.SIGTERM)
        assert ended_cleanly(stream.result())
        assert service.wait() == 0, service.output()


@pytest.mark.parametrize("target", [FASTAPI, AIOHTTP])
def test_a_client_that_stopped_reading_does_not_hold_the_other_streams(target: str) -> None:
    """1. A client opens a stream of 64 KiB events and never reads (its window fills, the
    server's writes wait). 2. Three healthy event streams are open. 3. SIGTERM.
    Result: the healthy streams end cleanly within a second; the stalled one is named in
    ``streams.end_undelivered`` (the control: the fault is seen, not hidden) and dropped;
    exit 0 well before the drain deadline."""
    with serving(target, "--stop-timeout", "10") as (service, port):
        stalled = socket.create_connection(("127.0.0.1", port))
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(b"GET /events-big HTTP/1.1\r\nHost: test\r\n\r\n")
        streams = [Stream(port, "/events") for _ in range(3)]
        for stream in streams:
            stream.wait_first_event()
        time.sleep(0.3)  # the stalled stream's buffers fill
        signalled = time.monotonic()
        service.signal(signal.SIGTERM)
        for stream in streams:
            assert ended_cleanly(stream.result())
        assert max(s.ended_at or 99.0 for s in streams) - signalled < 1.0
        assert service.wait() == 0, service.output()
        assert time.monotonic() - signalled < 5.0  # the drain deadline is at 7 s
        stalled.close()
    (undelivered,) = [e for e in service.events() if e.get("event") == "streams.end_undelivered"]
    assert undelivered["requests"] == ["GET /events-big"]


def test_a_generator_that_swallows_the_cancellation_is_ended_without_spinning() -> None:
    """A generator that catches the cancellation and yields on: its next write is refused
    (as a closed connection would be), the stream still ends cleanly, exit 0, no traceback."""
    with serving(FASTAPI, "--stop-timeout", "4") as (service, port):
        stream = Stream(port, "/events-stubborn")
        stream.wait_first_event()
        service.signal(signal.SIGTERM)
        assert ended_cleanly(stream.result())
        assert service.wait() == 0, service.output()
    assert service.output().count("APP stubborn swallowed") == 1
    assert "Traceback" not in service.output()


def test_a_startup_task_that_refuses_to_die_does_not_take_the_whole_budget() -> None:
    """The lifespan's poller swallows its cancellation: it is given up after the cancel
    phase's grace (``task.refused_to_exit``), not at the exit deadline; exit 0."""
    with serving(FASTAPI, "--stop-timeout", "10", env={"APP_STUBBORN_POLLER": "1"}) as (
        service,
        _port,
    ):
        signalled = time.monotonic()
        service.signal(signal.SIGTERM)
        assert service.wait() == 0, service.output()
        assert time.monotonic() - signalled < 3.0  # the exit deadline is at 9 s
    assert "task.refused_to_exit" in service.event_names()
