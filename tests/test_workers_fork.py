"""``graceful serve --workers N`` with workers forked from a zygote (issue 20): ``fork`` (the
default), ``preload`` and ``spawn``.

Real processes, real signals, real sockets, as ``tests/test_supervisor.py`` (whose tests run
the default, ``fork``): the supervisor runs ``tests/apps/supervise.py``, or the ``graceful``
command, on an app written to ``tmp_path`` or ``tests/apps/workers_app.py``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from graceful.status import ExitCode
from tests.support import ROOT
from tests.test_supervisor import HANG_GUARD, Container, get, wait_gone

pytestmark = pytest.mark.slow

#: An ASGI app that says at import which process imported it; ``/pid`` answers the worker.
APP = """\
import os, threading, time

print(f"APP imported pid={os.getpid()}", flush=True)
if os.environ.get("APP_THREAD_AT_IMPORT"):
    threading.Thread(target=time.sleep, args=(60,), name="poller", daemon=True).start()

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = str(os.getpid()).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
"""


def write_app(directory: Path) -> dict[str, str]:
    (directory / "forkapp.py").write_text(APP)
    return {"GRACEFUL_APP_DIR": str(directory)}


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def shared_share(pid: int) -> float:
    """PSS ÷ RSS of a process: 1 when it shares no page, lower the more it shares."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0])
    return fields["Pss"] / fields["Rss"]


def imports(container: Container) -> list[int]:
    """Pids of the processes that imported the app, from its ``APP imported`` lines."""
    lines = [line for line in container.service.lines if "APP imported pid=" in line]
    return [int(line.rsplit("pid=", 1)[1]) for line in lines]


@pytest.mark.parametrize("mode", ["fork", "preload"])
def test_forked_workers_are_the_supervisors_children_in_sessions_of_their_own(
    mode: str, tmp_path: Path
) -> None:
    """1. Two workers, forked from the zygote. Result: each worker is the supervisor's child
    (handed over when the intermediate process exited), leads its own session, answers, and
    shares most of its pages (PSS well below RSS); the zygote imported the app once with
    ``preload``, else each worker did. Control: ``spawn``, whose workers share far less."""
    env = {**write_app(tmp_path), "GRACEFUL_WORKER_START": mode}
    with Container(env=env, spec="forkapp:app") as container:
        pids = container.wait_ready()
        zygote = container.wait_supervisor_event("zygote.ready")["pid"]
        answered = {int(get(container.url("/pid"))[1]) for _ in range(20)}
        shares = [shared_share(pid) for pid in pids.values()]
        for pid in pids.values():
            assert parent_of(pid) == container.pid
            assert os.getsid(pid) == pid != os.getsid(container.pid)
            assert "graceful.serve.worker" not in cmdline(pid)  # not spawned
        assert container.stop() == 0
    assert answered <= set(pids.values())
    assert container.wait_supervisor_event("zygote.started")["forked"] is True
    expected = [zygote] if mode == "preload" else sorted(pids.values())
    assert sorted(imports(container)) == expected
    with Container(env={**env, "GRACEFUL_WORKER_START": "spawn"}, spec="forkapp:app") as control:
        spawned = control.wait_ready()
        spawned_shares = [shared_share(pid) for pid in spawned.values()]
        assert all("graceful.serve.worker" in cmdline(pid) for pid in spawned.values())
        assert control.stop() == 0
    assert not control.events("zygote.started")
    assert max(shares) < min(spawned_shares) - 0.1, (shares, spawned_shares)


@pytest.mark.parametrize("mode", ["fork", "preload"])
def test_a_replacement_forked_later_serves_and_dies_with_the_supervisor(
    mode: str, tmp_path: Path
) -> None:
    """1. Two workers ready. 2. SIGKILL worker 0: it is replaced, forked by the same zygote
    long after the first ones. 3. SIGKILL the supervisor. Result: the replacement is the
    supervisor's child, answers, and dies with the supervisor as the first worker and the
    zygote do (``PR_SET_PDEATHSIG``): nothing is left holding the port."""
    env = {**write_app(tmp_path), "GRACEFUL_WORKER_START": mode}
    with Container(env=env, spec="forkapp:app") as container:
        pids = container.wait_ready()
        zygote = container.wait_supervisor_event("zygote.ready")["pid"]
        os.kill(pids[0], signal.SIGKILL)
        container.service.wait_count("worker.ready", 3)
        replacement = container.worker_pids()[0]
        assert replacement != pids[0]
        assert parent_of(replacement) == container.pid
        deadline = time.monotonic() + HANG_GUARD
        while int(get(container.url("/pid"))[1]) != replacement:  # the kernel picks who accepts
            assert time.monotonic() < deadline, "the replacement never answered"
        os.kill(container.pid, signal.SIGKILL)
        wait_gone([replacement, pids[1], zygote])
    restarting = container.events("worker.restarting")
    assert len(restarting) == 1


