"""The example HTTP service as a plain ASGI app on uvicorn, stopped gracefully by graceful.

Run it: ``python examples/asgi_service.py``. Environment: ``PORT`` (8080), ``HOST``
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
import json
import os
from typing import Any
from urllib.parse import parse_qs

import graceful
from graceful.integrations import asgi
from graceful.state import DurableStore

Receive = asgi.Receive
Send = asgi.Send


async def respond(send: Send, status: int, body: Any) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        chunk: bytes = message.get("body", b"")
        body += chunk
        if not message.get("more_body", False):
            return body


def make_app(store: DurableStore) -> asgi.ASGIApp:
    async def app(scope: asgi.Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await echo(scope, receive, send)
            return
        if scope["type"] != "http":
            return  # lifespan: nothing to set up, the store follows the runtime
        route = (scope["method"], scope["path"])
        if route == ("GET", "/work"):
            query = parse_qs(scope["query_string"].decode())
            await asyncio.sleep(int(query.get("ms", ["0"])[0]) / 1000)
            await respond(send, 200, {"slept_ms": int(query.get("ms", ["0"])[0])})
        elif route == ("POST", "/items"):
            try:
                item = json.loads(await read_body(receive))
                key = item["id"]
            except (ValueError, TypeError, KeyError):
                await respond(send, 400, {"error": 'expected a JSON body {"id": ...}'})
                return
            await store.put(str(key), item)
            await respond(send, 200, {"id": key})
        elif route == ("GET", "/items"):
            ids = await store.keys()
            await respond(send, 200, {"ids": ids, "count": len(ids)})
        elif route == ("GET", "/stream"):
            await stream(scope, send)
        else:
            await respond(send, 404, {"error": "not found"})

    return app


async def stream(scope: asgi.Scope, send: Send) -> None:
    stopping = asgi.stopping(scope)
    headers = [(b"content-type", b"text/plain")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    n = 0
    while not stopping.is_set():
        await send({"type": "http.response.body", "body": b"tick %d\n" % n, "more_body": True})
        n += 1
        try:
            await asyncio.wait_for(stopping.wait(), timeout=0.1)
        except TimeoutError:
            pass
    await send({"type": "http.response.body", "body": b"bye\n"})


async def echo(scope: asgi.Scope, receive: Receive, send: Send) -> None:
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while (message := await receive())["type"] == "websocket.receive":
        await send({"type": "websocket.send", "text": message.get("text") or ""})


async def main(runtime: graceful.Runtime) -> None:
    store = DurableStore(os.environ.get("STATE_PATH", "state.sqlite"), registry=runtime.registry)
    await store.open()
    runtime.on_shutdown(store.close, phase=graceful.Phase.CLOSE, name="state.close")
    await asgi.serve(
        runtime,
        make_app(store),
        host=os.environ.get("HOST", "0.0.0.0"),
        port=int(os.environ.get("PORT", "8080")),
    )


if __name__ == "__main__":
    raise SystemExit(graceful.run(main, config=graceful.Config.from_env()))
