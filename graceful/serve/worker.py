"""One worker process of ``graceful serve --workers N``: the full runtime on a shared listener.

The zygote forks it (:mod:`graceful.serve.zygote`, :func:`run_forked`), or, with
``--worker-start spawn``, the supervisor starts it as::

    python -m graceful.serve.worker --listen-fd L --control-fd C --supervisor-pid P

with the shared listener and its end of the control link (:mod:`graceful.serve.control`) as
inherited descriptors, in a session of its own (a terminal's Ctrl-C reaches the supervisor
only, which passes the stop on). It reads its :class:`~graceful.serve.control.WorkerStart`,
imports the app, and runs ``Runtime(config).run(main)`` with ``main`` serving the app on the
shared socket, exactly as single-process ``graceful serve`` does, except:

- the stop comes from the supervisor (``stop`` with its deadline, ``skip_drain`` for a second
  signal), not from a signal; a signal sent to the worker itself still stops it;
- no admin server: the supervisor's answers for the container;
- a :class:`~graceful.serve.listeners.BacklogGuard` drains the shared backlog before the
  server closes its copy of the listener;
- metrics go to ``PROMETHEUS_MULTIPROC_DIR`` for the supervisor to add up; gauges that read a
  value at scrape time (``set_function``) cannot work across processes, so the in-flight and
  connection gauges are written from the servers' counts ten times a second.

The app can tell which worker it runs in from ``GRACEFUL_WORKER`` (0 to N-1; a replacement
gets the index of the worker it replaces); the worker's log lines carry ``worker`` too.

It dies with the supervisor (``PR_SET_PDEATHSIG``): a supervisor that is killed, or exits at
once on a third signal, takes its workers with it even outside a PID namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import ctypes
import ctypes.util
import functools
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace

import structlog
from prometheus_client import Gauge

from graceful.config import Config
from graceful.draining import Drainable, DrainableServer
from graceful.logs import last_line, writes_json
from graceful.runner import end_if_threads_hold
from graceful.runtime import Runtime
from graceful.serve.app import serve_target
from graceful.serve.control import Message, Op, WorkerStart, encode, messages, read_start
from graceful.serve.listeners import BacklogGuard, taken_by_another
from graceful.serve.processes import write_whole_lines
from graceful.serve.target import Target, load_guarded, load_target
from graceful.signals import StartupSignals
from graceful.status import ExitCode

__all__ = ["ControlReader", "WorkerRuntime", "main", "run", "run_forked"]

_PR_SET_PDEATHSIG = 1
#: Seconds between two writes of the in-flight and connection gauges (multiprocess mode): a
#: write is a store into a mapped file, so ten a second cost nothing, and the requests a
#: killed worker had in flight are known to within a tenth of a second (found by attack: with
#: one a second, a worker killed 0.2 s after its requests began had lost none).
GAUGE_INTERVAL = 0.1
#: Seconds a forked worker waits to be handed to the supervisor (it takes a millisecond).
REPARENT_TIMEOUT = 5.0


class WorkerRuntime(Runtime):
    """The runtime of one worker: a :class:`~graceful.Runtime` linked to its supervisor.

    The control link is read on a thread of its own: a ``stop`` arms the watchdog for its
    deadline at once, so a worker whose event loop is blocked still ends at the deadline, with
    the stack of what blocked it, before the supervisor has to kill it.

    It remembers its servers, so that their in-flight and connection counts can be written
    to the multiprocess gauges (``add_drainable`` feeds them with ``set_function``, which is
    read at scrape time, in this process's registry, which nobody scrapes).

    Args:
        config: the worker's settings.
        control: this worker's end of the control link (blocking).
        reader: the link's reader, already running (from before the app's import); ``None``
            starts one here.
    """

    def __init__(
        self, config: Config, control: socket.socket, reader: ControlReader | None = None
    ) -> None:
        super().__init__(config)
        self.recorder.event = "worker.shutdown.report"
        self.servers: list[Drainable] = []
        self.control = control
        self.reader = ControlReader(control) if reader is None else reader
        #: The stop is the container's, told by the supervisor (not this worker's alone): the
        #: shared listener is then filtered against new connections.
        self.stopped_by_supervisor = False
        self.cleanup_context(self._linked)

    def add_drainable(self, drainable: Drainable) -> None:
        super().add_drainable(drainable)
        if not isinstance(drainable, BacklogGuard):
            self.servers.append(drainable)

    def publish_gauges(self) -> None:
        """Write the servers' current counts to the in-flight and connection gauges.

        Through ``recorder.count``: a gauge that cannot be written (its file at the
        descriptor limit) is logged once; raised, it would end the publishing task and fail
        its cleanup at the stop.
        """
        for server in self.servers:
            count = self.recorder.count
            count(functools.partial(_set, self.metrics.inflight, server.name, server.inflight()))
            if isinstance(server, DrainableServer):
                connections = server.connection_count()
                count(functools.partial(_set, self.metrics.connections, server.name, connections))

    def announce_ready(self) -> None:
        """Mark the runtime ready and tell the supervisor (unless a stop began meanwhile)."""
        if self.stopping:
            return
        self.mark_ready()
        with contextlib.suppress(OSError):  # the supervisor is gone: its stop follows
            self.control.sendall(encode({"op": Op.READY, "pid": os.getpid()}))

    async def _linked(self) -> AsyncIterator[None]:
        # The first startup step: from here on a stop from the supervisor aborts the rest
        # (one that came earlier is handed over now).
        self.reader.start()
        self.reader.attach(self)
        gauges = asyncio.get_running_loop().create_task(self._publish(), name="gauges")
        try:
            yield
        finally:
            gauges.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gauges

    async def _publish(self) -> None:
        while True:
            await asyncio.sleep(GAUGE_INTERVAL)
            self.publish_gauges()

    def request_stop_threadsafe(self, reason: str, *, exit_by: float | None = None) -> None:
        """``request_stop`` from another thread; with ``exit_by`` the deadline holds at once.

        The watchdog is armed for ``exit_by`` right here, so that even a blocked event loop,
        which would never get to the stop, ends at the deadline naming what blocked it.
        """
        watchdog = self._shell.watchdog
        if exit_by is not None and watchdog is not None:
            watchdog.arm(exit_by)
        self._on_loop(functools.partial(self.request_stop, reason, exit_by=exit_by))

    def on_control(self, message: Message) -> None:
        """Act on a message from the supervisor (on the reader's thread)."""
        op = message.get("op")
        reason = f"supervisor: {message.get('reason', 'stop')}"
        if op in (Op.STOP, Op.SKIP_DRAIN, Op.GONE):
            self.stopped_by_supervisor = True  # the container's stop, not this worker's alone
        if op == Op.STOP:
            exit_by = message.get("exit_by")
            deadline = None if exit_by is None else float(exit_by)
            self.request_stop_threadsafe(reason, exit_by=deadline)
        elif op == Op.SKIP_DRAIN:
            self._on_loop(functools.partial(self.skip_drain, reason))
        elif op == Op.GONE:
            self._on_loop(functools.partial(self.request_stop, "supervisor gone"))

    def _on_loop(self, call: Callable[[], None]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed meanwhile: the stop is over
                loop.call_soon_threadsafe(call)


#: What the reader hands on when the supervisor closed its end of the link.


class ControlReader:
    """Reads the control link on a thread of its own, from before the app is imported.

    Until a :class:`WorkerRuntime` is attached, messages are kept for it; a ``stop`` (or the
    supervisor's end) that comes while the app is still being imported also interrupts the
    import, through ``guard`` (SIGTERM sent to the main thread, where
    :class:`~graceful.signals.StartupSignals` raises ``LoadingStopped``): an import can
    outlast the whole stop budget (a framework, a model), and a worker that served nothing
    then ends at once with exit 0, as ``graceful serve`` without workers does, instead of
    being killed at its deadline.

    Args:
        control: the worker's end of the link (blocking).
        guard: the startup signal handlers, if the import is guarded.
    """

    def __init__(self, control: socket.socket, guard: StartupSignals | None = None) -> None:
        self.control = control
        self.guard = guard
        self._lock = threading.Lock()
        self._runtime: WorkerRuntime | None = None
        self._pending: list[Message] = []
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the reader thread (once), in a copy of the caller's context (its log fields)."""
        if self._thread is not None:
            return
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._read,), name="graceful-control"
        )
        self._thread.daemon = True  # blocked in recv until the supervisor closes its end
        self._thread.start()

    def attach(self, runtime: WorkerRuntime) -> None:
        """Hand every message, those kept so far first, to ``runtime`` from now on."""
        with self._lock:
            self._runtime, pending, self._pending = runtime, self._pending, []
        for message in pending:
            runtime.on_control(message)

    def _read(self) -> None:
        for message in messages(self.control):
            self._dispatch(message)
        self._dispatch({"op": Op.GONE})

    def _dispatch(self, message: Message) -> None:
        with self._lock:
            runtime = self._runtime
            if runtime is None:
                self._pending.append(message)
                guard = self.guard
                stopping = message.get("op") in (Op.STOP, Op.GONE)
                if stopping and guard is not None and guard.in_import:
                    signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)
                return
        runtime.on_control(message)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of a worker process; returns its exit code."""
    args = _parser().parse_args(argv)
    write_whole_lines()
    if not _die_with(args.supervisor_pid):
        print("graceful serve: worker: the supervisor is gone", file=sys.stderr, flush=True)
        return int(ExitCode.ERROR)
    control = socket.socket(fileno=args.control_fd)
    return run(control, socket.socket(fileno=args.listen_fd))


def run_forked(
    control_fd: int, listen_fd: int, supervisor_pid: int, preloaded: Target | None
) -> int:
    """A worker forked by the zygote (:mod:`graceful.serve.zygote`); returns its exit code.

    It was forked by a short-lived intermediate process, whose exit hands it to the
    supervisor (a subreaper): it waits for that before it ties its life to the supervisor's,
    as a spawned worker does.

    Args:
        control_fd: its end of the control link.
        listen_fd: the shared listener.
        supervisor_pid: the supervisor, its parent-to-be.
        preloaded: the app, when the zygote imported it (``preload``); else it imports it.
    """
    deadline = time.monotonic() + REPARENT_TIMEOUT
    while os.getppid() != supervisor_pid and time.monotonic() < deadline:
        time.sleep(0.0005)  # the intermediate process exits right after the fork
    if not _die_with(supervisor_pid):
        print("graceful serve: worker: the supervisor is gone", file=sys.stderr, flush=True)
        return int(ExitCode.ERROR)
    control = socket.socket(fileno=control_fd)
    return run(control, socket.socket(fileno=listen_fd), preloaded)


def run(control: socket.socket, listener: socket.socket, preloaded: Target | None = None) -> int:
    """Serve as a worker on ``listener``, told by the supervisor over ``control``.

    Args:
        control: the worker's end of the control link.
        listener: the shared listener.
        preloaded: the app, already imported (forked from a zygote that preloaded it).
    """
    try:
        start = read_start(control)
    except (ConnectionError, OSError) as exc:
        print(f"graceful serve: worker: no start from the supervisor: {exc}", file=sys.stderr)
        return int(ExitCode.ERROR)
    # Inherited on purpose, but no further: a process the app starts (``os.system("x &")``,
    # ``Popen(close_fds=False)``) would otherwise hold the shared listener after the container
    # stopped, leaving the port taken and its new connections unanswered.
    for inherited in (listener, control):
        inherited.set_inheritable(False)
    # Nor to a child it forks (``os.fork``, multiprocessing's "fork"): not a server either.
    os.register_at_fork(after_in_child=functools.partial(_drop_in_child, listener, control))
    structlog.contextvars.bind_contextvars(worker=start.index)
    os.environ["GRACEFUL_WORKER"] = str(start.index)
    options = start.options
    # The stop may come while the app is imported: the reader interrupts the import with
    # SIGTERM, which these handlers turn into LoadingStopped there (a SIGTERM sent to the
    # worker itself does the same), and hand to the runtime after it.
    guard = StartupSignals(("SIGTERM",)).install()
    reader = ControlReader(control, guard)

    def load() -> Target:
        reader.start()  # in the import block: a stop read from now on interrupts the import
        if preloaded is not None:
            return preloaded
        return load_target(start.spec, factory=options.factory, app_dir=options.app_dir)

    try:
        target = load_guarded(
            start.spec,
            load,
            guard,
            command="serve",
            label=f"graceful serve: worker {start.index}",
            log_format=start.config.log_format,
            import_error=lambda message: _fail(start, "serve.failed_to_load", message),
            worker=start.index,
        )
        if isinstance(target, ExitCode):
            return int(target)
        taken = taken_by_another(listener)
        if taken is not None:
            return _fail(
                start,
                "serve.listen_failed",
                f"cannot listen on {options.address}: {taken.strerror}",
            )
        runtime = WorkerRuntime(replace(start.config, admin_port=None), control, reader)
        guard.hand_over(runtime)
        return _serve(runtime, start, listener, target)
    finally:
        guard.restore()


def _set(gauge: Gauge, server: str, value: float) -> None:
    gauge.labels(server=server).set(value)


def _drop_in_child(*sockets: socket.socket) -> None:
    for sock in sockets:  # detached first, so that the objects never close a reused number
        with contextlib.suppress(OSError):
            os.close(sock.detach())


def _serve(
    runtime: WorkerRuntime, start: WorkerStart, listener: socket.socket, target: Target
) -> int:
    options = start.options

    async def serve(_: Runtime) -> None:
        if start.backlog_guard:  # registered first: its stop_accept runs before the server's
            runtime.add_drainable(BacklogGuard(listener, lambda: runtime.stopped_by_supervisor))
        await serve_target(runtime, target, options, sock=listener)
        runtime.announce_ready()

    return runtime.run(serve)


def _fail(start: WorkerStart, event: str, message: str) -> int:
    # One JSON line where the log is JSON: the supervisor's and the other workers' lines are.
    if writes_json(start.config.log_format):
        last_line(event, app=start.spec, error=message, worker=start.index)
    else:
        print(f"graceful serve: worker {start.index}: {message}", file=sys.stderr, flush=True)
    return int(ExitCode.ERROR)


def _die_with(supervisor_pid: int) -> bool:
    """Ask the kernel for SIGKILL when the supervisor dies; False if it already has."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is not None:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # Checked after the request, so a supervisor that died just before is not missed.
    return os.getppid() == supervisor_pid


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m graceful.serve.worker")
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--supervisor-pid", type=int, required=True)
    return parser


if __name__ == "__main__":
    _code = main()
    end_if_threads_hold(_code)  # an import that failed or was stopped left threads behind
    raise SystemExit(_code)
