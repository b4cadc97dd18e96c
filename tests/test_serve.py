"""``graceful serve module:attr`` in real processes: real uvicorn and aiohttp, real SIGTERM.

Every test starts ``graceful serve`` (the console script, as a Dockerfile's ``CMD`` would) on
an app of ``tests/apps`` that knows nothing of graceful but ``draining()``, talks to it over
real sockets on 127.0.0.1 and checks what the clients saw, the exit code and the log. Timeouts
are hang guards only; the tests wait on output lines and on bytes.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import APPS, ROOT, ServiceProcess, free_port
from tests.test_pid1 import UNSHARE, namespace_pid1

GRACEFUL = str(Path(sys.executable).parent / "graceful")
HANG_GUARD = 30.0

pytestmark = pytest.mark.slow


# -- clients --------------------------------------------------------------------------------------


def get(port: int, path: str, timeout: float = HANG_GUARD) -> tuple[int, bytes]:
    """GET over a new connection (http.client: no proxy settings apply)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


class Background:
    """A GET running in a thread; ``result()`` waits for its status and body."""

    def __init__(self, port: int, path: str) -> None:
        self._outcome: list[Any] = []
        self._thread = threading.Thread(target=self._run, args=(port, path), daemon=True)
        self._thread.start()

    def _run(self, port: int, path: str) -> None:
        try:
            self._outcome.append(get(port, path))
        except Exception as exc:
            self._outcome.append(exc)

    def result(self) -> tuple[int, bytes]:
        self._thread.join(HANG_GUARD)
        assert self._outcome, "the request never finished"
        outcome = self._outcome[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome  # type: ignore[no-any-return]


class RawStream:
    """A streaming GET on a raw socket: every byte the server sent, until it closed."""

    def __init__(self, port: int, path: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD)
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        self.data = bytearray()
        self.first_event = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with self.sock:
            while chunk := self._recv():
                self.data += chunk
                if b"data:" in self.data:
                    self.first_event.set()

    def _recv(self) -> bytes:
        try:
            return self.sock.recv(65536)
        except OSError:
            return b""

    def wait_first_event(self) -> None:
        assert self.first_event.wait(HANG_GUARD), bytes(self.data)

    def result(self) -> bytes:
        self._thread.join(HANG_GUARD)
        assert not self._thread.is_alive(), "the server never closed the stream"
        return bytes(self.data)


def ended_cleanly(raw: bytes) -> bool:
    """The chunked body ended with its last chunk (not cut with the connection)."""
    return raw.endswith(b"0\r\n\r\n")


# -- the service ----------------------------------------------------------------------------------


@contextlib.contextmanager
def serving(
    target: str, *options: str, env: dict[str, str] | None = None, argv: list[str] | None = None
) -> Iterator[tuple[ServiceProcess, int]]:
    """``graceful serve target`` on a free port of 127.0.0.1, ready when yielded."""
    port = free_port()
    command = [
        GRACEFUL,
        "serve",
        target,
        "--app-dir",
        str(APPS),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *options,
    ]
    with ServiceProcess((argv or []) + command, env=env) as service:
        service.wait_event("service.ready")
        yield service, port


def report(service: ServiceProcess) -> dict[str, Any]:
    return service.wait_event("shutdown.report")


# -- serving and stopping -------------------------------------------------------------------------

APPS_SERVED = [
    pytest.param("serve_starlette:app", [], id="starlette"),
    pytest.param("serve_aiohttp:app", [], id="aiohttp"),
    pytest.param("serve_aiohttp:make_app", ["--factory"], id="aiohttp-factory"),
]


@pytest.mark.parametrize(("target", "options"), APPS_SERVED)
def test_sigterm_answers_inflight_requests_and_ends_streams_cleanly(
    target: str, options: list[str]
) -> None:
    """Issue 12 items 1 and 3: an app that knows nothing of graceful, stopped by SIGTERM.

    1. ``graceful serve`` starts; the admin server answers (ready, metrics by server).
    2. A slow request is in flight and an SSE stream is open when SIGTERM arrives.
    3. Result: the slow request is answered 200; the stream gets its last event and the
       chunked terminator; the process exits 0 with a clean ``shutdown.report``.
    """
    admin = free_port()
    with serving(target, *options, "--admin-port", str(admin)) as (service, port):
        assert get(admin, "/readyz")[0] == 200
        assert b'graceful_inflight_requests{server="http"}' in get(admin, "/metrics")[1]
        slow = Background(port, "/slow?s=1.0")
        service.wait_for('"event": "slow started"')
        stream = RawStream(port, "/sse")
        stream.wait_first_event()
        service.signal(signal.SIGTERM)

        assert slow.result() == (200, b"done")
        body = stream.result()
        assert b"event: bye" in body
        assert ended_cleanly(body), body[-200:]
        assert service.wait() == 0
        stop = report(service)
        assert stop["exit_code"] == 0
        assert stop["inflight_at_signal"] == 2
        assert stop["drained"] is True


def test_control_a_stream_deaf_to_the_stop_is_cut_at_the_deadline() -> None:
    """Control for the test above: the clean end is the app's doing, and the test can see a cut.

    An endless ``text/plain`` stream without ``draining()`` is cut at the drain deadline: no
    chunked terminator, exit code 3 (work cut), and its access line says ``complete: false``
    beside the 200 its response started with (a request answered in full carries no such
    field). (An event stream deaf to the stop is ended by graceful at the drain's start:
    ``test_event_stream_deaf_to_the_stop_is_ended_at_the_drains_start``.)
    """
    with serving("serve_starlette:app", "--stop-timeout", "2") as (service, port):
        assert get(port, "/slow?s=0")[0] == 200
        stream = RawStream(port, "/stream-deaf")
        while b"line" not in stream.data:
            assert stream._thread.is_alive(), bytes(stream.data)
            threading.Event().wait(0.01)
        service.signal(signal.SIGTERM)
        body = stream.result()
        assert not ended_cleanly(body)
        assert service.wait() == 3
        assert report(service)["cancelled"] == 1
    (named,) = [e for e in service.events() if e.get("event") == "requests.cut"]
    assert named["requests"] == ["GET /stream-deaf"]  # the request answered in full is not named
    lines = access_lines(service.events())
    (cut,) = lines["/stream-deaf"]
    assert (cut["status"], cut["complete"]) == (200, False)
    assert "complete" not in lines["/slow"][0]


def test_event_stream_deaf_to_the_stop_is_ended_at_the_drains_start() -> None:
    """The same deafness in an event stream: graceful sends its last chunk when the drain
    begins (an ``EventSource`` reconnects at once) instead of cutting it 1.5 s later; exit 0."""
    with serving("serve_starlette:app", "--stop-timeout", "2") as (service, port):
        stream = RawStream(port, "/sse-deaf")
        stream.wait_first_event()
        service.signal(signal.SIGTERM)
        assert ended_cleanly(stream.result())
        assert service.wait() == 0
        assert report(service)["cancelled"] == 0
    assert "requests.cut" not in service.event_names()
    (line,) = access_lines(service.events())["/sse-deaf"]
    assert line["status"] == 200
    assert "complete" not in line


def test_pid1_in_a_pid_namespace_stops_on_sigterm_with_inflight_answered() -> None:
    """``CMD ["graceful", "serve", "app:app"]`` as a container's PID 1 (``unshare``).

    The kernel drops default-action signals for PID 1, so this only passes because graceful
    installs its handlers (the control is ``test_pid1.test_without_a_handler_pid1_ignores_sigterm``:
    plain Python as PID 1 never sees the SIGTERM).
    """
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to make a PID namespace")
    with serving("serve_starlette:app", argv=UNSHARE) as (service, port):
        pid1 = namespace_pid1(service.pid)
        try:
            assert service.wait_event("service.starting")["pid1"] is True
            slow = Background(port, "/slow?s=1.0")
            service.wait_for('"event": "slow started"')
            os.kill(pid1, signal.SIGTERM)
            assert slow.result() == (200, b"done")
            assert service.wait() == 0
            assert report(service)["exit_code"] == 0
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid1, signal.SIGKILL)


