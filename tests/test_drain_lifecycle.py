"""The apps' own lifecycle hooks run in the right phases (in-process, real servers).

uvicorn: lifespan startup before the listener opens, lifespan shutdown in ``close``.
aiohttp: ``on_startup`` before the listener opens, ``on_shutdown`` in ``drain``,
``on_cleanup`` in ``close``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from graceful import Runtime
from graceful.integrations import aiohttp as graceful_aiohttp
from graceful.integrations import asgi
from graceful.testing import run_runtime


async def get_status(port: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    head = await reader.readuntil(b"\r\n")
    await reader.read()
    writer.close()
    return int(head.split()[1])


async def serve_one_request(
    holder: dict[str, Runtime], start: Callable[[Runtime], Awaitable[int]]
) -> Runtime:
    """Run a runtime whose ``main`` starts a server (``start`` returns its port), answer one
    request, stop; return the stopped runtime."""
    ports: list[int] = []
    listening = asyncio.Event()

    async def main(runtime: Runtime) -> None:
        holder["runtime"] = runtime
        ports.append(await start(runtime))
        listening.set()

    async with run_runtime(main=main) as runtime:
        await listening.wait()
        assert await get_status(ports[0]) == 200
    return runtime


async def test_uvicorn_lifespan_runs_around_serving() -> None:
    """1. serve an ASGI app with lifespan; 2. one request; 3. stop.

    Result: startup before the request, shutdown after it, in the ``close`` phase.
    """
    seen: list[str] = []
    holder: dict[str, Runtime] = {}

    async def app(scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                seen.append("startup")
                await send({"type": "lifespan.startup.complete"})
            seen.append(f"shutdown in {holder['runtime'].phase}")
            await send({"type": "lifespan.shutdown.complete"})
            return
        seen.append(f"request, stopping={asgi.status(scope).closing}")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def start(runtime: Runtime) -> int:
        return (await asgi.serve(runtime, app, host="127.0.0.1", port=0)).port

    runtime = await serve_one_request(holder, start)
    assert runtime.exit_code == 0
    assert seen == ["startup", "request, stopping=False", "shutdown in close"]


async def test_aiohttp_signals_run_in_their_phases() -> None:
    """1. serve an aiohttp app with on_startup/on_shutdown/on_cleanup; 2. one request; 3. stop.

    Result: on_startup before the request; on_shutdown in ``drain``; on_cleanup in ``close``.
    """
    seen: list[str] = []
    holder: dict[str, Runtime] = {}

    async def hello(request: web.Request) -> web.Response:
        seen.append("request")
        return web.Response(text="ok")

    def record(what: str) -> Any:
        async def hook(app: web.Application) -> None:
            runtime = holder.get("runtime")
            seen.append(f"{what} in {runtime.phase if runtime else None}")

        return hook

    app = web.Application()
    app.router.add_get("/", hello)
    app.on_startup.append(record("on_startup"))
    app.on_shutdown.append(record("on_shutdown"))
    app.on_cleanup.append(record("on_cleanup"))

    async def start(runtime: Runtime) -> int:
        return (await graceful_aiohttp.serve(runtime, app, host="127.0.0.1", port=0)).port

    runtime = await serve_one_request(holder, start)
    assert runtime.exit_code == 0
    assert seen == ["on_startup in None", "request", "on_shutdown in drain", "on_cleanup in close"]
