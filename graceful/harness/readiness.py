"""Fast diagnoses while a container becomes ready: an admin server the image does not have.

The harness polls readiness on the admin port by default (graceful's ``/readyz`` on 9090).
An image without an admin server never answers there, and waiting out the startup timeout
(60 s) to say so costs a minute. :func:`start_ready` watches beside the readiness poll: when
the admin port stays closed for :data:`ADMIN_GRACE_S` while the main port already answers
HTTP, and the logs show no admin server starting, it fails at once, naming the option that
describes such an image (``--admin-port off``, ``admin_port = "off"``).
"""

from __future__ import annotations

import asyncio
import time

import httpx

from graceful.harness.container import ContainerError
from graceful.harness.context import Context, Service, not_ready_diagnosis
from graceful.harness.load import RequestOutcome, classify

__all__ = ["ADMIN_GRACE_S", "admin_missing", "start_ready"]

#: How long the admin port must stay closed while the main port answers before the harness
#: says the image has no admin server (graceful's starts before the app's listener).
ADMIN_GRACE_S = 3.0
_POLL_S = 0.25
# What a port with nobody listening behind it looks like through Docker's published port:
# refused, or accepted by the proxy and then closed or reset.
_CLOSED = frozenset({RequestOutcome.REFUSED, RequestOutcome.RESET, RequestOutcome.CLOSED})


async def start_ready(
    ctx: Context, volume: str | None = None, *, what: str = "a container"
) -> Service:
    """:meth:`Context.start`, waiting until ready, but failing within seconds when the
    admin port is closed while the main port answers (see :func:`admin_missing`).

    Raises:
        ContainerError: the container exited, was not ready in time, or has no admin server
            where one is expected (the message names ``--admin-port off``).

    .. versionadded:: 0.1
    """
    service = await ctx.start(volume, ready=False, what=what)
    ready = asyncio.create_task(ctx.wait_ready(service))
    watch = asyncio.create_task(admin_missing(ctx, service))
    try:
        done, _ = await asyncio.wait({ready, watch}, return_when=asyncio.FIRST_COMPLETED)
        if watch in done and watch.result():
            raise ContainerError(f"the container will not become ready: {watch.result()}")
        await ready  # ready, or its own error (exited, not ready in time)
    finally:
        for task in (ready, watch):
            task.cancel()
        await asyncio.gather(ready, watch, return_exceptions=True)
    service.pid1 = await asyncio.to_thread(service.container.pid1)
    return service


async def admin_missing(ctx: Context, service: Service, grace: float = ADMIN_GRACE_S) -> str:
    """Why readiness on the admin port will never answer, as soon as that is clear: the
    admin port closed for ``grace`` seconds while the main port answers HTTP, and the logs
    show no admin server that is merely slow. "" when there is nothing to say (readiness is
    not on the admin port, or the admin port answers).

    .. versionadded:: 0.1
    """
    w = ctx.workload
    if w.ready_on != "admin" or service.admin_port is None:
        return ""
    admin_url = f"http://127.0.0.1:{service.admin_port}{w.readiness_path}"
    main_url = f"http://127.0.0.1:{service.main_port}/"
    since: float | None = None
    async with httpx.AsyncClient(timeout=1.0, trust_env=False) as client:
        while True:
            admin = await _answer(client, admin_url)
            if isinstance(admin, int):
                return ""  # an admin server answers: readiness is a matter of time
            main = await _answer(client, main_url)
            if admin in _CLOSED and isinstance(main, int):
                since = since if since is not None else time.monotonic()
                if time.monotonic() - since >= grace:
                    logs = await asyncio.to_thread(service.container.logs)
                    return _diagnosis(ctx, logs, admin, main)
            else:
                since = None
            await asyncio.sleep(_POLL_S)


def _diagnosis(ctx: Context, logs: str, admin: RequestOutcome, main: int) -> str:
    w = ctx.workload
    loopback = not_ready_diagnosis(logs, w)
    if "admin.listening" in logs:
        # An admin server started: on loopback (say so), or somewhere the harness cannot
        # see; either way not the case this diagnosis is for.
        return loopback if "loopback" in loopback else ""
    return (
        f"nothing answers on the admin port {w.admin_port} (GET {w.readiness_path}: "
        f"{admin.value}) while the main port {w.port} answers (GET /: HTTP {main}), and the "
        "logs show no admin server (graceful logs admin.listening): the image has none. "
        'Judge it with --admin-port off (admin_port = "off" in [tool.graceful.harness]; '
        "--graceful-admin-port off for pytest), with readiness on the main port "
        "(--ready-path /health) or none (--ready-path '')"
    )


async def _answer(client: httpx.AsyncClient, url: str) -> int | RequestOutcome:
    """The HTTP status ``url`` answered, or how the request failed."""
    try:
        return (await client.get(url)).status_code
    except httpx.HTTPError as exc:
        return classify(exc)[0]
