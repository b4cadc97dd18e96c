"""Diagnoses while a container becomes ready: an admin server the image does not have, and
the log lines that say why a start failed.

The harness polls readiness on the admin port by default (graceful's ``/readyz`` on 9090).
An image without an admin server never answers there, and waiting out the startup timeout
(60 s) to say so costs a minute. :func:`start_ready` watches beside the readiness poll and
says "none" early only on evidence: the admin port closed while the main port answers HTTP,
the logs show the service serving and no admin server, and that for a grace that depends on
what the logs show (:func:`admin_grace`): :data:`ADMIN_GRACE_S` for graceful's runtime, whose
admin server starts before the app's listener, longer for any other server, whose admin
server (if any) may come later. Without that evidence it keeps waiting, and a start that
times out says the admin port was "not yet answering", which is not the same as "none".

A failed start shows the container's last log lines without the harness's own polling
(its ``GET /`` and readiness requests), which would otherwise fill them.
"""

from __future__ import annotations

import asyncio
import re
import time

import httpx

from graceful.harness.container import ContainerError
from graceful.harness.context import Context, Service, not_ready_diagnosis
from graceful.harness.load import RequestOutcome, classify

__all__ = [
    "ADMIN_GRACE_MAX_S",
    "ADMIN_GRACE_S",
    "admin_grace",
    "admin_missing",
    "app_tail",
    "start_ready",
]

#: How long the admin port must stay closed while the main port answers before the harness
#: says a graceful image has no admin server (graceful's starts before the app's listener).
ADMIN_GRACE_S = 3.0
#: The longest grace for any other server, whose admin server may start after its listener
#: (a third of the startup timeout, at least :data:`ADMIN_GRACE_S`, at most this).
ADMIN_GRACE_MAX_S = 10.0
_POLL_S = 0.25
_TAIL_LINES = 10
_LOG_MARK = "; its last log lines:\n"
# What a port with nobody listening behind it looks like through Docker's published port:
# refused, or accepted by the proxy and then closed or reset.
_CLOSED = frozenset({RequestOutcome.REFUSED, RequestOutcome.RESET, RequestOutcome.CLOSED})
# graceful's runtime says it serves (JSON or console logs); its admin server came first.
_GRACEFUL_SERVING = re.compile(r"\b(?:serve\.listening|service\.ready)\b")
# Other servers saying they serve: uvicorn, hypercorn and aiohttp, gunicorn.
_SERVING = re.compile(
    r"Uvicorn running on|Application startup complete|Running on https?://|Listening at:"
)


def admin_grace(logs: str, startup_timeout: float) -> float | None:
    """How long a closed admin port is waited for while the main port answers, before the
    harness says the image has none; None when the logs give no evidence for "none" (the
    service does not say it serves, or an admin server logs that it started).

    .. versionadded:: 0.1
    """
    if "admin.listening" in logs:
        return None
    if _GRACEFUL_SERVING.search(logs):
        return ADMIN_GRACE_S
    if _SERVING.search(logs):
        return min(max(startup_timeout / 3, ADMIN_GRACE_S), ADMIN_GRACE_MAX_S)
    return None


async def start_ready(
    ctx: Context, volume: str | None = None, *, what: str = "a container"
) -> Service:
    """:meth:`Context.start`, waiting until ready, but failing within seconds when the
    admin port is closed while the main port answers (see :func:`admin_missing`).

    Raises:
        ContainerError: the container exited, was not ready in time, or has no admin server
            where one is expected (the message names ``--admin-port off``); its last log
            lines leave the harness's own polling out.

    .. versionadded:: 0.1
    """
    service = await ctx.start(volume, ready=False, what=what)
    seen = _Seen()
    ready = asyncio.create_task(ctx.wait_ready(service))
    watch = asyncio.create_task(admin_missing(ctx, service, seen=seen))
    try:
        done, _ = await asyncio.wait({ready, watch}, return_when=asyncio.FIRST_COMPLETED)
        if watch in done and watch.result():
            logs = await asyncio.to_thread(service.container.logs)
            raise ContainerError(
                f"the container will not become ready: {watch.result()}{_LOG_MARK}"
                + app_tail(logs, ctx.workload.ready_target)
            )
        try:
            await ready  # ready, or its own error (exited, not ready in time)
        except ContainerError as exc:
            logs = await asyncio.to_thread(service.container.logs)
            head = str(exc).split(_LOG_MARK, 1)[0] + seen.not_yet(ctx)
            raise ContainerError(
                head + _LOG_MARK + app_tail(logs, ctx.workload.ready_target)
            ) from None
    finally:
        for task in (ready, watch):
            task.cancel()
        await asyncio.gather(ready, watch, return_exceptions=True)
    service.pid1 = await asyncio.to_thread(service.container.pid1)
    return service


