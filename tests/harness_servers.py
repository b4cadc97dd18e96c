"""Small real servers for the harness's unit tier: the HTTP contract on a loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(handler: Handler) -> tuple[asyncio.Server, int]:
    """Start ``handler`` on a free loopback port; the server and its port."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@contextlib.asynccontextmanager
async def contract_server() -> AsyncIterator[int]:
    """A minimal server for the contract: /work answers, /items acks (or lies about) ids."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        line = head.split(b"\r\n", 1)[0].decode()
        length = 0
        for h in head.split(b"\r\n"):
            if h.lower().startswith(b"content-length:"):
                length = int(h.split(b":", 1)[1])
        body = await reader.readexactly(length)
        if line.startswith("POST"):
            item = json.loads(body)["id"]
            payload = json.dumps({"id": item if item != "liar" else "other"}).encode()
        else:
            payload = b"{}"
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (len(payload), payload)
        )
        await writer.drain()
        writer.close()

    server, port = await serve(handler)
    async with server:
        yield port