def test_preload_refuses_an_app_that_starts_a_thread_at_import(tmp_path: Path) -> None:
    """1. An app that starts a thread at import, with ``preload``. Result: exit 1 at once,
    ``serve.not_forkable`` naming the thread and the way out. Control: the same app with
    ``fork`` (each worker imports it) serves and stops with 0."""
    env = {**write_app(tmp_path), "APP_THREAD_AT_IMPORT": "1"}
    with Container(env={**env, "GRACEFUL_WORKER_START": "preload"}, spec="forkapp:app") as bad:
        assert bad.service.wait(HANG_GUARD) == ExitCode.ERROR
    (refused,) = bad.events("serve.not_forkable")
    assert "a thread ('poller')" in refused["error"]
    assert "--worker-start fork" in refused["error"]
    assert "GRACEFUL_WORKER_START=fork" in refused["error"]
    assert len(bad.events("startup.failed")) == 1
    assert not bad.events("worker.started")
    with Container(env={**env, "GRACEFUL_WORKER_START": "fork"}, spec="forkapp:app") as control:
        control.wait_ready()
        assert control.stop() == 0


def test_preload_stop_during_the_import_ends_at_once_with_exit_0() -> None:
    """1. ``preload`` of an app whose import takes 60 s. 2. SIGTERM while the zygote imports.
    Result: the import is interrupted (``serve.stopped_while_loading``), exit 0, long before
    the stop timeout; no worker was started. (Without the supervisor's SIGTERM to the zygote
    the container would wait for the import, then be killed at its deadline.)"""
    env = {"APP_IMPORT_DELAY_S": "60", "GRACEFUL_WORKER_START": "preload"}
    with Container(env=env) as container:
        container.wait_supervisor_event("zygote.started")
        time.sleep(0.5)  # inside the import
        signalled = time.monotonic()
        code = container.stop()
        took = time.monotonic() - signalled
    assert code == 0
    assert took < 3.0
    assert len(container.events("serve.stopped_while_loading")) == 1
    assert not container.events("worker.started")
    assert container.report()["exit_code"] == 0


def test_preload_of_an_app_that_cannot_be_imported_fails_the_container() -> None:
    """A preloaded target that is not there: one ``serve.failed_to_load`` (the zygote's),
    ``startup.failed`` and exit 1, as a worker failing its import does with ``fork``."""
    env = {"GRACEFUL_WORKER_START": "preload"}
    with Container(env=env, spec="tests.apps.no_such_module:app") as container:
        assert container.service.wait(HANG_GUARD) == 1
    (said,) = container.events("serve.failed_to_load")
    assert said["zygote"] is True
    assert said["error"].startswith('could not import module "tests.apps.no_such_module"')
    (failed,) = container.events("startup.failed")
    assert "zygote" in failed["error"]
    assert container.report()["exit_code"] == 1


def test_a_lost_zygote_leaves_later_workers_spawned(tmp_path: Path) -> None:
    """1. Two workers ready. 2. SIGKILL the zygote, then worker 1. Result: ``zygote.lost``,
    and the replacement is spawned (a fresh ``graceful.serve.worker``) and serves; the stop
    exits 0. (The control, with a zygote, forks it: the test above.)"""
    with Container(env=write_app(tmp_path), spec="forkapp:app") as container:
        pids = container.wait_ready()
        zygote = container.wait_supervisor_event("zygote.ready")["pid"]
        os.kill(zygote, signal.SIGKILL)
        wait_gone([zygote])
        os.kill(pids[1], signal.SIGKILL)
        container.service.wait_count("worker.ready", 3)
        replacement = container.worker_pids()[1]
        assert "graceful.serve.worker" in cmdline(replacement)
        assert parent_of(replacement) == container.pid
        assert container.stop() == 0
    assert container.events("zygote.lost")


