"""The zygote of ``graceful serve --workers N``: imports once, then forks every worker.

The supervisor forks it (see below), or starts it as::

    python -m graceful.serve.zygote --control-fd C --supervisor-pid P

with its end of a control link (framed as :mod:`graceful.serve.control`'s) as an inherited
descriptor. It reads a :class:`~graceful.serve.control.WorkerStart` (the worker settings),
imports what every worker needs (graceful's runtime, structlog, prometheus-client, uvicorn and
its protocols) and, with ``--worker-start preload``, the app itself; then ``gc.freeze()``, so
that the collector never writes to the pages its workers share copy-on-write, tells the
supervisor ``loaded``, and waits for requests, one per worker to start:

=============  ==========  ================================================================
direction      op          meaning
=============  ==========  ================================================================
to zygote      ``fork``    fork a worker; the frame carries the worker's end of its control
                           link and the shared listener (``SCM_RIGHTS``); ``index``
to supervisor  ``loaded``  imported: forks can be asked for
to supervisor  ``forked``  ``pid`` of the new worker, already the supervisor's child
to supervisor  ``failed``  the fork failed (``error``)
=============  ==========  ================================================================

Each worker is forked by a short-lived intermediate process that exits at once, so that the
worker is handed to the supervisor, a subreaper (``PR_SET_CHILD_SUBREAPER``): the supervisor
then sees, collects and kills its workers as its own children, exactly as spawned ones, and a
worker ties its life to the supervisor's (``PR_SET_PDEATHSIG``), not to the zygote's. A worker
leads a session of its own (a terminal's Ctrl-C reaches the supervisor only) and runs
:func:`graceful.serve.worker.run_forked` once the zygote's loop has unwound; unless the app
was preloaded it then imports the app as a spawned worker does: a stop during that import, an
import that fails, and the replacement of a worker that crashed are all as with ``spawn``.

The zygote is normally forked from the supervisor itself, before its event loop and any thread
exist (:meth:`graceful.serve.forking.Zygote.fork_here`), after the supervisor imported the
modules above: the supervisor, the zygote and every worker then share those pages. Where that
is not possible it is started as ``python -m graceful.serve.zygote``.

Nothing here starts a thread or an event loop: a fork copies only the forking thread, and a
lock another thread held would stay locked in the child forever. For the same reason a
preloaded app that started threads or opened sockets at import is refused
(:func:`fork_hazards`), naming them.

The zygote ends when the supervisor closes the link (its stop) or dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import importlib
import json
import os
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Iterable, Sequence
from typing import NoReturn

from graceful.logs import last_line, writes_json
from graceful.runner import end_if_threads_hold
from graceful.serve.control import HEADER, MAX_FRAME, WorkerStart, encode, read_start, recv_exactly
from graceful.serve.processes import write_whole_lines
from graceful.serve.target import Target, load_guarded, load_target
from graceful.serve.worker import _die_with, run_forked
from graceful.signals import StartupSignals
from graceful.status import ExitCode

__all__ = [
    "WARM_MODULES",
    "fork_hazards",
    "forked_from_supervisor",
    "main",
    "open_descriptors",
    "serve",
    "thread_count",
]


#: Modules every worker imports after its start, imported once here instead (those not
#: installed are skipped): the ASGI server path of :mod:`graceful.serve.app`.
WARM_MODULES = (
    "graceful.integrations.asgi",
    "graceful.serve.abortable",
    "uvicorn.config",
    "uvicorn.server",
    "uvicorn.lifespan.on",
    "uvicorn.protocols.http.h11_impl",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.http.auto",
    "uvicorn.protocols.websockets.auto",
    "uvicorn.loops.auto",
    "uvloop",
)


class _InWorker(BaseException):
    """Raised in a freshly forked worker: unwinds the zygote's loop, so that the worker runs
    (and exits, atexit handlers included) from the top of ``main`` with a clean stack."""

    def __init__(self, control_fd: int, listen_fd: int) -> None:
        super().__init__()
        self.control_fd = control_fd
        self.listen_fd = listen_fd


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of a zygote started as a process of its own; returns its exit code (or,
    in a worker it forked, the worker's).
    """
    args = _parser().parse_args(argv)
    write_whole_lines()
    if not _die_with(args.supervisor_pid):
        print("graceful serve: zygote: the supervisor is gone", file=sys.stderr, flush=True)
        return int(ExitCode.ERROR)
    return serve(socket.socket(fileno=args.control_fd), args.supervisor_pid)


