"""The example HTTP service as an aiohttp application, stopped gracefully by graceful.

Run it: ``python examples/aiohttp_service.py``. Environment: ``PORT`` (8080), ``HOST``
(0.0.0.0), ``ADMIN_PORT`` (9090), ``GRACEFUL_STOP_TIMEOUT`` (10), ``STATE_PATH`` (SQLite file,
``state.sqlite``).

- ``GET /work?ms=N``: sleeps N ms, answers 200.
- ``POST /items`` with ``{"id": ...}``: answers 200 ``{"id": ...}`` once the item is on disk;
  the same id twice is stored once; no id: 400.
- ``GET /items``: ``{"ids": [...], "count": N}``.
- ``GET /stream``: a chunk every 100 ms until the server stops, then a last ``bye`` chunk.
- websocket ``/ws``: echoes text; closed with 1001 when the server stops.
"""

from __future__ import annotations

import asyncio
import os

from aiohttp import WSMsgType, web

import graceful
from graceful.integrations import aiohttp as graceful_aiohttp
from graceful.state import DurableStore

STORE = web.AppKey("store", DurableStore)


async def work(request: web.Request) -> web.Response:
    ms = int(request.query.get("ms", "0"))
    await asyncio.sleep(ms / 1000)
    return web.json_response({"slept_ms": ms})


async def put_item(request: web.Request) -> web.Response:
    try:
        item = await request.json()
        key = item["id"]
    except (ValueError, TypeError, KeyError):
        return web.json_response({"error": 'expected a JSON body {"id": ...}'}, status=400)
    await request.app[STORE].put(str(key), item)
    return web.json_response({"id": key})


async def list_items(request: web.Request) -> web.Response:
    ids = await request.app[STORE].keys()
    return web.json_response({"ids": ids, "count": len(ids)})


async def stream(request: web.Request) -> web.StreamResponse:
    stopping = graceful_aiohttp.stopping(request)
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await response.prepare(request)
    n = 0
    while not stopping.is_set():
        await response.write(b"tick %d\n" % n)
        n += 1
        try:
            await asyncio.wait_for(stopping.wait(), timeout=0.1)
        except TimeoutError:
            pass
    await response.write(b"bye\n")
    await response.write_eof()
    return response


async def echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        if message.type is WSMsgType.TEXT:
            await ws.send_str(message.data)
    return ws


def make_app(store: DurableStore) -> web.Application:
    app = web.Application()
    app[STORE] = store
    app.router.add_get("/work", work)
    app.router.add_post("/items", put_item)
    app.router.add_get("/items", list_items)
    app.router.add_get("/stream", stream)
    app.router.add_get("/ws", echo)
    return app


async def main(runtime: graceful.Runtime) -> None:
    store = DurableStore(os.environ.get("STATE_PATH", "state.sqlite"), registry=runtime.registry)
    await store.open()
    runtime.on_shutdown(store.close, phase=graceful.Phase.CLOSE, name="state.close")
    await graceful_aiohttp.serve(
        runtime,
        make_app(store),
        host=os.environ.get("HOST", "0.0.0.0"),
        port=int(os.environ.get("PORT", "8080")),
    )


if __name__ == "__main__":
    raise SystemExit(graceful.run(main, config=graceful.Config.from_env()))
