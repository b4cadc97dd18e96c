"""``graceful serve [--workers N]`` against careless and hostile use (issue 12).

Real processes, real signals, real sockets. Each test names what the old code did; each check
that a fault is caught has a control beside it that shows the fault is there to catch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from graceful.budget import Budget
from graceful.config import Config
from graceful.serve.stopping import StopDeadlines, worker_config
from tests.support import APPS, ServiceProcess, free_port
from tests.test_pid1 import UNSHARE, namespace_pid1
from tests.test_supervisor import (
    HANG_GUARD,
    REQUEST,
    Container,
    count_in_multiprocess_dir,
    get,
    gone,
    metric,
    needs_unshare,
    read_answer,
)

pytestmark = pytest.mark.slow


def ask_over_unix_socket(path: str) -> str:
    """One request on a fresh connection to the Unix socket at ``path``: ``answered`` or not."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(HANG_GUARD)
        sock.connect(path)
        sock.sendall(REQUEST)
        return read_answer(sock)


# -- --uds: whatever is at the path ----------------------------------------------------------


def test_uds_on_a_users_file_fails_and_leaves_the_file_alone(tmp_path: Path) -> None:
    """``--uds`` naming an existing regular file (a typo, a path shared with something else).

    Result: exit 1 with ``startup.failed``; the file is still there with its content. Old
    code: the bind failed, then the supervisor's clean-up removed the path anyway, deleting
    the user's file.
    """
    path = tmp_path / "precious.txt"
    path.write_text("the user's data\n")
    with Container(env={"GRACEFUL_UDS": str(path)}) as container:
        assert container.service.wait(HANG_GUARD) == 1
    failed = container.events("startup.failed")
    assert len(failed) == 1
    assert str(path) in failed[0]["error"]
    assert path.read_text() == "the user's data\n"


def test_uds_on_a_socket_another_server_listens_on_fails_and_leaves_it_served(
    tmp_path: Path,
) -> None:
    """Two containers given the same socket path (a shared volume).

    Result: the second exits 1; the first one's socket file stays, and clients still reach
    it. Old code: the second removed the live socket's file and bound its own, cutting the
    first off from every new client (and then removed the path at its exit).
    """
    path = str(tmp_path / "app.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as first:
        first.bind(path)
        first.listen()
        with Container(env={"GRACEFUL_UDS": path}) as container:
            assert container.service.wait(HANG_GUARD) == 1
        assert "startup.failed" in container.service.event_names()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)  # still the first server's socket
            accepted, _ = first.accept()
            accepted.close()


def test_control_a_stale_socket_file_is_replaced_served_and_removed_at_exit(
    tmp_path: Path,
) -> None:
    """The control for the two above: a socket file nobody listens on (left by a server that
    was killed) is replaced, the app is served on it, and the path is removed at exit."""
    path = str(tmp_path / "app.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(path)  # bound, never listening, then closed: what a killed server leaves
    assert Path(path).is_socket()
    with Container(env={"GRACEFUL_UDS": path}) as container:
        container.wait_ready()
        assert ask_over_unix_socket(path) == "answered"
        assert container.stop() == 0
    assert not Path(path).exists()


# -- PROMETHEUS_MULTIPROC_DIR that cannot be used ---------------------------------------------


def metrics_of(container: Container) -> str:
    _, body, _ = get(container.url("/metrics", admin=True))
    return body.decode()


def test_control_a_worker_given_an_unusable_metrics_dir_cannot_create_a_metric(
    tmp_path: Path,
) -> None:
    """The fault the next test is about: prometheus-client in multiprocess mode raises at the
    first metric when its directory is a file."""
    not_a_directory = tmp_path / "metrics"
    not_a_directory.write_text("")
    code = "from prometheus_client import Counter; Counter('x', 'x')"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(not_a_directory)}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, timeout=HANG_GUARD, check=False
    )
    assert result.returncode != 0


