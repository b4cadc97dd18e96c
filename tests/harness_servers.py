"""Small real servers for the harness's unit tier (the HTTP contract on a loopback port), and
the test images of its Docker tier."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from graceful.harness.container import ImageInfo
    from graceful.harness.engine import Engine

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


@contextlib.asynccontextmanager
async def stream_server(ending: str) -> AsyncIterator[tuple[int, asyncio.Event]]:
    """A chunked server-sent-events stream that runs until the yielded event is set, then
    ends as ``ending`` says: ``clean`` (a last event, then the last chunk), ``cut`` (the
    connection closed mid-body) or ``mid-event`` (the last chunk after half an event)."""
    stop = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )

        def chunk(data: bytes) -> None:
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))

        chunk(b"data: hello\n\n")
        await writer.drain()
        await stop.wait()
        if ending == "clean":
            chunk(b"data: bye\n\n")
            writer.write(b"0\r\n\r\n")
        elif ending == "mid-event":
            chunk(b"data: by")
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    server, port = await serve(handler)
    async with server:
        yield port, stop


# --- the test images (tests/images/), for the Docker tier ---------------------------------

IMAGES_DIR = Path(__file__).parent / "images"
WHEELHOUSE = Path(__file__).parent.parent / "build" / "wheelhouse"
BASE_IMAGE = os.environ.get("GRACEFUL_TEST_BASE_IMAGE", "graceful-base:bookworm")
_built: dict[str, ImageInfo] = {}


def harness_run(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m graceful.harness run ARGS``, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "graceful.harness", "run", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def images_or_skip(engine: Engine) -> dict[str, ImageInfo]:
    """:func:`build_test_images`, or skip the test when they cannot be built (a failure when
    ``CI=true``)."""
    import pytest

    from graceful.harness.pytest_plugin import in_ci

    try:
        return build_test_images(engine)
    except LookupError as exc:
        if in_ci():
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def build_test_images(engine: Engine) -> dict[str, ImageInfo]:
    """Every image under tests/images/, built once per session (from Docker's cache after the
    first time), by name (``good``, ``abandon``, ``plain-uvicorn``, ...).

    Images whose Dockerfile copies ``wheelhouse/`` (uvicorn, graceful itself) are built from a
    context holding tests/images/ and the project's wheelhouse (``docker/wheelhouse.sh``,
    which ``make images`` runs); nothing is pulled.

    Raises:
        LookupError: the base image or the wheelhouse is missing (the message says how to
            get it).
    """
    import docker.errors

    if _built:
        return _built
    try:
        engine.client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        raise LookupError(
            f"base image {BASE_IMAGE} is missing: run `make images` (docker/base-image.sh)"
        ) from None
    dockerfiles = sorted(IMAGES_DIR.glob("*.Dockerfile"))
    with tempfile.TemporaryDirectory(prefix="graceful-test-images-") as tmp:
        wheel_context = Path(tmp) / "context"
        for dockerfile in dockerfiles:
            name = dockerfile.name.removesuffix(".Dockerfile")
            context = IMAGES_DIR
            if "wheelhouse/" in dockerfile.read_text():
                if not any(WHEELHOUSE.glob("graceful_stop-*.whl")):
                    raise LookupError(f"no wheelhouse in {WHEELHOUSE}: run `make images`")
                if not wheel_context.exists():
                    shutil.copytree(IMAGES_DIR, wheel_context)
                    shutil.copytree(WHEELHOUSE, wheel_context / "wheelhouse")
                context = wheel_context
            _built[name] = engine.build(
                context,
                tag=f"graceful-test-{name}:latest",
                dockerfile=dockerfile.name,
                buildargs={"BASE_IMAGE": BASE_IMAGE},
            )
    return dict(_built)