def test_a_bad_worker_start_is_refused_naming_it() -> None:
    """A value that is not fork, preload or spawn: exit 1 and a message naming the variable
    (or the option) and the choices."""
    argv = [sys.executable, "-m", "graceful", "serve", "x:app", "--workers", "2"]
    env = {**os.environ, "GRACEFUL_WORKER_START": "thread"}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=HANG_GUARD)
    assert done.returncode == 1
    assert "GRACEFUL_WORKER_START='thread' must be one of fork, preload, spawn" in done.stderr
    done = subprocess.run(
        [*argv, "--worker-start", "thread"], capture_output=True, text=True, timeout=HANG_GUARD
    )
    assert done.returncode == 1
    assert "--worker-start: invalid choice: 'thread'" in done.stderr


THREAD_AT_IMPORT = (
    "import threading, time; "
    "threading.Thread(target=time.sleep, args=(5,), name='t1', daemon=True).start()"
)


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("", "[]"),
        ("import socket; s = socket.socket()", "a socket (on 0.0.0.0:0, descriptor"),
        (
            (
                "import socket; s = socket.create_server(('127.0.0.1', 0)); "
                "c = socket.create_connection(s.getsockname())"
            ),
            "a socket (to 127.0.0.1:",
        ),
        (THREAD_AT_IMPORT, "a thread ('t1')"),
        (
            "import faulthandler; faulthandler.dump_traceback_later(60)",
            "1 thread(s) outside Python",
        ),
    ],
    ids=["clean", "socket", "connection", "thread", "native-thread"],
)
def test_fork_hazards_names_threads_and_sockets(setup: str, expected: str) -> None:
    """What ``preload`` refuses to fork; the clean process is the control."""
    code = textwrap.dedent(f"""
        {setup}
        from graceful.serve.zygote import fork_hazards
        print(fork_hazards())
    """)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_GUARD
    )
    assert expected in done.stdout, done.stderr


DOCS_APP = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "workers.md").read_text(), re.S)


@pytest.mark.parametrize("mode", ["fork", "preload", "spawn"])
def test_the_docs_example_serves_with_every_worker_start(mode: str, tmp_path: Path) -> None:
    """docs/workers.md's app, as written there: each worker answers from its own connection,
    and the stop exits 0, whichever way the workers start."""
    (source,) = DOCS_APP
    (tmp_path / "app.py").write_text(source)
    env = {"GRACEFUL_APP_DIR": str(tmp_path), "GRACEFUL_WORKER_START": mode}
    with Container(env=env, spec="app:app") as container:
        container.wait_ready()
        answers = {get(container.url("/"))[1].decode() for _ in range(20)}
        assert container.stop() == 0
    assert answers <= {"hello from worker 0 (1)", "hello from worker 1 (1)"}
    assert answers


def test_an_inherited_socket_is_not_the_apps_and_goes_no_further_than_the_workers(
    tmp_path: Path,
) -> None:
    """``--fd N --workers 2 --worker-start preload``: the zygote, forked from a supervisor that
    holds fd N, holds it too. Result: it is not taken for a socket the app opened at import
    (the app serves, the stop exits 0), and every copy of it in a worker is close-on-exec, so
    a program the app runs does not hold the port. (An app that does open a socket at import
    is refused: ``test_fork_hazards_names_threads_and_sockets``.)"""
    owned = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    owned.bind(("127.0.0.1", 0))
    owned.listen(64)
    owned.set_inheritable(True)
    port = owned.getsockname()[1]
    inode = os.fstat(owned.fileno()).st_ino
    argv = [sys.executable, "-m", "graceful", "serve", "tests.apps.workers_app:app", "--fd",
            str(owned.fileno()), "--workers", "2", "--worker-start", "preload",
            "--admin-port", "0"]  # fmt: skip
    env = {**os.environ, "GRACEFUL_ACCESS_LOG": "off"}
    log = tmp_path / "serve.log"
    with owned, log.open("ab") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, pass_fds=(owned.fileno(),),
                                stdout=out, stderr=out)  # fmt: skip
        try:
            workers: set[int] = set()
            deadline = time.monotonic() + HANG_GUARD
            while len(workers) < 2:
                assert time.monotonic() < deadline, log.read_text()
                assert proc.poll() is None, log.read_text()
                with contextlib.suppress(OSError):
                    workers.add(int(get(f"http://127.0.0.1:{port}/pid", 2.0)[1].split()[0]))
            for pid in workers:
                copies = [
                    fd.name
                    for fd in Path(f"/proc/{pid}/fd").iterdir()
                    if os.readlink(fd) == f"socket:[{inode}]"
                ]
                assert len(copies) >= 2  # the zygote's inheritance, and the one it was handed
                for fd in copies:
                    flags = Path(f"/proc/{pid}/fdinfo/{fd}").read_text().split()[3]
                    assert int(flags, 8) & os.O_CLOEXEC, (pid, fd)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(HANG_GUARD) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert "serve.not_forkable" not in log.read_text()