@pytest.mark.parametrize("junk", ["a-file", "a-directory-named-db"])
def test_an_unusable_metrics_dir_is_replaced_and_the_workers_metrics_still_add_up(
    tmp_path: Path, junk: str
) -> None:
    """PROMETHEUS_MULTIPROC_DIR names a file, or a directory holding ``junk.db/`` (a
    directory the collector would fail to read on every scrape) beside a stale sample.

    Result: the supervisor says ``metrics.directory_replaced`` (naming the path and why), the
    workers write to a temporary directory, /metrics adds up both workers' starts and
    nothing from the old run. Old code: a file made every worker crash at its first metric
    (exit 1, container down); the directory left the workers' metrics out of /metrics.
    """
    directory = tmp_path / "metrics"
    if junk == "a-file":
        directory.write_text("")
    else:
        directory.mkdir()
        (directory / "junk.db").mkdir()
        count_in_multiprocess_dir(directory, 10)
    with Container(env={"PROMETHEUS_MULTIPROC_DIR": str(directory)}) as container:
        container.wait_ready()
        text = metrics_of(container)
        assert container.stop() == 0
    assert metric(text, "app_workers_started_total") == 2
    replaced = container.events("metrics.directory_replaced")
    assert len(replaced) == 1
    assert replaced[0]["unusable"] == str(directory)
    assert replaced[0]["path"] != str(directory)
    assert not Path(replaced[0]["path"]).exists()  # the temporary directory is removed at exit


# -- a stop signal while the supervisor starts ------------------------------------------------

#: The supervisor of ``tests/apps/supervise.py``, which sends itself SIGTERM while it sets up
#: logging, before its event loop runs (a ``docker stop`` right after ``docker start``).
SIGNAL_WHILE_STARTING = f"""
import os, runpy, signal, sys
import graceful.shell as shell
configure = shell.configure_logging
def configure_then_sigterm(**kwargs):
    configure(**kwargs)
    os.kill(os.getpid(), signal.SIGTERM)
shell.configure_logging = configure_then_sigterm
sys.argv = ["supervise.py", "tests.apps.workers_app:app"]
runpy.run_path({str(APPS / "supervise.py")!r}, run_name="__main__")
"""


@pytest.mark.parametrize(
    "pid1", [False, pytest.param(True, marks=needs_unshare)], ids=["child", "pid1"]
)
def test_a_stop_signal_before_the_supervisors_loop_runs_is_not_dropped(pid1: bool) -> None:
    """SIGTERM while the supervisor configures its logging, before its event loop runs.

    Result: exit 0 with one ``shutdown.report`` (reason ``signal SIGTERM``) and no worker
    started. Old code (handlers installed only once the loop ran): as PID 1 the signal found
    no handler and was dropped, and the container ran on until SIGKILL; elsewhere it killed
    the supervisor (exit -15, no report). The control is the fault itself: the old code's
    outcome in both settings, and ``test_a_stop_while_workers_start`` for a signal that comes
    once the loop runs.
    """
    env = {
        "HOST": "127.0.0.1",
        "PORT": str(free_port()),
        "ADMIN_PORT": str(free_port()),
        "WEB_CONCURRENCY": "2",
    }
    argv = [sys.executable, "-u", "-c", SIGNAL_WHILE_STARTING]
    with ServiceProcess([*UNSHARE, *argv] if pid1 else argv, env=env) as service:
        inner = namespace_pid1(service.pid) if pid1 else service.pid
        try:
            code = service.wait(HANG_GUARD)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(inner, signal.SIGKILL)  # unshare does not take its child down with it
    assert code == 0, service.output()
    reports = [e for e in service.events() if e.get("event") == "shutdown.report"]
    assert len(reports) == 1, service.output()
    assert reports[0]["reason"] == "signal SIGTERM"
    assert reports[0]["workers"] == []
    assert "worker.started" not in service.event_names()


