"""The admin server under hostile input: idle connections, a flood of them, malformed requests.

Issue 9, item 9. The server runs on an event loop in a thread of this process (asyncio's and
uvloop's), and the tests talk to it over real sockets, as a kubelet or an attacker would.
One test runs a whole service in a child process with a low file limit, where idle admin
connections used to starve the main port and ``/livez``.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import select
import signal
import socket
import sys
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pytest
import structlog
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from graceful.health import MAX_CONNECTIONS, REQUEST_TIMEOUT_S, AdminServer
from tests.support import ServiceProcess, free_port

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
GUARD_S = 20.0  # hang guard only: every wait below normally ends in milliseconds


@dataclass
class Admin:
    """An AdminServer serving from its own loop in a thread, and what went wrong in it."""

    loop: asyncio.AbstractEventLoop
    server: AdminServer
    loop_errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.port

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the server's loop and return its result."""
        future: Future[Any] = Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except Exception as exc:
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return future.result(GUARD_S)

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=GUARD_S)


@contextlib.contextmanager
def serving(loop_name: str, *, host: str = "127.0.0.1", **options: Any) -> Iterator[Admin]:
    """An AdminServer on ``host`` (a free port), serving from a loop in a thread."""
    loop = LOOPS[loop_name]()
    server = AdminServer(
        host=host,
        port=0,
        is_live=lambda: True,
        is_ready=lambda: True,
        registry=CollectorRegistry(),
        **options,
    )
    admin = Admin(loop, server)
    # Anything raised out of a protocol callback lands here (asyncio logs it with a traceback).
    loop.set_exception_handler(lambda _loop, context: admin.loop_errors.append(context))
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        started.set()
        loop.run_forever()
        loop.run_until_complete(server.close())
        loop.close()

    thread = threading.Thread(target=run, name=f"admin-{loop_name}", daemon=True)
    thread.start()
    assert started.wait(GUARD_S)
    try:
        yield admin
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(GUARD_S)


@pytest.fixture(params=sorted(LOOPS), scope="module")
def admin(request: pytest.FixtureRequest) -> Iterator[Admin]:
    """A server with a short request timeout, shared by the tests of one loop."""
    with serving(request.param, request_timeout=0.5) as server:
        yield server


def get(port: int, path: str = "/livez", host: str = "127.0.0.1") -> int:
    connection = http.client.HTTPConnection(host, port, timeout=GUARD_S)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


def read_all(sock: socket.socket) -> bytes:
    """What the server sends until it closes; a reset counts as a close."""
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer: bytes) -> int | None:
    if not answer:
        return None
    assert answer.startswith(b"HTTP/1.1 "), answer[:80]
    return int(answer[9:12])


# --- slowloris and idle connections -------------------------------------------------------------


def test_a_request_never_finished_gets_408_and_is_closed(admin: Admin) -> None:
    with admin.connect() as sock:
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n")  # no blank line: never finished
        answer = read_all(sock)  # returns when the server closes: after request_timeout
    assert status_of(answer) == 408
    assert get(admin.port) == 200


