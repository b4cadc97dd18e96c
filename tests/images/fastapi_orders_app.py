"""A FastAPI app with its own write endpoint, and no ``/items``: what the harness's write and
read templates are for.

- ``GET /health``: 200 ``{"status": "ok"}``.
- ``GET /slow?s=N``: sleeps N seconds (a float; default 1).
- ``POST /orders`` ``{"id": "...", ...}``: 201 ``{"id": ..., "status": "accepted"}`` once the
  order is on disk (graceful's ``DurableStore``, fsynced before it answers).
- ``GET /orders/{id}``: 200 with the order when it is stored, 404 when it is not.

With ``ORDERS_STORE=memory`` (the control of tests/test_harness_config_docker.py) an order is
kept in a dict and answered 201 at once: it reads back while the process lives and is gone
after a kill, which is what acknowledging before storing durably looks like from outside.

It is copied into the image as ``app.py`` (docker/fastapi-workers.Dockerfile), and served by
``graceful serve app:app``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from graceful.state import DurableStore

MEMORY = os.environ.get("ORDERS_STORE") == "memory"
orders: dict[str, Any] = {}  # ORDERS_STORE=memory: acknowledged, never stored


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    if MEMORY:
        yield
        return
    async with DurableStore(os.environ.get("STATE_PATH", "state.sqlite")) as store:
        app.state.store = store
        yield


app = FastAPI(lifespan=lifespan)


class Order(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1, max_length=256)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/slow")
async def slow(s: float = Query(1.0, ge=0, le=600)) -> dict[str, float]:
    await asyncio.sleep(s)
    return {"slept": s}


@app.post("/orders", status_code=201)
async def create_order(order: Order) -> dict[str, str]:
    if MEMORY:
        orders[order.id] = order.model_dump()
    else:
        await app.state.store.put(order.id, order.model_dump())  # returns once on disk
    return {"id": order.id, "status": "accepted"}


@app.get("/orders/{order_id}")
async def read_order(order_id: str) -> Any:
    found = orders.get(order_id) if MEMORY else await app.state.store.get(order_id)
    if found is None:
        raise HTTPException(404, "no such order")
    return found
