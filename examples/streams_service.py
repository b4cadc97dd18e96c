"""A line-protocol service on asyncio streams, stopped gracefully by graceful.

Run it: ``python examples/streams_service.py``, then ``nc 127.0.0.1 7000``. Environment:
``PORT`` (7000), ``HOST`` (0.0.0.0), ``ADMIN_PORT`` (9090), ``GRACEFUL_STOP_TIMEOUT`` (10),
``STATE_PATH`` (SQLite file, ``state.sqlite``).

One command per line, one answer line each:

- ``WORK <ms>``: sleeps ms milliseconds, answers ``OK <ms>``.
- ``PUT <id>``: stores the id durably (once), answers ``OK <id>`` when it is on disk.
- ``COUNT``: answers ``OK <number of ids stored>``.

On a stop, idle connections are closed at once and busy ones after their current command.
"""

from __future__ import annotations

import asyncio
import os

import graceful
from graceful.integrations import streams
from graceful.state import DurableStore


def make_handler(store: DurableStore) -> streams.Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            async with streams.unit():
                writer.write(await answer(store, line.decode().split()))
                await writer.drain()

    return handle


async def answer(store: DurableStore, words: list[str]) -> bytes:
    match words:
        case ["WORK", ms] if ms.isdigit():
            await asyncio.sleep(int(ms) / 1000)
            return f"OK {ms}\n".encode()
        case ["PUT", key]:
            await store.put(key)
            return f"OK {key}\n".encode()
        case ["COUNT"]:
            return f"OK {await store.count()}\n".encode()
        case _:
            return b"ERR expected WORK <ms>, PUT <id> or COUNT\n"


async def main(runtime: graceful.Runtime) -> None:
    store = DurableStore(os.environ.get("STATE_PATH", "state.sqlite"), registry=runtime.registry)
    await store.open()
    runtime.on_shutdown(store.close, phase=graceful.Phase.CLOSE, name="state.close")
    await streams.start_server(
        runtime,
        make_handler(store),
        os.environ.get("HOST", "0.0.0.0"),
        int(os.environ.get("PORT", "7000")),
        name="lines",
    )


if __name__ == "__main__":
    raise SystemExit(graceful.run(main, config=graceful.Config.from_env()))