def test_a_connection_that_sends_nothing_is_closed(admin: Admin) -> None:
    with admin.connect() as sock:
        assert status_of(read_all(sock)) == 408
    assert admin.call(lambda: admin.server.open_connections) == 0


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_idle_connections_over_the_cap_close_the_oldest_and_livez_answers(loop_name: str) -> None:
    """1. Open twice the cap of idle connections (requests never sent).
    2. /livez answers 200, and so does /readyz.
    3. The server holds no more than the cap; the oldest idle connections were closed at
       once (they read EOF), the newest are still open: the flood was real and was capped.
    4. One ``admin.connections_capped`` warning, not one per connection.
    """
    extra = MAX_CONNECTIONS
    with structlog.testing.capture_logs() as logs, serving(loop_name) as admin:
        idle = [admin.connect() for _ in range(MAX_CONNECTIONS + extra)]
        try:
            assert get(admin.port) == 200
            assert get(admin.port, "/readyz") == 200
            assert admin.call(lambda: admin.server.open_connections) <= MAX_CONNECTIONS
            for sock in idle[:extra]:
                assert read_all(sock) == b""  # closed at the cap, without an answer
            for sock in idle[-(MAX_CONNECTIONS // 2) :]:
                assert not select.select([sock], [], [], 0)[0], "newest idle ones stay open"
        finally:
            for sock in idle:
                sock.close()
    capped = [entry for entry in logs if entry["event"] == "admin.connections_capped"]
    assert len(capped) == 1, capped
    assert capped[0]["log_level"] == "warning"
    assert capped[0]["max_connections"] == MAX_CONNECTIONS
    assert not admin.loop_errors


# --- malformed and oversized requests -----------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /livez HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
        (b"GET /livez HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
        (b"GET /livez HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32) + b"\r\n\r\n", 400),  # TLS
        (b"DELETE /livez HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"POST /livez HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n", 405),
        (b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"GET /livez HTTP/1.0\r\n\r\n", 200),
        (b"HEAD /livez HTTP/1.1\r\nHost: x\r\n\r\n", 200),
        # Pipelined: the first is answered, the connection closes, the rest is ignored.
        (b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 200),
        (b"GET /livez HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (b"GET /livez HTTP/1.1\r\nHost: x\r\n" + b"X: a\r\n" * 2000 + b"\r\n", 431),
    ],
)
def test_malformed_requests_get_4xx_and_a_close(
    admin: Admin, request_bytes: bytes, status: int
) -> None:
    with admin.connect() as sock:
        sock.sendall(request_bytes)
        answer = read_all(sock)
    assert status_of(answer) == status
    assert answer.count(b"HTTP/1.1 ") == 1
    assert get(admin.port) == 200
    assert not admin.loop_errors


def test_a_huge_header_is_refused_before_it_is_read(admin: Admin) -> None:
    """64 MiB of header: the server answers 431 after 8 KiB and closes, so the client cannot
    finish sending; the server's memory stays bounded while it is sent."""
    payload = memoryview(b"GET /livez HTTP/1.1\r\nHost: x\r\nX: " + b"a" * (64 << 20))
    tracemalloc.start()
    try:
        with admin.connect() as sock, pytest.raises((BrokenPipeError, ConnectionResetError)):
            sock.sendall(payload)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"peak {peak} bytes while a 64 MiB header came in"
    assert get(admin.port) == 200
    assert not admin.loop_errors


def test_a_failing_metrics_collector_gets_500_and_the_server_goes_on() -> None:
    class Broken:
        def collect(self) -> list[Any]:
            raise RuntimeError("collector bug")

    registry = CollectorRegistry()
    with structlog.testing.capture_logs() as logs, serving("asyncio") as admin:
        admin.server._registry = registry
        registry.register(Broken())
        assert get(admin.port, "/metrics") == 500
        assert get(admin.port) == 200
    assert [entry["event"] for entry in logs] == ["admin.handler_failed"]
    assert not admin.loop_errors


# --- property: whatever a client sends ----------------------------------------------------------

METHODS = st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"OPTIONS", b"PRI", b"G\x00T", b""])
TARGETS = st.one_of(
    st.sampled_from([b"/livez", b"/readyz", b"/metrics", b"/", b"*", b"/livez?x=1", b"//"]),
    st.binary(max_size=40),
)
VERSIONS = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"http/1.1", b"", b"HTTP/1.1x"])
HEADER = st.tuples(
    st.one_of(st.sampled_from([b"Host", b"Content-Length", b"Transfer-Encoding"]), st.binary()),
    st.one_of(st.sampled_from([b"x", b"0", b"-1", b"chunked", b"9" * 30]), st.binary()),
).map(lambda kv: kv[0] + b": " + kv[1] + b"\r\n")
REQUEST = st.builds(
    lambda method, target, version, headers, body: (
        method + b" " + target + b" " + version + b"\r\n" + b"".join(headers) + b"\r\n" + body
    ),
    METHODS,
    TARGETS,
    VERSIONS,
    st.lists(HEADER, max_size=5),
    st.binary(max_size=64),
)
TRAFFIC = st.one_of(
    REQUEST,
    st.lists(REQUEST, min_size=2, max_size=4).map(b"".join),  # pipelined
    st.binary(min_size=1, max_size=512),
)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(traffic=TRAFFIC, cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=3))
def test_any_bytes_get_an_answer_or_a_close_never_a_crash(
    admin: Admin, traffic: bytes, cuts: list[int]
) -> None:
    """Sent in pieces, then half-closed: an answer below 500 or a plain close; the loop never
    sees an exception, nothing is logged, and /livez answers after."""
    with structlog.testing.capture_logs() as logs, admin.connect() as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = 0
        for cut in sorted({*cuts, len(traffic)}):
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(traffic[start:cut])
            start = max(start, cut)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        status = status_of(read_all(sock))
    assert status is None or status < 500
    assert logs == []
    assert not admin.loop_errors
    assert get(admin.port) == 200


