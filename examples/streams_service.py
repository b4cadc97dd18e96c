"""A line-protocol service on asyncio streams, stopped gracefully by graceful.

Run it: ``python examples/streams_service.py``, then ``nc 127.0.0.1 7000``. Environment:
``PORT`` (7000), ``HOST`` (0.0.0.0), ``ADMIN_PORT`` (9090), ``GRACEFUL_STOP_TIMEOUT`` (10),
``STATE_PATH`` (SQLite file, ``state.sqlite``).

One command per line, one answer line each:

- ``WORK <ms>``: sleeps ms milliseconds, answers ``OK <ms>``.
- ``PUT <id>``: stores the id durably (once), answers ``OK <id>`` when it is on disk.
- ``COUNT``: answers ``OK <number of ids stored>``.

Anything else gets an ``ERR <reason>`` line and the connection stays usable: a line that is not
UTF-8, a line over 64 KiB (skipped to its end without holding it in memory), an id that breaks
the rules in ``contract.py`` (control characters, over 256 characters). On a stop, idle
connections are closed at once and busy ones after their current command.
"""

from __future__ import annotations

import asyncio
import os

import contract

import graceful
from graceful.integrations import streams
from graceful.runner import end_process
from graceful.state import DurableStore

#: The longest line taken (the ``StreamReader`` buffer limit).
MAX_LINE_BYTES = 64 * 1024


def make_handler(store: DurableStore) -> streams.Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (line := await read_line(reader)) != b"":
            async with streams.unit():
                writer.write(await answer(store, line))
                await writer.drain()

    return handle


async def read_line(reader: asyncio.StreamReader) -> bytes | None:
    """The next line; ``None`` for a line over the limit; ``b""`` at the end of the input.

    ``reader.readline()`` raises ``ValueError`` on a long line and drops what it buffered
    without saying whether the line's end was in it, so the rest of the line would be read
    as a command. ``readuntil`` leaves the buffer alone on ``LimitOverrunError``: discard
    what it reports as consumed until the newline comes, holding at most the limit.
    """
    skipping = False
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            line = exc.partial  # the input ended: a last line without newline, or nothing
        except asyncio.LimitOverrunError as exc:
            skipping = True
            await reader.readexactly(exc.consumed)
            continue
        return None if skipping else line


async def answer(store: DurableStore, line: bytes | None) -> bytes:
    if line is None:
        return b"ERR line longer than %d bytes, skipped\n" % MAX_LINE_BYTES
    try:
        words = line.decode("utf-8").split()
    except UnicodeDecodeError:
        return b"ERR the line is not UTF-8\n"
    match words:
        case ["WORK", raw]:
            try:
                ms = contract.whole_number("ms", raw, 0, contract.MAX_WORK_MS)
            except contract.Refused as refused:
                return f"ERR {refused.reason}\n".encode()
            await asyncio.sleep(ms / 1000)
            return f"OK {raw}\n".encode()
        case ["PUT", key]:
            try:
                await store.put(contract.check_id(key))
            except contract.Refused as refused:
                return f"ERR {refused.reason}\n".encode()
            except graceful.StateError as exc:
                return f"ERR not stored, try again: {exc}\n".encode()
            return f"OK {key}\n".encode()
        case ["COUNT"]:
            return f"OK {await store.count()}\n".encode()
        case _:
            return b"ERR expected WORK <ms>, PUT <id> or COUNT\n"


async def main(runtime: graceful.Runtime) -> None:
    path = os.environ.get("STATE_PATH", "state.sqlite")
    store = await runtime.enter(DurableStore(path, registry=runtime.registry), name="state")
    await streams.start_server(
        runtime,
        make_handler(store),
        os.environ.get("HOST", "0.0.0.0"),
        int(os.environ.get("PORT", "7000")),
        name="lines",
        limit=MAX_LINE_BYTES,
    )


if __name__ == "__main__":
    end_process(graceful.run(main, config=graceful.Config.from_env()))