@pytest.mark.parametrize(
    ("target", "shutdown_line"),
    [
        pytest.param("serve_stuck_startup:app", "lifespan shutdown", id="fastapi"),
        pytest.param("serve_stuck_startup:plain", "lifespan shutdown", id="plain-asgi"),
        pytest.param("serve_stuck_startup:aio_app", "on_cleanup ran", id="aiohttp"),
    ],
)
def test_a_stop_during_the_apps_startup_aborts_it_at_once(target: str, shutdown_line: str) -> None:
    """Issue A1: the app's startup waits for a database that never answers; SIGTERM.

    1. ``graceful serve`` runs the app's startup (ASGI lifespan / aiohttp ``on_startup``),
       which opens a pool, then waits forever; the service is not ready (the control: the
       startup really hangs).
    2. SIGTERM.
    3. Result: the startup is cancelled at once (the stop ends long before the drain
       deadline, where it used to be cut: exit 3, a framework traceback, a leftover
       ``LifespanOn.main``); the pool opened is closed; the shutdown half of a startup that
       never completed does not run; one ``startup.aborted`` line; exit 0.
    """
    argv = [GRACEFUL, "serve", target, "--port", "0", "--stop-timeout", "20"]
    with ServiceProcess(argv, cwd=APPS) as service:
        service.wait_for("waiting for the database")
        assert "service.ready" not in service.event_names()
        service.signal(signal.SIGTERM)
        assert service.wait() == 0, service.output()
        aborted = service.wait_event("startup.aborted")
        assert aborted["app"] == target
        assert aborted["reason"] == "signal SIGTERM"
        started, stop = service.wait_event("shutdown.started"), report(service)
        assert stop["exit_code"] == 0
        assert stop["seconds"] < started["plan"]["drain_until_s"]  # not waited out
        assert "pool closed" in service.lines
        assert shutdown_line not in service.lines
        assert "Traceback" not in service.output()
        assert "tasks.leftover_cancelled" not in service.event_names()