# --- a whole service with a low file limit ------------------------------------------------------

FILE_LIMIT = 128
ATTACKERS = 2 * FILE_LIMIT  # more connections than the process can hold open at once

LIMITED_SERVICE = f"""
import asyncio, os, resource
resource.setrlimit(resource.RLIMIT_NOFILE, ({FILE_LIMIT}, {FILE_LIMIT}))
import graceful

async def pong(reader, writer):
    await reader.readline()
    writer.write(b"pong\\n")
    await writer.drain()
    writer.close()

async def main(runtime):
    server = await asyncio.start_server(pong, "127.0.0.1", int(os.environ["PORT"]))
    runtime.on_shutdown(server.close, name="main.close")
    print("APP serving", flush=True)

raise SystemExit(graceful.run(main, config=graceful.Config.from_env()))
"""


def _connect_all(port: int, count: int) -> list[socket.socket]:
    """Open ``count`` connections without waiting for each (an attacker does not wait)."""
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        sockets.append(sock)
    pending = list(sockets)
    deadline = GUARD_S
    while pending and deadline > 0:  # writable once the handshake is done (or failed)
        _, writable, _ = select.select([], pending, [], 0.5)
        pending = [s for s in pending if s not in writable]
        deadline -= 0.5 if not writable else 0
    return sockets


@pytest.mark.slow
@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_idle_admin_connections_cannot_starve_the_service(loop_name: str) -> None:
    """1. A service whose file limit is 128 runs a main port and the admin port.
    2. 256 connections to the admin port, none of which sends a request: more than the
       process could hold open (before the cap, they used up its file descriptors).
    3. /livez answers 200, the main port answers, and the process holds fewer files than
       its limit; ``admin.connections_capped`` is logged and nothing else goes wrong.
    4. An idle connection is closed at the default request timeout (408).

    Result: an attacker holding idle admin connections neither restarts the pod (liveness)
    nor takes the service down.
    """
    port, admin_port = free_port(), free_port()
    env = {
        "PORT": str(port),
        "ADMIN_PORT": str(admin_port),
        "GRACEFUL_LOOP": loop_name,
        "GRACEFUL_STOP_TIMEOUT": "5",
    }
    with ServiceProcess([sys.executable, "-c", LIMITED_SERVICE], env=env) as service:
        service.wait_for("APP serving")
        attackers = _connect_all(admin_port, ATTACKERS)
        try:
            assert get(admin_port) == 200
            with socket.create_connection(("127.0.0.1", port), timeout=GUARD_S) as main:
                main.sendall(b"ping\n")
                assert main.recv(16) == b"pong\n"
            open_files = len(os.listdir(f"/proc/{service.pid}/fd"))
            assert open_files < FILE_LIMIT - 8, open_files
            capped = service.wait_event("admin.connections_capped")
            assert capped["max_connections"] == MAX_CONNECTIONS
            # One more idle connection, after the flood: closed at the default timeout.
            with socket.create_connection(("127.0.0.1", admin_port), timeout=GUARD_S) as idle:
                idle.settimeout(REQUEST_TIMEOUT_S + GUARD_S)
                assert status_of(read_all(idle)) == 408
        finally:
            for sock in attackers:
                sock.close()
        service.signal(signal.SIGTERM)
        assert service.wait() == 0, service.output()[-4000:]
    problems = [
        line
        for line in service.lines
        if "Traceback" in line or "out of system resource" in line or "Too many open" in line
    ]
    assert not problems, "\n".join(problems)
    levels = {json.loads(line).get("level") for line in service.lines if line.startswith("{")}
    assert "error" not in levels, service.output()