#: Runs the launcher given after it (``python -u tests/apps/supervise.py spec``) in this
#: process, once a thread is running: a supervisor that cannot fork its zygote safely.
THREADED_LAUNCHER = """\
import runpy, sys, threading, time

threading.Thread(target=time.sleep, args=(120,), name="embedder", daemon=True).start()
sys.argv = sys.argv[3:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_supervisor_with_a_thread_spawns_its_zygote_instead(tmp_path: Path) -> None:
    """1. The supervisor runs where a thread already runs (an embedding program), so forking
    its zygote from it is unsafe. Result: the zygote is started as a process of its own
    (``"forked": false``), and it still forks the workers: they serve, each the supervisor's
    child, and the stop exits 0. (The control, a supervisor without a thread, forks it:
    ``"forked": true`` in the first test.)"""
    launcher = tmp_path / "threaded.py"
    launcher.write_text(THREADED_LAUNCHER)
    argv = [sys.executable, str(launcher)]
    with Container(env=write_app(tmp_path), spec="forkapp:app", argv=argv) as container:
        pids = container.wait_ready()
        started = container.wait_supervisor_event("zygote.started")
        assert started["forked"] is False
        assert "graceful.serve.zygote" in cmdline(started["pid"])
        for pid in pids.values():
            assert parent_of(pid) == container.pid
            assert "graceful.serve.worker" not in cmdline(pid)
        assert container.stop() == 0


QUIRKY = (
    APP
    + """
import signal, sys
if os.environ.get("APP_IGNORE_SIGCHLD"):
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
sys.stdout.write("PARTIAL-LINE")  # no newline: still in stdout's buffer at the fork
"""
)


def test_preload_of_an_app_that_ignores_sigchld_and_leaves_output_buffered(
    tmp_path: Path,
) -> None:
    """Found by attack, both failing on the previous code: a preloaded app that sets SIGCHLD
    to SIG_IGN made the zygote "lost" at its first fork (the kernel collected the
    intermediate process the zygote waited for), and output the import left in stdout's
    buffer was written again by every worker. Now the workers are forked and the output
    appears once."""
    (tmp_path / "quirky.py").write_text(QUIRKY)
    env = {
        "GRACEFUL_APP_DIR": str(tmp_path),
        "GRACEFUL_WORKER_START": "preload",
        "APP_IGNORE_SIGCHLD": "1",
    }
    with Container(env=env, spec="quirky:app") as container:
        container.wait_ready()
        assert not container.events("zygote.lost")
        assert container.stop() == 0
    assert "".join(container.service.lines).count("PARTIAL-LINE") == 1


def test_an_environment_too_large_for_the_link_spawns_the_workers(tmp_path: Path) -> None:
    """About 1 MiB of environment (nine 120 kB variables) does not fit one frame of the
    zygote's link: the supervisor used to die at startup with a ValueError; now it says so
    (``zygote.unavailable``) and spawns the workers, which serve as with ``spawn``."""
    env = {**write_app(tmp_path), **{f"APP_BIG_{i}": "x" * 120_000 for i in range(9)}}
    with Container(env=env, spec="forkapp:app") as container:
        container.wait_ready()
        assert container.events("zygote.unavailable")
        assert container.stop() == 0
