"""The example HTTP service as an aiohttp application, stopped gracefully by graceful.

Run it: ``python examples/aiohttp_service.py``. It serves the HTTP contract that ``contract.py``
describes (environment, ``GET /work``, ``POST /items``, ``GET /items``, every limit), and:

- ``GET /stream``: a chunk every 100 ms until the server stops, then a last ``bye`` chunk.
- websocket ``/ws``: echoes text; closed with 1001 when the server stops.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator

import contract
from aiohttp import WSMsgType, web
from aiohttp.http_exceptions import HttpProcessingError

import graceful
from graceful.integrations import aiohttp as graceful_aiohttp
from graceful.runner import end_process
from graceful.state import DurableStore

STORE = web.AppKey("store", DurableStore)


async def work(request: web.Request) -> web.Response:
    try:
        ms = contract.work_ms(request.query)
    except contract.Refused as refused:
        return web.json_response(refused.body(), status=refused.status)
    await asyncio.sleep(ms / 1000)
    return web.json_response({"slept_ms": ms})


async def read_body(request: web.Request) -> bytes:
    """The request body, refused (413) as soon as it is over the limit, before it is all read.

    aiohttp's own ``request.read()`` has a limit too (``client_max_size``), but answers it with
    a text body; reading here gives both example services the same answer.

    Raises:
        contract.Refused: the body is too large.
    """
    contract.check_declared_length(request.headers.get("Content-Length"))
    body = contract.BodyReader()
    while chunk := await request.content.readany():
        body.add(chunk)
    return body.data()


async def put_item(request: web.Request) -> web.Response:
    try:
        body = await read_body(request)
    except contract.Refused as refused:
        return web.json_response(refused.body(), status=refused.status)
    status, answer = await contract.store_item(request.app[STORE], body)
    return web.json_response(answer, status=status)


async def list_items(request: web.Request) -> web.Response:
    status, answer = await contract.list_page(request.app[STORE], request.query)
    return web.json_response(answer, status=status)


async def stream(request: web.Request) -> web.StreamResponse:
    stopping = graceful_aiohttp.draining(request)
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


def make_app(store: DurableStore | None = None) -> web.Application:
    """The service as an aiohttp application.

    Args:
        store: the state store, opened by `main`. Without it, the app is its own factory
            (``graceful serve aiohttp_service:make_app --factory``, what ``WORKERS=N`` runs in
            each worker): its startup opens the store in the runtime serving the app, so it
            closes at the same point of the stop as `main`'s.
    """
    app = web.Application()
    if store is not None:
        app[STORE] = store
    else:
        logging.getLogger("aiohttp.server").addFilter(MalformedRequestsInOneLine())
        app.cleanup_ctx.append(open_store)
    app.router.add_get("/work", work)
    app.router.add_post("/items", put_item)
    app.router.add_get("/items", list_items)
    app.router.add_get("/stream", stream)
    app.router.add_get("/ws", echo)
    return app


class MalformedRequestsInOneLine(logging.Filter):
    """aiohttp answers a malformed request (a request line over 8 KiB, a bad header) with 400
    and logs it at ERROR with a traceback. It is the client's fault, and common on any open
    port: log one warning line instead, as uvicorn does."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and exc.code < 500:
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg = "malformed request from %s refused with %d (%s)"
            record.args = (remote, exc.code, type(exc).__name__)
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


async def open_store(app: web.Application) -> AsyncIterator[None]:
    """The factory's app: open the store at startup; it closes later, with the runtime."""
    app[STORE] = await contract.open_store(graceful.current_runtime())
    yield


async def main(runtime: graceful.Runtime) -> None:
    logging.getLogger("aiohttp.server").addFilter(MalformedRequestsInOneLine())
    await graceful_aiohttp.serve(
        runtime,
        make_app(await contract.open_store(runtime)),
        host=os.environ.get("HOST", "0.0.0.0"),
        port=int(os.environ.get("PORT", "8080")),
    )


if __name__ == "__main__":
    end_process(contract.run(main, factory="aiohttp_service:make_app"))
