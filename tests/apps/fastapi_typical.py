"""Test app: a FastAPI service of the usual shape, written as if graceful did not exist.

Issue 17's "unchanged" app: nothing here imports graceful except the routes marked as such.

- lifespan: opens a SQLite connection and starts a cache poller with a plain
  ``asyncio.create_task`` that nothing ever cancels (the most common pattern);
- ``GET /slow?s=1.0``: sleeps, answers ``{"slept": s}``;
- ``GET /events``: a ``while True`` server-sent event stream; its ``finally`` prints
  ``APP events finally``;
- ``GET /plain-stream``: an endless ``text/plain`` stream (not an event stream);
  ``?end=1`` opts it in with ``end_on_drain`` (graceful);
- ``GET /spawn``: starts a never-ending ``asyncio.create_task`` from the handler and answers
  (a job a client was told was accepted: cut work on a stop);
- ``GET /spawn-background``: the same through ``current_runtime().create_task(...,
  background=True)`` (graceful).
- ``GET /events-big``: an event stream of 64 KiB events with no pause (a client that stops
  reading fills its window at once);
- ``GET /events-stubborn``: an event stream whose generator swallows the cancellation and
  keeps yielding.

``APP_STUBBORN_POLLER=1``: the lifespan also starts a poller that swallows cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

cache: dict[str, int] = {}


async def poll_cache(db: sqlite3.Connection) -> None:
    while True:
        cache["rows"] = db.execute("select count(*) from sqlite_master").fetchone()[0]
        await asyncio.sleep(0.2)


async def stubborn_poller() -> None:
    while True:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    db = sqlite3.connect(Path(tempfile.mkdtemp()) / "app.sqlite")
    asyncio.create_task(poll_cache(db))  # noqa: RUF006  # the pattern under test
    if os.environ.get("APP_STUBBORN_POLLER") == "1":
        asyncio.create_task(stubborn_poller())  # noqa: RUF006
    yield
    db.close()


app = FastAPI(lifespan=lifespan)


@app.get("/slow")
async def slow(s: float = 1.0) -> dict[str, float]:
    await asyncio.sleep(s)
    return {"slept": s}


@app.get("/events")
async def events() -> StreamingResponse:
    async def ticks() -> AsyncIterator[str]:
        n = 0
        try:
            while True:
                yield f"data: {n}\n\n"
                n += 1
                await asyncio.sleep(0.1)
        finally:
            print("APP events finally", flush=True)

    return StreamingResponse(ticks(), media_type="text/event-stream")


@app.get("/events-big")
async def events_big() -> StreamingResponse:
    async def blobs() -> AsyncIterator[str]:
        while True:
            yield "data: " + "x" * 65536 + "\n\n"
            await asyncio.sleep(0)

    return StreamingResponse(blobs(), media_type="text/event-stream")


@app.get("/events-stubborn")
async def events_stubborn() -> StreamingResponse:
    async def ticks() -> AsyncIterator[str]:
        while True:
            try:
                yield "data: tick\n\n"
                await asyncio.sleep(0.1)
            except asyncio.CancelledError:
                print("APP stubborn swallowed", flush=True)

    return StreamingResponse(ticks(), media_type="text/event-stream")


@app.get("/plain-stream")
async def plain_stream(request: Request, end: int = 0) -> StreamingResponse:
    if end:
        from graceful.integrations.asgi import end_on_drain

        end_on_drain(request.scope)

    async def lines() -> AsyncIterator[str]:
        while True:
            yield "line\n"
            await asyncio.sleep(0.1)

    return StreamingResponse(lines(), media_type="text/plain")


async def forever() -> None:
    while True:
        await asyncio.sleep(0.2)


@app.get("/spawn")
async def spawn() -> dict[str, str]:
    asyncio.create_task(forever())  # noqa: RUF006  # the control: left running by a handler
    return {"spawned": "plain"}


@app.get("/spawn-background")
async def spawn_background() -> dict[str, str]:
    import graceful

    graceful.current_runtime().create_task(forever(), name="refresher", background=True)
    return {"spawned": "background"}
