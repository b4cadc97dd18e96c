"""Test apps for ``graceful serve`` whose startup never ends: a database that never answers.

Each first opens a resource (``pool opened``), then waits for the database
(``waiting for the database``) forever; what had opened is closed when that wait is cut
(``pool closed``). A shutdown that ran although startup never completed would print
``lifespan shutdown`` (ASGI) or ``on_cleanup ran`` (aiohttp).

- ``app``: FastAPI with a lifespan (the startup is the code before its ``yield``).
- ``plain``: a bare ASGI app speaking the lifespan protocol itself (no framework).
- ``aio_app``: aiohttp, a cleanup context (the pool) then an ``on_startup`` that waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from fastapi import FastAPI


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def never_answers() -> None:
    say("waiting for the database")
    await asyncio.Event().wait()


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    say("pool opened")
    try:
        await never_answers()
        yield
        say("lifespan shutdown")
    finally:
        say("pool closed")


app = FastAPI(lifespan=lifespan)


async def plain(scope: Any, receive: Any, send: Any) -> None:
    assert scope["type"] == "lifespan"
    await receive()
    say("pool opened")
    try:
        await never_answers()
    finally:
        say("pool closed")


async def pool(app: web.Application) -> AsyncIterator[None]:
    say("pool opened")
    yield
    say("pool closed")


async def wait_for_database(app: web.Application) -> None:
    await never_answers()


async def on_cleanup(app: web.Application) -> None:
    say("on_cleanup ran")


aio_app = web.Application()
aio_app.cleanup_ctx.append(pool)
aio_app.on_startup.append(wait_for_database)
aio_app.on_cleanup.append(on_cleanup)
