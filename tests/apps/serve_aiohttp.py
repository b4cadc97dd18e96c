"""Test app for ``graceful serve``: an aiohttp app (``app``) and its factory (``make_app``).

- ``GET /slow?s=1.0``: logs ``slow started``, sleeps, answers ``done``.
- ``GET /sse``: a server-sent event every 0.1 s until the server drains, then ``event: bye``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web

from graceful.integrations.aiohttp import draining

log = logging.getLogger("app")


async def slow(request: web.Request) -> web.StreamResponse:
    seconds = float(request.query.get("s", "1.0"))
    log.info("slow started")
    await asyncio.sleep(seconds)
    return web.Response(text="done")


async def sse(request: web.Request) -> web.StreamResponse:
    stop = draining(request)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    while not stop.is_set():
        await response.write(b"data: tick\n\n")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.1)
    await response.write(b"event: bye\ndata: server stopping\n\n")
    await response.write_eof()
    return response


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/slow", slow)
    app.router.add_get("/sse", sse)
    return app


app = make_app()
