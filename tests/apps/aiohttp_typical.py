"""Test app: an aiohttp service of the usual shape, written as if graceful did not exist.

- ``on_startup`` starts a poller with ``asyncio.create_task``; a cleanup context starts
  another; nothing cancels either;
- ``GET /events-big``: 64 KiB events with no pause;
- ``GET /slow?s=1.0``, ``GET /events`` (a ``while True`` event stream whose ``finally`` prints
  ``APP events finally``), ``GET /plain-stream`` (endless ``text/plain``), ``GET /spawn`` (a
  task left running by a handler: the control).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web


async def poll() -> None:
    while True:
        await asyncio.sleep(0.2)


async def start_poller(app: web.Application) -> None:
    asyncio.create_task(poll())  # noqa: RUF006  # the pattern under test


async def refresher(app: web.Application) -> AsyncIterator[None]:
    asyncio.create_task(poll())  # noqa: RUF006
    yield


async def slow(request: web.Request) -> web.Response:
    seconds = float(request.query.get("s", "1.0"))
    await asyncio.sleep(seconds)
    return web.json_response({"slept": seconds})


async def events(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    n = 0
    try:
        while True:
            await response.write(f"data: {n}\n\n".encode())
            n += 1
            await asyncio.sleep(0.1)
    finally:
        print("APP events finally", flush=True)


async def events_big(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    while True:
        await response.write(b"data: " + b"x" * 65536 + b"\n\n")


async def plain_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await response.prepare(request)
    while True:
        await response.write(b"line\n")
        await asyncio.sleep(0.1)


async def forever() -> None:
    while True:
        await asyncio.sleep(0.2)


async def spawn(request: web.Request) -> web.Response:
    asyncio.create_task(forever())  # noqa: RUF006  # the control: left running by a handler
    return web.json_response({"spawned": "plain"})


app = web.Application()
app.on_startup.append(start_poller)
app.cleanup_ctx.append(refresher)
app.router.add_get("/slow", slow)
app.router.add_get("/events", events)
app.router.add_get("/events-big", events_big)
app.router.add_get("/plain-stream", plain_stream)
app.router.add_get("/spawn", spawn)
