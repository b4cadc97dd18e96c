"""A FastAPI app as its users write it, served by ``graceful serve app:app --workers 4``.

Nothing in it knows about processes, signals or the runtime: it is an ``app`` object, a
lifespan that opens the state store, and endpoints. The only graceful names are the store
(``DurableStore``, one SQLite file shared by every worker) and ``draining(scope)``, which the
event stream awaits (an event that is never set where graceful does not serve the app, as
under plain ``uvicorn --workers 4``, the control of tests/test_workers_images.py).

- ``GET /health``: 200 ``{"status": "ok"}``.
- ``GET /slow?s=N``: sleeps N seconds (a float; default 1), answers ``{"slept": N}``.
- ``POST /items`` ``{"id": "...", ...}``: answers ``{"id": ...}`` once the item is on disk.
- ``GET /items?limit=N&after=ID``: ``{"ids": [...], "count": n}``, plus ``"next"`` (the
  ``after`` of the next page) while more remain.
- ``GET /events``: server-sent events, a tick every 0.2 s, until the server stops: then an
  ``event: bye`` and the end of the response.

For the test that a misbehaving worker is named: with ``STUCK_WORKER=I``, the worker that
graceful numbers I (``GRACEFUL_WORKER``) blocks its event loop for a minute when its lifespan
shuts down, so it cannot finish its stop in time.

It is copied into the image as ``app.py`` (docker/fastapi-workers.Dockerfile).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from graceful.integrations.asgi import draining
from graceful.state import DurableStore


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Each worker opens the one file; acknowledged writes from any of them are durable.
    async with DurableStore(os.environ.get("STATE_PATH", "state.sqlite")) as store:
        app.state.store = store
        yield
    stuck = os.environ.get("STUCK_WORKER")
    if stuck is not None and stuck == os.environ.get("GRACEFUL_WORKER"):
        time.sleep(60)  # noqa: ASYNC251 (on purpose: the loop blocks, the worker overruns)


app = FastAPI(lifespan=lifespan)


class Item(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1, max_length=256)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/slow")
async def slow(s: float = Query(1.0, ge=0, le=600)) -> dict[str, float]:
    await asyncio.sleep(s)
    return {"slept": s}


@app.post("/items")
async def create_item(item: Item, request: Request) -> dict[str, str]:
    await request.app.state.store.put(item.id, item.model_dump())  # returns once on disk
    return {"id": item.id}


@app.get("/items")
async def list_items(
    request: Request, limit: int = Query(1000, ge=1, le=10_000), after: str | None = None
) -> dict[str, object]:
    store = request.app.state.store
    try:
        ids = await store.keys(limit=limit + 1, after=after)  # one more: is there a next page?
    except KeyError:
        raise HTTPException(400, "after: no such id") from None
    page: dict[str, object] = {"ids": ids[:limit], "count": await store.count()}
    if len(ids) > limit:
        page["next"] = ids[limit - 1]
    return page


@app.get("/events")
async def events(request: Request) -> StreamingResponse:
    stop = draining(request.scope)  # set when graceful drains this worker

    async def ticks() -> AsyncIterator[str]:
        n = 0
        while not stop.is_set():
            yield f"data: tick {n}\n\n"
            n += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.2)
        yield "event: bye\ndata: server restarting, reconnect\n\n"

    return StreamingResponse(ticks(), media_type="text/event-stream")