@pytest.mark.parametrize("how", ["uds", "fd"])
def test_unix_socket_and_inherited_fd_listeners_close_at_stop(how: str, tmp_path: Path) -> None:
    """``--uds PATH`` and ``--fd N``: served, and closed for good at ``stop_accept``.

    With ``--fd`` the descriptor must be the listener's only one: a duplicate left open would
    keep the kernel queueing connections nobody accepts (a client hangs instead of being
    refused). A new connection while a slow request drains is refused.
    """
    port = free_port()
    if how == "uds":
        path = str(tmp_path / "app.sock")
        argv = [GRACEFUL, "serve", "serve_starlette:app", "--app-dir", str(APPS), "--uds", path]
    else:
        # A parent that binds the socket and execs graceful with it, as systemd or a
        # supervisor hands over a listening socket.
        launcher = (
            "import os, socket, sys\n"
            "s = socket.create_server(('127.0.0.1', int(sys.argv[1])))\n"
            "os.set_inheritable(s.fileno(), True)\n"
            "os.execv(sys.argv[2], [*sys.argv[2:], '--fd', str(s.fileno())])\n"
        )
        argv = [sys.executable, "-c", launcher, str(port), GRACEFUL, "serve"]
        argv += ["serve_starlette:app", "--app-dir", str(APPS)]

    def connect() -> socket.socket:
        if how == "uds":
            sock = socket.socket(socket.AF_UNIX)
            try:
                sock.settimeout(HANG_GUARD)
                sock.connect(path)
            except OSError:
                sock.close()
                raise
            return sock
        return socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD)

    with ServiceProcess(argv) as service:
        service.wait_event("service.ready")
        slow = connect()
        slow.sendall(b"GET /slow?s=1.0 HTTP/1.1\r\nHost: test\r\n\r\n")
        service.wait_for('"event": "slow started"')
        service.signal(signal.SIGTERM)
        service.wait_for('"phase": "stop_accept"')  # the listener is closed
        with pytest.raises((ConnectionRefusedError, FileNotFoundError)):
            connect().close()
        with slow:
            answer = slow.makefile("rb").read()
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert answer.endswith(b"done")
        assert service.wait() == 0