def forked_from_supervisor(link: socket.socket, supervisor_pid: int) -> NoReturn:
    """The life of a zygote forked from the supervisor before its event loop and threads
    existed (so that the zygote and its workers share the supervisor's pages too).

    It leaves the supervisor's session (a terminal's Ctrl-C is the supervisor's to handle)
    and drops its signal handlers (a worker installs its own). It never returns into the
    supervisor's code: it ends with ``os._exit``, after what an interpreter's exit does (wait
    for the non-daemon threads, run the ``atexit`` handlers, flush the output).
    """
    code = int(ExitCode.ERROR)
    try:
        os.setsid()
        for sig in signal.valid_signals():
            if callable(signal.getsignal(sig)):
                python_default = sig == signal.SIGINT
                signal.signal(sig, signal.default_int_handler if python_default else signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        write_whole_lines()
        if _die_with(supervisor_pid):
            code = serve(link, supervisor_pid)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            end_if_threads_hold(code)  # threads an import that failed or was stopped left
            threading._shutdown()  # type: ignore[attr-defined]
        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BaseException):
                stream.flush()
        os._exit(code)


def serve(link: socket.socket, supervisor_pid: int) -> int:
    """Import, then fork a worker per request on ``link``; returns the zygote's exit code (or,
    in a worker it forked, the worker's)."""
    # What it holds from before (the supervisor's, or an ``--fd`` socket): forked into every
    # worker, but never on to a program the app executes; and not the app's (``preload``).
    inherited = open_descriptors()
    for fd in inherited - {0, 1, 2}:
        with contextlib.suppress(OSError):
            os.set_inheritable(fd, False)
    try:
        start = read_start(link)
        _apply(_read_json(link))
    except ConnectionError:
        return int(ExitCode.OK)  # a stop before the supervisor needed us: nothing to say
    except (OSError, ValueError) as exc:
        print(f"graceful serve: zygote: no start from the supervisor: {exc}", file=sys.stderr)
        return int(ExitCode.ERROR)
    warm()
    native = thread_count() - threading.active_count()
    if native > 0:  # a sitecustomize's or an agent's, before any app code
        return _fail(
            start,
            "serve.not_forkable",
            f"this process runs {native} thread(s) outside Python before the app is imported "
            "(a sitecustomize, an agent's native part): forked workers would inherit the locks "
            "they hold; serve with --worker-start spawn (GRACEFUL_WORKER_START=spawn)",
        )
    preloaded: Target | None = None
    if start.options.worker_start == "preload":
        loaded = _preload(start, inherited)
        if isinstance(loaded, ExitCode):
            return int(loaded)
        preloaded = loaded
    gc.collect()
    gc.freeze()  # the collector never touches (so never copies) the pages workers share
    try:
        link.sendall(encode({"op": "loaded", "pid": os.getpid()}))
        _fork_on_request(link)
    except _InWorker as caught:
        forked = caught
    except OSError:
        return int(ExitCode.OK)  # the supervisor is gone: PR_SET_PDEATHSIG ends us anyway
    else:
        return int(ExitCode.OK)
    # Out of the ``except`` block: the app's errors are not chained to the fork's unwinding.
    return run_forked(forked.control_fd, forked.listen_fd, supervisor_pid, preloaded)


def _apply(message: dict[str, object]) -> None:
    """The workers' environment, from the supervisor (the metrics directory is known only
    once its loop runs, after a zygote forked from it started)."""
    env = message.get("env")
    if not isinstance(env, dict):
        raise ValueError("no environment in the start")
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in env.items()})
    # prometheus-client picks its value class (multiprocess or not) from the environment at
    # its import, which the supervisor made before the directory was set: pick again.
    from prometheus_client import values

    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def _read_json(sock: socket.socket) -> dict[str, object]:
    (size,) = HEADER.unpack(recv_exactly(sock, HEADER.size))
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes")
    message = json.loads(recv_exactly(sock, size))
    if not isinstance(message, dict):
        raise ValueError("not a JSON object")
    return message


def warm() -> None:
    """Import :data:`WARM_MODULES` (each worker then finds them imported)."""
    for name in WARM_MODULES:
        # Any failure, not only ImportError (a broken optional dependency raising at import):
        # a module not warmed here is imported by each worker, as with ``spawn``.
        with contextlib.suppress(Exception):
            importlib.import_module(name)


def fork_hazards(keep: Iterable[int] = ()) -> list[str]:
    """What makes this process unsafe to fork: threads besides the main one, open sockets.

    A forked worker would get neither the threads (only the forking thread is copied, and a
    lock one of them held stays held) nor sockets of its own (every worker would share one
    connection to a database, their bytes interleaved).

    Args:
        keep: descriptors that are not the app's (open before its import).
    """
    hazards = [
        f"a thread ({thread.name!r})"
        for thread in threading.enumerate()
        if thread is not threading.main_thread()
    ]
    unseen = thread_count() - threading.active_count()  # started by C code: Python lists none
    if unseen > 0:
        hazards.append(f"{unseen} thread(s) outside Python (a C extension's)")
    for fd in sorted(open_descriptors() - set(keep)):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                hazards.append(f"a socket ({_socket_ends(fd)}, descriptor {fd})")
    return hazards


