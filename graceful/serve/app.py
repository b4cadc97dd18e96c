"""Serve a loaded target under a runtime: uvicorn for an ASGI app, aiohttp for an Application.

What a hand-written ``main`` would do with ``asgi.serve_config`` or ``aiohttp.serve``, with
the settings of :class:`~graceful.serve.options.ServeOptions`. The server library is imported
only for the kind of app served (each is an optional dependency).
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from graceful.serve.options import ServeOptions
from graceful.serve.target import Target

if TYPE_CHECKING:
    from graceful.runtime import Runtime

__all__ = ["serve_target"]

#: Options that only uvicorn understands, with their defaults: set for an aiohttp app, they
#: are reported as ignored.
_ASGI_ONLY = {"lifespan": "auto", "root_path": "", "limit_concurrency": None}


async def serve_target(
    runtime: Runtime, target: Target, options: ServeOptions, *, sock: socket.socket | None = None
) -> None:
    """Start serving ``target``; the runtime drains and stops it.

    Runs the app's startup (ASGI lifespan, or aiohttp's ``on_startup`` and cleanup contexts),
    opens the listener and returns once it accepts connections. The server is registered with
    the runtime, so a stop drains it in the usual phases.

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
    if sock is None and options.fd is not None:
        # Owned, not duplicated (uvicorn's own ``fd`` path dups it): closing the listener at
        # stop_accept must close the last descriptor, or the kernel keeps queueing
        # connections nobody will accept.
        sock = socket.socket(fileno=options.fd)
    if target.kind == "aiohttp":
        listening = await _serve_aiohttp(runtime, target, options, sock)
    else:
        listening = await _serve_asgi(runtime, target, options, sock)
    runtime.log.info(
        "serve.listening",
        app=target.spec,
        kind=target.kind,
        address=options.address if sock is None else "socket",
        sockets=[_name(s) for s in listening],
        access_log=options.access_log,
    )


async def _serve_asgi(
    runtime: Runtime, target: Target, options: ServeOptions, sock: socket.socket | None
) -> list[socket.socket]:
    import uvicorn

    from graceful.integrations import asgi

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
        path=options.uds,
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