@pytest.mark.parametrize("command", ["serve", "run"])
@pytest.mark.parametrize("pid1", [False, True], ids=["child", "pid1"])
def test_a_stop_while_the_app_is_imported_ends_at_once_and_cleanly(
    pid1: bool, command: str
) -> None:
    """A stop signal during a long import (before any server runs) ends the process at once
    with exit 0 and one JSON line, also as PID 1, where a signal nobody handles is dropped
    and ``docker stop`` would wait for SIGKILL. ``graceful run`` imported its target before
    installing any handler: as PID 1 the SIGTERM was dropped (issue A2). The controls follow."""
    if pid1 and (os.geteuid() != 0 or shutil.which("unshare") is None):
        pytest.skip("needs root and unshare(1) to make a PID namespace")
    argv = [*UNSHARE] if pid1 else []
    argv += [GRACEFUL, command, "serve_slow_import:app"]
    with ServiceProcess(argv, cwd=APPS) as service:
        target = namespace_pid1(service.pid) if pid1 else service.pid
        try:
            service.wait_for("importing")
            os.kill(target, signal.SIGTERM)
            assert service.wait() == 0
            stopped = service.wait_event(f"{command}.stopped_while_loading")
            assert (stopped["signal"], stopped["app"]) == ("SIGTERM", "serve_slow_import:app")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, signal.SIGKILL)


@pytest.mark.parametrize(
    ("command", "target"),
    [("serve", "serve_signal_after_import:app"), ("run", "serve_signal_after_import:main")],
)
@pytest.mark.parametrize("pid1", [False, True], ids=["child", "pid1"])
def test_a_stop_just_after_the_import_is_not_dropped(command: str, target: str, pid1: bool) -> None:
    """Issue A2: between the import guard and the runtime's own handlers no handler was
    installed: as PID 1 the signal was dropped (3 of 60 SIGTERMs aimed at the end of an
    import; the service then ran until SIGKILL), otherwise it killed the process (exit -15).
    The target sends SIGTERM to its own process when its signature is read, just after its
    import. Now the stop is carried to the runtime: exit 0, and ``main`` never starts.
    Control: the next test (the target really sends it)."""
    if pid1 and (os.geteuid() != 0 or shutil.which("unshare") is None):
        pytest.skip("needs root and unshare(1) to make a PID namespace")
    argv = [*UNSHARE] if pid1 else []
    with ServiceProcess([*argv, GRACEFUL, command, target], cwd=APPS) as service:
        service.wait_for("sending SIGTERM after the import")
        assert service.wait() == 0, service.output()
        assert "main ran" not in service.lines
        if "shutdown.report" in service.event_names():  # carried to the runtime
            assert report(service)["exit_code"] == 0
        else:  # or it still counted as the import's
            assert f"{command}.stopped_while_loading" in service.event_names()


def test_control_the_target_sends_sigterm_when_its_signature_is_read() -> None:
    code = (
        f"import inspect, sys; sys.path.insert(0, {str(APPS)!r}); "
        "import serve_signal_after_import as m; inspect.signature(m.app); input()"
    )
    with ServiceProcess([sys.executable, "-c", code]) as service:
        assert service.wait() == -signal.SIGTERM


def test_control_without_graceful_the_same_import_dies_by_the_signal() -> None:
    """Control: the same import with no handler is killed by SIGTERM (exit -15, 143 in a
    shell); as PID 1 it would ignore it (``test_pid1``'s control)."""
    code = f"import sys; sys.path.insert(0, {str(APPS)!r}); import serve_slow_import"
    with ServiceProcess([sys.executable, "-c", code]) as service:
        service.wait_for("importing")
        service.signal(signal.SIGTERM)
        assert service.wait() == -signal.SIGTERM


# -- logs: one JSON object per line ---------------------------------------------------------------


def json_lines(service: ServiceProcess) -> tuple[list[dict[str, Any]], list[str]]:
    """The output's lines that parse as JSON objects, and those that do not."""
    parsed: list[dict[str, Any]] = []
    plain: list[str] = []
    for line in service.lines:
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            parsed.append(value)
        else:
            plain.append(line)
    return parsed, plain


def exercise(service: ServiceProcess, port: int) -> None:
    assert get(port, "/log") == (200, b"logged")
    assert get(port, "/boom")[0] == 500
    assert get(port, "/sse?limit=1")[0] == 200
    assert get(port, "/slow?s=0") == (200, b"done")
    service.signal(signal.SIGTERM)
    assert service.wait() == 0