# -- a short stop timeout -----------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2], ids=["control-one-process", "supervisor"])
def test_a_short_stop_timeout_stops_an_idle_container_cleanly(workers: int) -> None:
    """``GRACEFUL_STOP_TIMEOUT=0.3``, nothing in flight, SIGTERM.

    Result: exit 0, every worker 0. Old code: each worker kept its whole window (0.2 s, the
    supervisor keeps the rest to kill and report) as reserve, so ``stop_accept`` and the drain
    had no time: the hooks were cut and the container exited 4 (hook failed) having done
    nothing wrong. Control: the same app and budget in one process (``graceful serve``
    without workers) exits 0.
    """
    port, admin = free_port(), free_port()
    argv = [
        *(sys.executable, "-m", "graceful", "serve", "tests.apps.workers_app:app"),
        *("--host", "127.0.0.1", "--port", str(port), "--admin-port", str(admin)),
        *("--workers", str(workers), "--stop-timeout", "0.3"),
    ]
    env = {"APP_FAILING_HOOK_WORKER": "none", "GRACEFUL_ACCESS_LOG": "off"}
    with ServiceProcess(argv, env=env) as service:
        service.wait_event("service.ready" if workers > 1 else "serve.listening")
        service.signal(signal.SIGTERM)
        code = service.wait(HANG_GUARD)
    assert code == 0, service.output()
    assert "hook.timed_out" not in service.event_names()


@settings(max_examples=200, deadline=None)
@given(
    stop_timeout=st.floats(min_value=0.3, max_value=86400),
    reserve=st.none() | st.floats(min_value=0.01, max_value=100),
)
def test_a_worker_always_has_time_to_stop_accepting_and_drain(
    stop_timeout: float, reserve: float | None
) -> None:
    """For any stop timeout one process can stop in (0.3 s and up), a worker's plan to the
    supervisor's ``worker_exit_by`` leaves time before the reserve, and a reserve that fits
    is left as configured."""
    assume(reserve is None or reserve < stop_timeout / 2)
    config = Config(stop_timeout=stop_timeout, reserve=reserve)
    deadlines = StopDeadlines.plan(config, 100.0)
    budget = Budget.plan(worker_config(config), 100.0, exit_by=deadlines.worker_exit_by, log=False)
    assert budget.drain_end > 100.0
    assert budget.exit_at <= deadlines.kill_at
    if config.effective_reserve <= (deadlines.worker_exit_by - 100.0) / 2:
        assert worker_config(config) == config


# -- what the app's own child processes inherit --------------------------------------------------

LEAKY_APP = """
import os, sys, time

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            if os.environ["LEAKY_HOW"] == "fork":  # multiprocessing's "fork" does this
                child = os.fork()
                if child == 0:  # off the test's output pipe, as the shell child is
                    devnull = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(devnull, 1)
                    os.dup2(devnull, 2)
                    time.sleep(60)
                    os._exit(0)
                with open("{sys.argv[0]}.children", "a") as out:
                    out.write(f"{child}\\n")
            else:  # a child that outlives the worker, started as a shell would (fds inherited)
                os.system(f"sleep 60 >/dev/null 2>&1 & echo $! >> {sys.argv[0]}.children")
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
"""


@pytest.mark.parametrize("how", ["system", "fork"])
def test_a_child_the_app_starts_does_not_keep_the_port_after_the_stop(
    tmp_path: Path, how: str
) -> None:
    """Each worker's app starts a long-lived child with ``os.system("sleep 60 &")``, or
    forks one (``os.fork()``, as multiprocessing's "fork" start method does).

    Result: once the container stopped, connecting to its port is refused, and the port can be
    bound again (a restart). Old code: the children inherited the shared listener, so the port
    stayed taken by processes that never accept: connects timed out (the stop's filter drops
    their SYNs) and a restart could not bind. Control: the children are still running when
    the port is checked (so they would hold it if they had it). A forked child got the
    listener whatever its inheritable flag: the worker now closes its copies in the child.
    """
    (tmp_path / "leaky.py").write_text(LEAKY_APP.replace("{sys.argv[0]}", str(tmp_path / "app")))
    children = tmp_path / "app.children"
    env = {"GRACEFUL_APP_DIR": str(tmp_path), "LEAKY_HOW": how}
    try:
        with Container(spec="leaky:app", env=env) as container:
            container.wait_ready()
            assert container.stop() == 0
        pids = [int(pid) for pid in children.read_text().split()]
        assert len(pids) == 2
        assert all(not gone(pid) for pid in pids)  # the control
        with socket.socket() as client:
            client.settimeout(5.0)
            with pytest.raises(ConnectionRefusedError):
                client.connect(("127.0.0.1", container.port))
        with socket.socket() as again:
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            again.bind(("127.0.0.1", container.port))
            again.listen()
    finally:
        for pid in [int(pid) for pid in children.read_text().split()] if children.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# -- --uds without workers ----------------------------------------------------------------------


