"""Test app for ``graceful serve``: a Starlette app that knows nothing of graceful.

Only its stream asks ``draining(scope)`` when to end, which works with or without graceful.
It logs through the standard library only, as most apps do.

- ``GET /slow?s=1.0``: logs ``slow started``, sleeps, answers ``done``.
- ``GET /sse?limit=N``: a server-sent event every 0.1 s until the server drains (then a
  last ``event: bye``) or N ticks were sent.
- ``GET /sse-deaf``: the same stream, deaf to the stop (graceful ends it at the drain's start).
- ``GET /stream-deaf``: an endless ``text/plain`` stream deaf to the stop (a control: cut at
  the deadline).
- ``GET /log``: logs an info line with an extra field and a warning.
- ``GET /boom``: raises (uvicorn logs the traceback).
- ``GET /whoami``: the client, scheme and root_path the app sees (proxy headers, root path).

``APP_BASIC_LOGGING=1`` configures ``logging.basicConfig`` at import, as an app that owns its
logging does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from graceful.integrations.asgi import draining

if os.environ.get("APP_BASIC_LOGGING") == "1":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

log = logging.getLogger("app")


async def slow(request: Request) -> Response:
    seconds = float(request.query_params.get("s", "1.0"))
    log.info("slow started")
    await asyncio.sleep(seconds)
    return PlainTextResponse("done")


async def sse(request: Request) -> Response:
    stop = draining(request.scope)
    limit = int(request.query_params.get("limit", "0")) or None

    async def ticks() -> AsyncIterator[str]:
        sent = 0
        while not stop.is_set() and (limit is None or sent < limit):
            yield f"data: tick {sent}\n\n"
            sent += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.1)
        yield "event: bye\ndata: server stopping\n\n" if stop.is_set() else "event: done\n\n"

    return StreamingResponse(ticks(), media_type="text/event-stream")


async def sse_deaf(request: Request) -> Response:
    async def ticks() -> AsyncIterator[str]:
        while True:
            yield "data: tick\n\n"
            await asyncio.sleep(0.1)

    return StreamingResponse(ticks(), media_type="text/event-stream")


async def stream_deaf(request: Request) -> Response:
    async def lines() -> AsyncIterator[str]:
        while True:
            yield "line\n"
            await asyncio.sleep(0.1)

    return StreamingResponse(lines(), media_type="text/plain")


async def log_lines(request: Request) -> Response:
    log.info("user logged in", extra={"user": "ada"})
    log.warning("disk almost full")
    return PlainTextResponse("logged")


async def boom(request: Request) -> Response:
    raise RuntimeError("boom")


async def whoami(request: Request) -> Response:
    client = request.client.host if request.client else None
    scope = request.scope
    return JSONResponse(
        {"client": client, "scheme": scope["scheme"], "root_path": scope["root_path"]}
    )


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    log.info("lifespan startup")
    yield
    log.info("lifespan shutdown")


app = Starlette(
    routes=[
        Route("/slow", slow),
        Route("/sse", sse),
        Route("/sse-deaf", sse_deaf),
        Route("/stream-deaf", stream_deaf),
        Route("/log", log_lines),
        Route("/boom", boom),
        Route("/whoami", whoami),
    ],
    lifespan=lifespan,
)