class _Seen:
    """What the admin watch saw: since when the main port answered while the admin port
    was closed (None: not so now)."""

    def __init__(self) -> None:
        self.since: float | None = None

    def not_yet(self, ctx: Context) -> str:
        if self.since is None:
            return ""
        w = ctx.workload
        return (
            f"; the admin port {w.admin_port} was not yet answering, while the main port "
            f"{w.port} had answered for {time.monotonic() - self.since:.0f} s (an admin server "
            "slower than that needs a longer --startup-timeout; none at all: --admin-port off)"
        )


async def admin_missing(
    ctx: Context, service: Service, grace: float | None = None, *, seen: _Seen | None = None
) -> str:
    """Why readiness on the admin port will never answer, as soon as that is clear: the
    admin port closed while the main port answers HTTP, for the grace :func:`admin_grace`
    gives from the logs (or ``grace``), and the logs show no admin server that is merely
    slow. "" when there is nothing to say (readiness is not on the admin port, or the admin
    port answers); without evidence for "none" it keeps watching until cancelled.

    .. versionadded:: 0.1
    """
    w = ctx.workload
    if w.ready_on != "admin" or service.admin_port is None:
        return ""
    seen = seen if seen is not None else _Seen()
    admin_url = f"http://127.0.0.1:{service.admin_port}{w.readiness_path}"
    main_url = f"http://127.0.0.1:{service.main_port}/"
    look_at = 0.0  # the logs are read at most once a second
    async with httpx.AsyncClient(timeout=1.0, trust_env=False) as client:
        while True:
            admin = await _answer(client, admin_url)
            if isinstance(admin, int):
                return ""  # an admin server answers: readiness is a matter of time
            main = await _answer(client, main_url)
            now = time.monotonic()
            if not (admin in _CLOSED and isinstance(main, int)):
                seen.since = None
            elif seen.since is None:
                seen.since = now
            elif now - seen.since >= min(grace or ADMIN_GRACE_S, ADMIN_GRACE_S) and now >= look_at:
                look_at = now + 1.0
                logs = await asyncio.to_thread(service.container.logs)
                wait = admin_grace(logs, ctx.settings.startup_timeout) if grace is None else grace
                if "admin.listening" in logs or (wait is not None and now - seen.since >= wait):
                    return _diagnosis(ctx, logs, admin, main, now - seen.since)
            await asyncio.sleep(_POLL_S)


def _diagnosis(ctx: Context, logs: str, admin: RequestOutcome, main: int, closed_for: float) -> str:
    w = ctx.workload
    loopback = not_ready_diagnosis(logs, w)
    if "admin.listening" in logs:
        # An admin server started: on loopback (say so), or somewhere the harness cannot
        # see; either way not the case this diagnosis is for.
        return loopback if "loopback" in loopback else ""
    return (
        f"nothing answered on the admin port {w.admin_port} for {closed_for:.0f} s (GET "
        f"{w.readiness_path}: {admin.value}) while the main port {w.port} answered (GET /: "
        f"HTTP {main}), and the logs show the service serving and no admin server (graceful "
        "logs admin.listening): the image has none. Judge it with --admin-port off "
        '(admin_port = "off" in [tool.graceful.harness]; --graceful-admin-port off for '
        "pytest), with readiness on the main port (--ready-path /health) or none "
        "(--ready-path ''); an admin server that starts later than that is given up to a "
        "third of --startup-timeout"
    )


def app_tail(logs: str, ready_target: str, lines: int = _TAIL_LINES) -> str:
    """The last ``lines`` lines of ``logs`` that are the app's own: access-log lines of the
    harness's polling (``GET /`` and ``GET <ready target>``) are left out, and counted.

    .. versionadded:: 0.1
    """
    polled = {"/", ready_target.split("?", 1)[0], ready_target}
    pattern = re.compile(
        r"\bGET (?:" + "|".join(re.escape(p) for p in sorted(polled)) + r") HTTP/1\.[01]\b"
    )
    every = logs.strip().splitlines()
    own = [line for line in every if not pattern.search(line)]
    left_out = len(every) - len(own)
    tail = "\n".join(own[-lines:]) or "(no output)"
    return tail + (
        f"\n({left_out} lines of the harness's own polling left out)" if left_out else ""
    )


async def _answer(client: httpx.AsyncClient, url: str) -> int | RequestOutcome:
    """The HTTP status ``url`` answered, or how the request failed."""
    try:
        return (await client.get(url)).status_code
    except httpx.HTTPError as exc:
        return classify(exc)[0]