def serve_on_unix_socket(path: str) -> ServiceProcess:
    argv = [sys.executable, "-m", "graceful", "serve", "serve_starlette:app"]
    return ServiceProcess([*argv, "--app-dir", str(APPS), "--uds", path, "--admin-port", "0"])


@pytest.mark.parametrize("taken_by", ["a-file", "a-live-socket"])
def test_one_process_on_a_taken_uds_path_fails_before_the_app_starts(
    tmp_path: Path, taken_by: str
) -> None:
    """``graceful serve app --uds PATH`` where PATH is a user's file, or the socket of a
    server that is listening.

    Result: exit 1 with the path and the reason in one error; the app's lifespan never
    started, nothing was left running to cancel; the file, or the other server's socket, is
    untouched. Old code: with a file, the bind failed after the lifespan startup (lifespan
    task cancelled at exit with a traceback, its shutdown never run); with a live socket,
    uvicorn replaced it and served, cutting the other server off from every new client.
    """
    path = tmp_path / "app.sock"
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if taken_by == "a-file":
        path.write_text("the user's data\n")
    else:
        other.bind(str(path))
        other.listen()
    with other, serve_on_unix_socket(str(path)) as service:
        code = service.wait(HANG_GUARD)
        if taken_by == "a-live-socket":
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.connect(str(path))
                other.accept()[0].close()  # the other server's socket, still
    assert code == 1, service.output()
    failed = [e for e in service.events() if e.get("event") == "service.crashed"]
    assert failed, service.output()
    assert f"cannot listen on unix:{path}" in failed[0]["error"]
    assert "lifespan startup" not in service.lines  # the app never started
    assert "tasks.leftover_cancelled" not in service.event_names()
    if taken_by == "a-file":
        assert path.read_text() == "the user's data\n"


