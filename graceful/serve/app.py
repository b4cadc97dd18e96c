"""Serve a loaded target under a runtime: uvicorn for an ASGI app, aiohttp for an Application.

What a hand-written ``main`` would do with ``asgi.serve_config`` or ``aiohttp.serve``, with
the settings of :class:`~graceful.serve.options.ServeOptions`. The server library is imported
only for the kind of app served (each is an optional dependency).

A stop while the app starts (an ASGI lifespan startup, aiohttp's ``on_startup``, waiting for
a database that does not answer) aborts that startup at once: it is cancelled, what it had
opened closes (the lifespan's own ``finally``, the cleanup contexts already entered), its
shutdown half does not run, and nothing is served; the stop ends with exit 0, since nothing
was accepted. A stop while the listener binds lets the bind finish (it takes no time): the
runtime then closes the new listener at once and runs the app's shutdown as usual.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from graceful.exceptions import GracefulError
from graceful.hooks import Phase
from graceful.serve.listeners import SocketFile, bind_listener
from graceful.serve.options import ServeOptions
from graceful.serve.target import Target

if TYPE_CHECKING:
    import uvicorn

    from graceful.runtime import Runtime

__all__ = ["serve_target"]

#: Options that only uvicorn understands, with their defaults: set for an aiohttp app, they
#: are reported as ignored.
_ASGI_ONLY = {"lifespan": "auto", "root_path": "", "limit_concurrency": None}

_T = TypeVar("_T")


async def serve_target(
    runtime: Runtime, target: Target, options: ServeOptions, *, sock: socket.socket | None = None
) -> None:
    """Start serving ``target``; the runtime drains and stops it.

    Runs the app's startup (ASGI lifespan, or aiohttp's ``on_startup`` and cleanup contexts),
    opens the listener and returns once it accepts connections. The server is registered with
    the runtime, so a stop drains it in the usual phases. A stop that begins while the app's
    startup runs cancels it and returns, serving nothing (see the module docs).

    Args:
        runtime: the runtime that owns the signals and the stop.
        target: the app, from :func:`~graceful.serve.target.load_target`.
        options: how to serve it.
        sock: a listening socket to serve on (a supervisor shares one with its workers);
            ``None`` binds per ``options`` (``fd``, ``uds``, or ``host`` and ``port``). It is
            closed in the ``stop_accept`` phase.

    Raises:
        GracefulError: the ASGI lifespan startup failed or the address could not be bound.
        OSError: the aiohttp listener could not be bound.

    .. versionadded:: 0.1
    """
    owned = sock is None and (options.fd is not None or options.uds is not None)
    if sock is None and options.fd is not None:
        # Owned, not duplicated (uvicorn's own ``fd`` path dups it): closing the listener at
        # stop_accept must close the last descriptor, or the kernel keeps queueing
        # connections nobody will accept.
        sock = _listener(options)
    elif sock is None and options.uds is not None:
        sock = _listener(options)
        runtime.on_shutdown(SocketFile.of(sock).remove, phase=Phase.CLOSE, name="uds.remove")
    starting: Callable[[], bool]
    undo: Callable[[], Awaitable[None]]
    if target.kind == "aiohttp":
        app = target.app
        start = _serve_aiohttp(runtime, target, options, sock)
        starting, undo, step = (lambda: not app.frozen), app.cleanup, "on_startup"
        # ``app.cleanup()`` before a completed startup exits only the cleanup contexts that
        # were entered (aiohttp's own rule: ``on_cleanup`` belongs to a started app).
    else:
        from graceful.serve.abortable import LifespanWatch

        lifespan = LifespanWatch(_asgi_config(runtime, options, target, sock))
        start = _serve_asgi(runtime, lifespan.config, sock)
        starting, undo, step = lifespan.starting, lifespan.abort, "lifespan startup"
    listening, error = await _start_unless_stopped(runtime, start, starting)
    if listening is None:
        await undo()
        if owned and sock is not None:
            sock.close()
        runtime.log.warning(
            "startup.aborted",
            app=target.spec,
            step=step,
            reason=runtime.stop_reason,
            error=error,
            action=f"{step} cancelled, what it had opened closed; nothing was served",
        )
        return
    if any(s is None for s in listening):
        # uvloop does not report a ``listen`` that failed on a given socket (a port another
        # process took since a supervisor bound it): it leaves no socket, and serves nothing.
        raise GracefulError(f"cannot listen on {options.address}: the server could not listen")
    runtime.log.info(
        "serve.listening",
        app=target.spec,
        kind=target.kind,
        address=options.address if sock is None else "socket",
        sockets=[_name(s) for s in listening],
        access_log=options.access_log,
    )


def _listener(options: ServeOptions) -> socket.socket:
    """The ``--fd`` or ``--uds`` listener, made here as the supervisor makes it.

    Before the app starts: left to the server, a Unix socket path that is taken fails only
    after the app's startup ran (uvicorn then leaves its lifespan running, cancelled at exit
    with a traceback, its shutdown never run), a socket another server listens on is
    silently replaced (asyncio and uvloop remove any socket file), and an ``--fd`` that is
    not a bound stream socket is a traceback, or served on a random port.

    Raises:
        GracefulError: it cannot be listened on; the message says why in one line.
    """
    try:
        return bind_listener(options)
    except OSError as exc:
        raise GracefulError(f"cannot listen on {options.address}: {exc.strerror or exc}") from None


async def _start_unless_stopped(
    runtime: Runtime, start: Coroutine[Any, Any, _T], starting: Callable[[], bool]
) -> tuple[_T | None, str | None]:
    """Run ``start``; cancel it if a stop begins while ``starting()`` (the app's startup).

    Returns its result, or ``None`` and what it raised once cancelled (``None`` for the
    cancellation itself). The drain would otherwise wait for a startup that may never end
    (a database that does not answer) and cut it at the deadline: exit 3 for a service that
    accepted nothing.
    """
    task = asyncio.ensure_future(start)
    stop = asyncio.ensure_future(runtime.wait_stopping())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        if task.done() or not starting():
            return await task, None  # a bind under way when the stop came is let finish
        task.cancel()
        await asyncio.wait({task})
    except asyncio.CancelledError:
        task.cancel()  # our caller is cancelled (the cancel phase): so is the startup
        raise
    finally:
        stop.cancel()
    if task.cancelled():
        return None, None
    if task.exception() is not None:  # the app turned the cancellation into its own error
        exc = task.exception()
        return None, f"{type(exc).__name__}: {exc}"
    return task.result(), None  # it finished before the cancellation reached it


def _asgi_config(
    runtime: Runtime, options: ServeOptions, target: Target, sock: socket.socket | None
) -> uvicorn.Config:
    import uvicorn

    config = uvicorn.Config(
        target.app,
        host=options.host,
        port=options.port,
        uds=options.uds if sock is None else None,
        lifespan=options.lifespan,
        root_path=options.root_path,
        proxy_headers=options.proxy_headers,
        forwarded_allow_ips=options.forwarded_allow_ips,
        limit_concurrency=options.limit_concurrency,
        backlog=options.backlog,
        timeout_keep_alive=options.timeout_keep_alive,
        log_config=None,
        log_level=runtime.config.log_level,
    )
    # After construction: ``uvicorn.Config(access_log=False)`` would also stop the
    # ``uvicorn.access`` logger from propagating, for the whole process.
    config.access_log = options.access_log
    return config


async def _serve_asgi(
    runtime: Runtime, config: uvicorn.Config, sock: socket.socket | None
) -> list[socket.socket]:
    from graceful.integrations import asgi

    server = await asgi.serve_config(runtime, config, sockets=[sock] if sock is not None else None)
    return [s for listener in server.server.servers for s in listener.sockets]


async def _serve_aiohttp(
    runtime: Runtime, target: Target, options: ServeOptions, sock: socket.socket | None
) -> list[socket.socket]:
    from graceful.integrations import aiohttp as graceful_aiohttp

    ignored = [name for name, default in _ASGI_ONLY.items() if getattr(options, name) != default]
    if ignored:
        runtime.log.warning("serve.options_ignored", options=ignored, reason="ASGI only")
    server = await graceful_aiohttp.serve(
        runtime,
        target.app,
        host=options.host,
        port=options.port,
        sock=sock,
        path=options.uds if sock is None else None,
        keepalive_timeout=float(options.timeout_keep_alive),
        access_log=options.access_log,
        backlog=options.backlog,
    )
    assert server.listener is not None
    return list(server.listener.sockets)


def _name(sock: socket.socket) -> str:
    address = sock.getsockname()
    if isinstance(address, tuple):
        host = f"[{address[0]}]" if ":" in address[0] else address[0]
        return f"{host}:{address[1]}"
    return f"unix:{address}"
