"""A FastAPI-style app on plain uvicorn, with nothing of graceful: what a new user brings.

- ``GET /slow?s=N``: sleeps N whole seconds (default 2), answers 200; ``s`` not an integer: 422
  (as FastAPI's ``s: int = 2`` would). It reads ``s``, never ``ms``.
- ``GET /health``: 200.
- ``GET /events``: server-sent events, one every 200 ms, forever: the stream never ends, so
  uvicorn's shutdown waits for it until docker stop's SIGKILL.

Only here to test the harness on an app that does not speak its contract.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import parse_qs

Scope = dict[str, Any]


async def respond(send: Any, status: int, body: object) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    path = scope["path"]
    if path == "/slow":
        raw = parse_qs(scope["query_string"].decode()).get("s", ["2"])[0]
        if not raw.isdigit():
            await respond(send, 422, {"detail": "s must be an integer"})
            return
        await asyncio.sleep(int(raw))
        await respond(send, 200, {"slept": int(raw)})
    elif path == "/health":
        await respond(send, 200, {"status": "ok"})
    elif path == "/events":
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        n = 0
        while True:  # never ends: the bug stop-during-stream exists for
            event = b"data: tick %d\n\n" % n
            await send({"type": "http.response.body", "body": event, "more_body": True})
            n += 1
            await asyncio.sleep(0.2)
    else:
        await respond(send, 404, {"detail": "Not Found"})
