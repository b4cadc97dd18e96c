"""The example HTTP service as a plain ASGI app on uvicorn, stopped gracefully by graceful.

Run it: ``python examples/asgi_service.py``. It serves the HTTP contract that ``contract.py``
describes (environment, ``GET /work``, ``POST /items``, ``GET /items``, every limit), and:

- ``GET /stream``: a chunk every 100 ms until the server stops, then a last ``bye`` chunk.
- websocket ``/ws``: echoes text; closed with 1001 when the server stops.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any
from urllib.parse import parse_qsl

import contract

import graceful
from graceful.integrations import asgi
from graceful.runner import end_process
from graceful.state import DurableStore

Receive = asgi.Receive
Send = asgi.Send


async def respond(send: Send, status: int, body: Any) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def query(scope: asgi.Scope) -> dict[str, str]:
    """The query's parameters, the first value of each (as aiohttp's ``request.query.get``)."""
    params: dict[str, str] = {}
    for name, value in parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True):
        params.setdefault(name, value)
    return params


async def read_body(scope: asgi.Scope, receive: Receive) -> bytes:
    """The request body, refused (413) as soon as it is over the limit, before it is all read.

    Raises:
        contract.Refused: the body is too large, or its declared length is not a number.
    """
    for name, value in scope["headers"]:
        if name.lower() == b"content-length":
            contract.check_declared_length(value.decode("latin-1"))
    body = contract.BodyReader()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise contract.Refused(400, "the client went away")
        body.add(message.get("body", b""))
        if not message.get("more_body", False):
            return body.data()


def make_app(store: DurableStore | None = None) -> asgi.ASGIApp:
    """The service as an ASGI app.

    Args:
        store: the state store, opened by `main`. Without it, the app is its own factory
            (``graceful serve asgi_service:make_app --factory``, what ``WORKERS=N`` runs in
            each worker): the lifespan startup opens the store in the runtime serving the app,
            so it closes at the same point of the stop as `main`'s.
    """

    async def app(scope: asgi.Scope, receive: Receive, send: Send) -> None:
        nonlocal store
        if scope["type"] == "lifespan":
            if store is not None:
                return  # nothing to set up: main's store follows the runtime
            await receive()  # lifespan.startup
            try:
                store = await contract.open_store(graceful.current_runtime())
            except graceful.StateError as exc:
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown: the store closes later, with the runtime
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] == "websocket":
            await echo(scope, receive, send)
            return
        if store is None:  # served without its lifespan (--lifespan off)
            await respond(send, 503, {"error": "the state store is not open"})
            return
        route = (scope["method"], scope["path"])
        if route == ("GET", "/stream"):
            await stream(scope, send)
            return
        try:
            status, body = await answer(store, route, scope, receive)
        except contract.Refused as refused:
            status, body = refused.status, refused.body()
        await respond(send, status, body)

    return app


async def answer(
    store: DurableStore, route: tuple[str, str], scope: asgi.Scope, receive: Receive
) -> tuple[int, Any]:
    if route == ("GET", "/work"):
        ms = contract.work_ms(query(scope))
        await asyncio.sleep(ms / 1000)
        return 200, {"slept_ms": ms}
    if route == ("POST", "/items"):
        return await contract.store_item(store, await read_body(scope, receive))
    if route == ("GET", "/items"):
        return await contract.list_page(store, query(scope))
    return 404, {"error": "not found"}


async def stream(scope: asgi.Scope, send: Send) -> None:
    stopping = asgi.draining(scope)
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
    store = await contract.open_store(runtime)
    await asgi.serve(
        runtime,
        make_app(store),
        host=os.environ.get("HOST", "0.0.0.0"),
        port=int(os.environ.get("PORT", "8080")),
    )


if __name__ == "__main__":
    end_process(contract.run(main, factory="asgi_service:make_app"))