def _socket_ends(fd: int) -> str:
    """``to 10.0.0.5:5432`` or ``listening on 0.0.0.0:9000``: where to look in the app."""
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            with contextlib.suppress(OSError):  # not connected
                peer = _address(sock.getpeername())
                if peer:
                    return f"to {peer}"
            return f"on {_address(sock.getsockname()) or 'an unnamed address'}"
    except OSError:
        return "of an unknown kind"


def _address(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    if isinstance(address, bytes):
        address = address.decode(errors="replace")
    return str(address)


def thread_count() -> int:
    """This process's threads as the kernel counts them, those C code started included."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def open_descriptors() -> set[int]:
    """This process's open file descriptors (none where ``/proc`` cannot be read)."""
    try:
        return {int(name) for name in os.listdir("/proc/self/fd")}
    except OSError:
        return set()


def _preload(start: WorkerStart, inherited: set[int]) -> Target | ExitCode:
    """Import the app here, with a stop (the supervisor's SIGTERM) ending the import at once."""
    options = start.options
    guard = StartupSignals(("SIGTERM",)).install()
    try:
        loaded = load_guarded(
            start.spec,
            lambda: load_target(start.spec, factory=options.factory, app_dir=options.app_dir),
            guard,
            command="serve",
            label="graceful serve: zygote",
            log_format=start.config.log_format,
            import_error=lambda message: _fail(start, "serve.failed_to_load", message),
            zygote=True,
        )
    finally:
        guard.restore()
    if isinstance(loaded, ExitCode):
        return loaded
    hazards = fork_hazards(keep=inherited)
    if hazards:
        return ExitCode(
            _fail(
                start,
                "serve.not_forkable",
                f"the app started {', '.join(hazards)} at import, which forked workers "
                "cannot share; serve it with --worker-start fork (GRACEFUL_WORKER_START=fork: "
                "each worker imports the app) or move that work to the app's startup",
            )
        )
    target: Target = loaded
    return target


def _fail(start: WorkerStart, event: str, message: str) -> int:
    if writes_json(start.config.log_format):
        last_line(event, app=start.spec, error=message, zygote=True)
    else:
        print(f"graceful serve: zygote: {message}", file=sys.stderr, flush=True)
    return int(ExitCode.ERROR)


def _fork_on_request(link: socket.socket) -> None:
    """Fork a worker per request until the supervisor closes the link."""
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(link, HEADER.size, 2)
        except ConnectionError:
            return
        if not data:
            return
        try:
            if len(data) < HEADER.size:
                data += recv_exactly(link, HEADER.size - len(data))
            (size,) = HEADER.unpack(data)
            if size > MAX_FRAME or len(fds) != 2:
                raise OSError(f"bad fork request ({size} bytes, {len(fds)} descriptors)")
            json.loads(recv_exactly(link, size))  # {"op": "fork", "index": i}: for the log
            reply = {"op": "forked", "pid": _fork(link, fds[0], fds[1])}
        except (OSError, ValueError) as exc:
            reply = {"op": "failed", "error": str(exc)}
        # Not in a ``finally``: in the new worker (``_InWorker`` passing) they are its own.
        for fd in fds:
            os.close(fd)
        link.sendall(encode(reply))


def _fork(link: socket.socket, control_fd: int, listen_fd: int) -> int:
    """Fork a worker through an intermediate process; return its pid once it is the
    supervisor's child."""
    # Output buffered by the zygote (a preloaded app's prints) would otherwise be written
    # again by every worker that inherits the buffer.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:  # the intermediate: a fork, and gone
        try:
            os.close(read_end)
            os.close(link.detach())
            worker = os.fork()
            if worker == 0:  # a session of its own, led by it, as a spawned worker's
                os.setsid()
                os.close(write_end)
        except BaseException:
            os._exit(1)
        if worker == 0:
            raise _InWorker(control_fd, listen_fd)
        try:
            os.write(write_end, str(worker).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        pid = b""
        while chunk := os.read(read_end, 32):
            pid += chunk
    finally:
        os.close(read_end)
        # Once the intermediate is collected its child is the supervisor's (it exited). An
        # app that set SIGCHLD to SIG_IGN has the kernel collect it instead: nothing to wait.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(middle, 0)
    if not pid:
        raise OSError("the intermediate process could not fork the worker")
    return int(pid)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m graceful.serve.zygote")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--supervisor-pid", type=int, required=True)
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
