"""A durable-write service for the state tests: a line protocol on 127.0.0.1 over graceful's
stream server, writing through DurableStore (acked once committed) and a Batcher.

Protocol, one line each way:

    PUT <id>   ->  "OK <id> new" or "OK <id> dup" once the write is committed and fsynced,
                   "ERR <id> <message>" if its transaction failed
    BUF <id>   ->  "BUF <id>" once buffered in the batcher (durable only after a flush)
    KEYS       ->  "KEYS <json list of every stored id>"

Environment:

    STATE_PATH       the SQLite file (required)
    PORT             port on 127.0.0.1; 0 picks one, logged in the "writer.listening" event
    BATCH_MAX_ITEMS  batcher size trigger (default 1000)
    BATCH_MAX_AGE    batcher age trigger in seconds (default 60)
"""

from __future__ import annotations

import asyncio
import json
import os

import graceful
from graceful.integrations import streams
from graceful.state import Batcher, DurableStore


async def main(runtime: graceful.Runtime) -> None:
    # A StateError here crashes main: exit code 1, error logged.
    store = await runtime.enter(DurableStore(os.environ["STATE_PATH"], registry=runtime.registry))

    async def write(items: list[str]) -> None:
        await store.put_many([(key, {"id": key, "via": "batch"}) for key in items])

    batcher: Batcher[str] = Batcher(
        write,
        max_items=int(os.environ.get("BATCH_MAX_ITEMS", "1000")),
        max_age=float(os.environ.get("BATCH_MAX_AGE", "60")),
        name="writer",
    )
    batcher.attach(runtime)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            async with streams.unit():
                command, _, arg = line.decode().strip().partition(" ")
                if command == "PUT":
                    try:
                        new = await store.put(arg, {"id": arg, "via": "put"})
                    except graceful.StateError as exc:
                        reply = f"ERR {arg} {exc}"
                    else:
                        reply = f"OK {arg} {'new' if new else 'dup'}"
                elif command == "BUF":
                    await batcher.add(arg)
                    reply = f"BUF {arg}"
                elif command == "KEYS":
                    reply = "KEYS " + json.dumps(await store.keys())
                else:
                    reply = f"ERR ? unknown command {command!r}"
                writer.write(reply.encode() + b"\n")
                await writer.drain()

    server = await streams.start_server(
        runtime, handle, "127.0.0.1", int(os.environ.get("PORT", "0")), name="writer"
    )
    runtime.log.info("writer.listening", port=server.port, path=store.path)


if __name__ == "__main__":
    raise SystemExit(graceful.run(main, config=graceful.Config.from_env()))