def access_lines(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        if event.get("logger") == "uvicorn.access":
            found.setdefault(event.get("path", "?"), []).append(event)
    return found


def test_every_line_is_json_with_access_fields_app_logs_and_tracebacks() -> None:
    """Issue 12 item 3: in a container every line is one JSON object.

    uvicorn's lines, the app's ``logging`` lines (with their ``extra`` fields), its exception
    traceback and one access line per request (method, path, status, duration as fields)
    come out as JSON, among graceful's own events. stderr is merged in, so it is checked too.
    """
    with serving("serve_starlette:app") as (service, port):
        exercise(service, port)
    events, plain = json_lines(service)
    assert plain == []
    by_path = access_lines(events)
    assert sorted(by_path) == ["/boom", "/log", "/slow", "/sse"]
    for path, lines in by_path.items():
        assert len(lines) == 1, lines  # uvicorn's own line (no duration) is not there too
        line = lines[0]
        assert line["method"] == "GET"
        assert line["status"] == (500 if path == "/boom" else 200)
        assert isinstance(line["duration_s"], float)
        assert line["duration_s"] >= 0
        assert line["event"] == "http.request"  # a dotted name, as graceful's own lines
    app_lines = {e["event"]: e for e in events if e.get("logger") == "app"}
    assert app_lines["user logged in"]["user"] == "ada"
    assert app_lines["disk almost full"]["level"] == "warning"
    assert {"lifespan startup", "lifespan shutdown"} <= set(app_lines)
    crash = next(e for e in events if e.get("logger") == "uvicorn.error" and "exception" in e)
    assert crash["exception"][0]["exc_value"] == "boom"
    assert "locals" not in crash["exception"][0]["frames"][-1]  # no request data in logs


def test_control_an_app_that_configured_logging_keeps_its_format() -> None:
    """Control for the test above: the check sees plain lines, and graceful leaves an app's
    own logging configuration alone (its lines stay in its format; graceful's are JSON)."""
    env = {"APP_BASIC_LOGGING": "1"}
    with serving("serve_starlette:app", env=env) as (service, port):
        exercise(service, port)
    events, plain = json_lines(service)
    assert "INFO app: slow started" in plain
    assert "shutdown.report" in [e.get("event") for e in events]


def test_no_access_log_option_and_variable_turn_access_lines_off() -> None:
    """``--no-access-log`` (and ``GRACEFUL_ACCESS_LOG=0``): no access line; the other
    test's access lines (the control) show the check can see them."""
    with serving("serve_starlette:app", "--no-access-log") as (service, port):
        exercise(service, port)
    assert access_lines(json_lines(service)[0]) == {}
    with serving("serve_starlette:app", env={"GRACEFUL_ACCESS_LOG": "0"}) as (service, port):
        exercise(service, port)
    assert access_lines(json_lines(service)[0]) == {}


@pytest.mark.parametrize("proxy_headers", [True, False], ids=["proxy-headers", "control"])
def test_uvicorn_options_reach_the_app(proxy_headers: bool) -> None:
    """``--root-path``, ``--forwarded-allow-ips`` and ``--proxy-headers`` (on by default, as
    in uvicorn) reach the app through uvicorn; ``--no-proxy-headers`` is the control."""
    options = ["--root-path", "/api", "--forwarded-allow-ips", "*", "--loop", "asyncio"]
    if not proxy_headers:
        options.append("--no-proxy-headers")
    with serving("serve_starlette:app", *options) as (service, port):
        assert "asyncio" in service.wait_event("service.starting")["loop"]
        # The proxy in front strips /api: the app gets /whoami and the root path.
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG_GUARD)
        try:
            headers = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
            connection.request("GET", "/whoami", headers=headers)
            seen = json.loads(connection.getresponse().read())
        finally:
            connection.close()
        service.signal(signal.SIGTERM)
        assert service.wait() == 0
    assert seen["root_path"] == "/api"
    if proxy_headers:
        assert (seen["client"], seen["scheme"]) == ("203.0.113.7", "https")
    else:
        assert (seen["client"], seen["scheme"]) == ("127.0.0.1", "http")
    access = next(e for e in service.events() if e.get("logger") == "uvicorn.access")
    assert access["client"].startswith(f"{seen['client']}:")


# -- bad targets: one line, exit 1 ----------------------------------------------------------------

