"""graceful on uvicorn with a server-sent-events stream; ``STREAM_MODE`` says how it stops.

- ``await`` (default): each stream awaits ``draining(scope)`` and then sends a last ``bye``
  event and ends: the drain finishes at once.
- ``ignore``: the stream never looks at the stop; graceful cancels it at the drain deadline,
  cutting it mid-body (exit 3, work cut).

``GET /work?ms=N`` sleeps N ms; ``GET /stream`` is the stream. Only here to test the harness.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from urllib.parse import parse_qs

import graceful
from graceful.integrations import asgi

MODE = os.environ.get("STREAM_MODE", "await")
# `draining` is the name since the integrations were reshaped; a wheelhouse built before that
# has only the older name of the same event.
draining = getattr(asgi, "draining", None) or asgi.stopping


async def app(scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/work":
        ms = int(parse_qs(scope["query_string"].decode()).get("ms", ["0"])[0])
        await asyncio.sleep(ms / 1000)
        body = json.dumps({"slept_ms": ms}).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    elif scope["path"] == "/stream":
        await stream(scope, send)
    else:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def stream(scope: asgi.Scope, send: asgi.Send) -> None:
    stop = draining(scope)
    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    n = 0
    while MODE == "ignore" or not stop.is_set():
        event = b"data: tick %d\n\n" % n
        await send({"type": "http.response.body", "body": event, "more_body": True})
        n += 1
        if MODE == "ignore":
            await asyncio.sleep(0.2)
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)
    await send({"type": "http.response.body", "body": b"data: bye\n\n"})


async def main(runtime: graceful.Runtime) -> None:
    await asgi.serve(runtime, app, host="0.0.0.0", port=int(os.environ.get("PORT", "8080")))


if __name__ == "__main__":
    raise SystemExit(graceful.run(main, config=graceful.Config.from_env()))
