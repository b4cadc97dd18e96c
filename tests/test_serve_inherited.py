"""``graceful serve --fd N --workers M`` hands the inherited socket back as it got it.

The socket's owner (systemd's socket activation, a parent that restarts the server) keeps it
after the service exits and starts the next server on it. During a stop the workers put a
filter on the socket that drops new connection attempts (so that none is queued and then
reset); the fault (issue 18, #3): nothing took it off, so after the first stop every new
connection to the socket timed out, the next server's included. The one-process path never
filters a socket it may share: it is the control.

Real processes, a real listening socket held by the test, real SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from graceful.backlog import refuse_new_connections
from graceful.serve.listeners import accept_new_connections
from tests.support import ROOT

pytestmark = pytest.mark.slow

APP = "tests.apps.workers_app:app"
HANG_GUARD = 30.0


@pytest.fixture
def owned() -> Iterator[socket.socket]:
    """The listening socket the test owns and hands to each server, as systemd would."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.set_inheritable(True)
    with sock:
        yield sock


def serve(sock: socket.socket, workers: int, log: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "graceful", "serve", APP, "--fd", str(sock.fileno()),
            "--workers", str(workers), "--admin-port", "0"]  # fmt: skip
    env = {**os.environ, "APP_FAILING_HOOK_WORKER": "none", "GRACEFUL_ACCESS_LOG": "off"}
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, cwd=ROOT, env=env, pass_fds=(sock.fileno(),), stdout=out, stderr=out
        )


def answered(address: tuple[str, int], timeout: float = 1.5) -> bool:
    try:
        with socket.create_connection(address, timeout=timeout) as client:
            client.sendall(b"GET /work?ms=0 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            return client.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def connects(address: tuple[str, int]) -> bool:
    """Whether a handshake completes (into the backlog, with nobody serving): False when the
    socket drops SYNs."""
    try:
        with socket.create_connection(address, timeout=2.0):
            return True
    except OSError:
        return False


def serve_once(sock: socket.socket, workers: int, log: Path) -> bool:
    """Start a server on ``sock``; whether it answered; then SIGTERM it (exit 0 expected)."""
    proc = serve(sock, workers, log)
    try:
        deadline = time.monotonic() + HANG_GUARD
        ok = False
        while not ok and time.monotonic() < deadline and proc.poll() is None:
            ok = answered(sock.getsockname())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(HANG_GUARD) == 0, log.read_text()
        return ok
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("workers", [2, 1], ids=["workers", "control-one-process"])
def test_the_same_inherited_socket_serves_again_after_a_stop(
    owned: socket.socket, workers: int, tmp_path: Path
) -> None:
    address = owned.getsockname()
    log = tmp_path / "serve.log"
    assert serve_once(owned, workers, log)
    assert connects(address)  # no filter left: a connection queues for the next server
    assert serve_once(owned, workers, log)  # (was, with workers: every connect timed out)
    assert connects(address)


def test_control_a_filter_left_on_the_socket_is_what_the_check_sees(
    owned: socket.socket,
) -> None:
    """The control of ``connects``: with the stop's filter on the socket, a handshake times
    out; taken off, it completes."""
    address = owned.getsockname()
    assert refuse_new_connections(owned)
    assert not connects(address)
    assert accept_new_connections(owned)
    assert connects(address)
    assert not accept_new_connections(owned)  # no filter left to take off


def test_a_filter_left_by_a_killed_server_is_taken_off_at_startup(
    owned: socket.socket, tmp_path: Path
) -> None:
    """A supervisor SIGKILLed during its stop never takes its filter off (found by attack):
    the next server on the socket got no connection at all. It now takes any filter off at
    startup and says so. The control beside it: the filter as the killed server left it
    drops every handshake (``test_control_a_filter_left_on_the_socket_is_what_the_check_sees``
    shows the same with nothing serving)."""
    assert refuse_new_connections(owned)  # as a supervisor killed mid-stop leaves it
    assert not connects(owned.getsockname())
    log = tmp_path / "serve.log"
    assert serve_once(owned, 2, log)
    assert "listener.stale_filter_removed" in log.read_text()
    assert connects(owned.getsockname())