BAD_TARGETS = [
    ("nope_no_such_module:app", [], 'could not import module "nope_no_such_module"'),
    ("serve_missing_dependency:app", [], 'it imports "not_installed_dependency_for_graceful_'),
    ("serve_bad:missing", [], 'attribute "missing" not found in module "serve_bad"'),
    ("serve_bad:number", [], "serve_bad:number is an int, not an ASGI app"),
    ("serve_bad:create_app", [], "takes no arguments: if it returns the app, add --factory"),
    ("serve_bad:main", [], "serve it with `graceful run`"),
    ("serve_bad:runtime", [], "is a graceful.Runtime: serve it with `graceful run`"),
    ("serve_bad:make_number", ["--factory"], "returned an int, not an ASGI app"),
    ("serve_bad:make_app_async", ["--factory"], "is an async factory"),
    ("serve_bad:number", ["--factory"], "is not callable"),
    ("no_colon", [], 'must be in the form "module:attribute"'),
    # Old code: a TypeError from importlib, with its traceback ("failed to load").
    ("..serve_bad:number", [], '"..serve_bad" is a relative module name'),
    # Old code: "not found" only, though the file is right there.
    ("serve_starlette.py:app", [], "give a module name, not a file: serve_starlette:app"),
    (
        f"{APPS}/serve_starlette.py:app",
        [],
        f"give a module name, not a file: serve_starlette:app --app-dir {APPS}",
    ),
]


def run_serve(*args: str, cwd: Path = APPS, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [GRACEFUL, "serve", *args],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(("target", "options", "message"), BAD_TARGETS)
def test_a_bad_target_is_one_line_and_exit_1(target: str, options: list[str], message: str) -> None:
    """Issue 12 item 1. The control is every serving test above: the same command line with a
    good target serves (so these fail for the target's reason, not the command's)."""
    result = run_serve(target, *options)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("graceful serve: ")
    assert message in lines[0]


def test_an_error_in_the_apps_own_import_shows_its_traceback_then_one_line() -> None:
    """Not a bad target but a bug in the app: its traceback (the app's frames only) helps.

    For a person (the console format); JSON logs get one line: ``tests/test_failed_to_load.py``.
    """
    result = run_serve("serve_raises:app", env={"GRACEFUL_LOG_FORMAT": "console"})
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert "serve_raises.py" in result.stderr
    assert "importlib" not in result.stderr
    assert "graceful/cli.py" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        "graceful serve: serve_raises:app failed to load: RuntimeError: the app's own import failed"
    )


@pytest.mark.parametrize("command", ["serve", "run"])
@pytest.mark.parametrize(
    ("how", "why"),
    [
        ("exit", "it called sys.exit(3) while being imported"),
        ("interrupt", "KeyboardInterrupt"),
        ("base", "AppAbort: the app gave up"),
    ],
)
def test_a_module_that_exits_or_raises_a_base_exception_at_import_is_exit_1(
    command: str, how: str, why: str
) -> None:
    """Issue A3: ``sys.exit(3)`` at import ended ``graceful serve`` with 3 and nothing said (3
    reads as "work cut"); a ``KeyboardInterrupt`` or another ``BaseException`` escaped as a
    bare traceback. Now: where it happened, one line, exit 1. The control is the test above
    (an ``Exception`` at import was already handled so)."""
    result = subprocess.run(
        [GRACEFUL, command, "serve_exits:app"],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
        cwd=APPS,
        env={**os.environ, "APP_RAISE": how, "GRACEFUL_LOG_FORMAT": "console"},
    )
    assert result.returncode == 1
    assert "serve_exits.py" in result.stderr
    assert (
        result.stderr.splitlines()[-1]
        == f"graceful {command}: serve_exits:app failed to load: {why}"
    )