def test_control_one_process_replaces_a_stale_uds_socket_and_removes_it_at_exit(
    tmp_path: Path,
) -> None:
    """The control for the test above: a socket file nobody listens on is replaced and
    served. After the stop the path is gone (new: old code left the socket file behind)."""
    path = str(tmp_path / "app.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(path)
    with serve_on_unix_socket(path) as service:
        service.wait_event("service.ready")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(HANG_GUARD)
            client.connect(path)
            client.sendall(b"GET /slow?s=0 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            assert client.makefile("rb").read().startswith(b"HTTP/1.1 200")
        service.signal(signal.SIGTERM)
        assert service.wait(HANG_GUARD) == 0
    assert not Path(path).exists()


# -- --fd that is not a listening socket --------------------------------------------------------

#: Execs ``graceful serve`` with ``--fd`` naming a socket of the kind in argv[1], as systemd
#: or a parent process would hand one over.
FD_LAUNCHER = """
import os, socket, sys
kind = socket.SOCK_DGRAM if sys.argv[1] == "udp" else socket.SOCK_STREAM
sock = socket.socket(socket.AF_INET, kind)
if sys.argv[1] != "unbound":
    sock.bind(("127.0.0.1", 0))
os.set_inheritable(sock.fileno(), True)
argv = [sys.executable, "-m", "graceful", *sys.argv[2:], "--fd", str(sock.fileno())]
os.execv(sys.executable, argv)
"""


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize(
    ("kind", "problem"),
    [("udp", "not a stream (TCP or Unix) socket"), ("unbound", "not bound to an address")],
)
def test_an_fd_that_is_no_listener_is_one_error_and_exit_1(
    kind: str, problem: str, workers: int
) -> None:
    """``--fd N`` naming a UDP socket, or a TCP socket never bound.

    Result: exit 1 with an error that says which (``fd:N: ...``). Old code: a UDP socket was
    a ValueError traceback (one process) or every worker crashing; an unbound socket was
    served on a random port on every interface, which nobody would ever reach. Control:
    ``tests/test_serve.py::test_unix_socket_and_inherited_fd_listeners_close_at_stop[fd]``
    serves a bound socket handed over the same way.
    """
    argv = [sys.executable, "-c", FD_LAUNCHER, kind, "serve", "tests.apps.workers_app:app"]
    argv += ["--workers", str(workers), "--admin-port", "0"]
    with ServiceProcess(argv) as service:
        code = service.wait(HANG_GUARD)
    assert code == 1, service.output()
    errors = [e["error"] for e in service.events() if "error" in e and "worker" not in e]
    assert any(problem in error and "fd:" in error for error in errors), service.output()


# -- the port taken by someone else -------------------------------------------------------------


def test_admin_port_equal_to_the_app_port_is_one_error_before_any_worker_starts() -> None:
    """``ADMIN_PORT`` = ``PORT`` (a copy-paste slip) with ``--workers 2``.

    Result: exit 1, ``startup.failed`` names the address in use, no worker is started.
    Old code: the supervisor bound the app port without listening, the admin server then
    took the same port, and each worker crashed with an AttributeError from deep inside
    (uvloop did not report the failed listen). Control: without workers the same slip is
    refused as "address already in use" too (the conflict is real).
    """
    port = free_port()
    with Container(workers=2, env={"PORT": str(port), "ADMIN_PORT": str(port)}) as container:
        assert container.service.wait(HANG_GUARD) == 1
    failed = container.events("startup.failed")
    assert len(failed) == 1, container.service.output()
    assert "Address already in use" in failed[0]["error"]
    assert "worker.started" not in container.service.event_names()
    assert "AttributeError" not in container.service.output()
    argv = [sys.executable, "-m", "graceful", "serve", "tests.apps.workers_app:app"]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    with ServiceProcess(argv, env={"ADMIN_PORT": str(port)}) as single:
        assert single.wait(HANG_GUARD) == 1
    assert "address already in use" in single.output()


def test_a_port_taken_while_the_workers_start_is_an_error_that_says_so() -> None:
    """Another server binds and listens on the port after the supervisor bound it (the
    supervisor does not listen) and before the workers, which take a second to import, do.

    Result: the workers fail with "cannot listen on ...: Address already in use" before
    their app starts; the container exits 1. Old code: uvloop swallowed the failed listen
    and each worker crashed with an AttributeError. Control: the intruder's listen
    succeeded (the port was free to take).
    """
    with Container(workers=2, env={"APP_IMPORT_DELAY_S": "1"}) as container:
        container.service.wait_count("worker.started", 2)
        with socket.socket() as intruder:
            intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            intruder.bind(("127.0.0.1", container.port))
            intruder.listen()  # the control: nothing stopped it
            assert container.service.wait(HANG_GUARD) == 1
    output = container.service.output()
    assert "cannot listen on http://127.0.0.1:" in output
    assert "Address already in use" in output
    assert "AttributeError" not in output


# -- nobody reads the logs any more --------------------------------------------------------------


@pytest.mark.parametrize("workers", ["2", "1"])
@pytest.mark.parametrize("reader", ["gone", "control-still-reading"])
def test_a_stop_after_the_log_reader_went_away_is_still_clean(reader: str, workers: str) -> None:
    """The container's stdout is a pipe whose reader goes away once the service is ready (a
    log collector restarted, ``graceful serve ... | head``); then SIGTERM.

    Result: exit 0, at once. Old code: the supervisor's first log line after the signal
    raised BrokenPipeError inside its signal callback, so the stop never began; the watchdog
    ended the container at its deadline with exit 6; one process (``workers=1``, the
    runtime's own signal callback) did the same. Control: the same with the reader still
    there.
    """
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(free_port()),
        "ADMIN_PORT": str(free_port()),
        "WEB_CONCURRENCY": workers,
        "APP_FAILING_HOOK_WORKER": "none",  # no worker index matches: no failing hook
        "GRACEFUL_STOP_TIMEOUT": "10",
        "GRACEFUL_LOG_FORMAT": "json",
    }
    if workers == "1":  # graceful serve in one process: the runtime's signal callback
        argv = [sys.executable, "-u", "-m", "graceful", "serve", "tests.apps.workers_app:app"]
    else:
        argv = [sys.executable, "-u", str(APPS / "supervise.py"), "tests.apps.workers_app:app"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:  # until the supervisor's own service.ready
            seen.append(line)
            if b'"event": "service.ready"' in line and b'"worker"' not in line:
                break
        else:
            raise AssertionError(b"".join(seen).decode())
        if reader == "gone":
            proc.stdout.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(HANG_GUARD) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None and not proc.stdout.closed:
            proc.stdout.read()
            proc.stdout.close()


def test_a_worker_killed_while_creating_a_metrics_file_does_not_break_metrics(
    tmp_path: Path,
) -> None:
    """1. Worker 0 is frozen and left an empty ``histogram_<pid>.db`` behind, as a worker
    SIGKILLed between creating a metrics file and writing it does; 2. it is killed.

    Result: the supervisor removes the unreadable file with the dead worker
    (``metrics.file_removed``) and /metrics answers 200 with both workers' counts. Old code:
    the file stayed, and every scrape failed with 500 from then on. Control: while the
    worker is still frozen the same file fails prometheus-client's own collector (graceful's
    leaves a half-made file out of a scrape since: the scrape already answers 200).
    """
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    directory = tmp_path / "metrics"
    with Container(env={"PROMETHEUS_MULTIPROC_DIR": str(directory)}) as container:
        pids = container.wait_ready()
        os.kill(pids[0], signal.SIGSTOP)
        (directory / f"histogram_{pids[0]}.db").write_bytes(b"")
        plain = CollectorRegistry()
        MultiProcessCollector(plain, path=str(directory))  # type: ignore[no-untyped-call]
        with pytest.raises(Exception):  # noqa: B017 - the control: whatever the reader raises
            generate_latest(plain)
        assert get(container.url("/metrics", admin=True))[0] == 200
        os.kill(pids[0], signal.SIGKILL)
        container.service.wait_count("worker.ready", 3)
        status, body, _ = get(container.url("/metrics", admin=True))
        assert container.stop() == 0
    assert status == 200
    assert metric(body.decode(), "app_workers_started_total") == 3
    removed = container.events("metrics.file_removed")
    assert [e["path"] for e in removed] == [str(directory / f"histogram_{pids[0]}.db")]


# -- the app's module ends the worker while it is imported --------------------------------------


@pytest.mark.parametrize("code", [0, 3])
def test_a_module_that_calls_sys_exit_at_import_fails_the_worker_with_exit_1(
    tmp_path: Path, code: int
) -> None:
    """The app's module calls ``sys.exit(0)`` or ``sys.exit(3)`` while a worker imports it.

    Result: the worker says ``... failed to load: it called sys.exit(3) while being
    imported`` and ends with exit 1 (error), as ``graceful serve`` without workers does; the
    container exits 1. Old code: the worker ended with the module's own code, reported as
    "exit 3 (work_cut)" or "exit 0 (ok)" before any worker was ready. Control:
    ``tests/test_serve.py::test_a_module_that_exits_or_raises_a_base_exception_at_import_is_exit_1``
    (one process).
    """
    (tmp_path / "exits.py").write_text(f"import sys\nsys.exit({code})\n")
    with Container(spec="exits:app", env={"GRACEFUL_APP_DIR": str(tmp_path)}) as container:
        assert container.service.wait(HANG_GUARD) == 1
    exited = container.events("worker.exited")
    assert exited, container.service.output()
    assert {e["status"] for e in exited} == {"exit 1 (error)"}
    assert f"exits:app failed to load: it called sys.exit({code})" in container.service.output()