def test_a_bad_setting_names_its_variable_in_one_line() -> None:
    result = run_serve("serve_starlette:app", env={"PORT": "eighty"})
    assert result.returncode == 1
    assert (
        result.stderr
        == "graceful serve: configuration error: PORT='eighty' is not a whole number\n"
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--workers", "0"], "--workers 0 is out of range (1 to 1024)"),
        (["--stop-timeout", "-1"], "--stop-timeout -1.0 must be a positive finite number"),
        (
            ["--host", "no-such-host.invalid"],
            "HOST / --host 'no-such-host.invalid' cannot be resolved",
        ),
    ],
    ids=["workers", "stop-timeout", "host"],
)
def test_a_bad_option_is_named_as_typed(options: list[str], message: str) -> None:
    """A new user's findings: an option's error named the internal field (``workers=0``), and
    a host that does not resolve failed after the app's startup with uvicorn's
    ``Name or service not known`` and "main crashed", naming neither. Now one line, exit 1,
    before the app is imported. (The control: the variable's error above.)"""
    result = run_serve("serve_starlette:app", *options)
    assert result.returncode == 1
    assert result.stderr.startswith(f"graceful serve: configuration error: {message}")
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    ("target", "kind"),
    [("serve_starlette:app", "an ASGI app"), ("serve_aiohttp:app", "an aiohttp Application")],
)
def test_graceful_run_with_a_web_app_says_to_use_serve(target: str, kind: str) -> None:
    """``graceful run main:app`` (a uvicorn user's first try) used to crash with
    ``TypeError: ...__call__() missing 2 required positional arguments``."""
    result = subprocess.run(
        [GRACEFUL, "run", target],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
        cwd=APPS,
    )
    assert result.returncode == 1  # a setting that is invalid: the README's exit code 1
    assert result.stderr == (
        f"graceful run: {target} is {kind}, not an async main(runtime): "
        f"serve it with `graceful serve {target}`\n"
    )


# -- draining() outside graceful: plain uvicorn ---------------------------------------------------


def test_draining_under_plain_uvicorn_is_an_event_never_set() -> None:
    """The same app under ``uvicorn app:app`` (no graceful): its stream runs as without
    graceful instead of failing with ``LookupError`` (a 500 before this change)."""
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "serve_starlette:app", "--app-dir", str(APPS)]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    with ServiceProcess(argv) as service:
        service.wait_for("Uvicorn running on")
        status, body = get(port, "/sse?limit=2")
        assert status == 200
        assert body.endswith(b"event: done\n\n")
        assert "LookupError" not in service.output()


# -- the README's FastAPI section, run ------------------------------------------------------------

README_BLOCKS: list[str] = re.findall(
    r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S
)


def readme_block(first_line: str) -> str:
    found = [block for block in README_BLOCKS if block.startswith(f"{first_line}\n")]
    assert len(found) == 1, f"the README has no single block starting {first_line!r}"
    return found[0]


@pytest.fixture
def fastapi_app(tmp_path: Path) -> Path:
    pytest.importorskip("fastapi")
    (tmp_path / "app.py").write_text(readme_block("# app.py"))
    (tmp_path / "test_app.py").write_text(readme_block("# test_app.py"))
    return tmp_path


def test_readme_fastapi_app_served_stopped_and_restarted_keeps_its_state(
    fastapi_app: Path,
) -> None:
    """The README's FastAPI app under ``graceful serve app:app`` (as its Dockerfile's CMD).

    1. PUT an item; open the progress stream; start the reindex task; SIGTERM.
    2. Result: the stream says bye and ends cleanly, the task is awaited (drained, not cut),
       exit 0. Served again on the same state file, the item is there.
    """
    port = free_port()
    env = {"STATE_PATH": str(fastapi_app / "state.sqlite")}
    argv = [GRACEFUL, "serve", "app:app", "--host", "127.0.0.1", "--port", str(port)]
    with ServiceProcess(argv, env=env, cwd=fastapi_app) as service:
        service.wait_event("service.ready")
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG_GUARD)
        connection.request("PUT", "/items/a", body=b'{"n": 1}')
        assert json.loads(connection.getresponse().read()) == {"stored": "a", "created": True}
        connection.request("POST", "/reindex")
        assert connection.getresponse().status == 202
        connection.close()
        stream = RawStream(port, "/progress")
        stream.wait_first_event()
        service.signal(signal.SIGTERM)
        body = stream.result()
        assert b"event: bye" in body
        assert ended_cleanly(body)
        assert service.wait() == 0
        stop = report(service)
        assert (stop["exit_code"], stop["cancelled"], stop["drained"]) == (0, 0, True)
    with ServiceProcess(argv, env=env, cwd=fastapi_app) as again:
        again.wait_event("service.ready")
        assert get(port, "/items/a") == (200, b'{"n":1}')
        again.signal(signal.SIGTERM)
        assert again.wait() == 0


def test_readme_fastapi_tests_pass_with_testclient(fastapi_app: Path) -> None:
    """The README's ``test_app.py``: the app's TestClient tests run unchanged."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_app.py"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=fastapi_app,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
