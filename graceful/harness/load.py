"""Load client with a ledger: every request, when it was sent, what came back and when.

The harness judges a stop by what a client saw, so every request goes through one
:class:`Ledger`. A record keeps the request's kind, its send and answer times (on the
monotonic clock), the HTTP status or the error class (refused, reset, closed, timeout) and,
for writes, the id the client chose, so acknowledged writes can be looked for after a restart.

Load is bounded in count and in time and stops by itself. It only ever talks to 127.0.0.1,
through the ports the engine published there.

New connections during a stop are not this module's business: :mod:`graceful.harness.prober`
opens them, from inside the service's network namespace.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType

import httpx

from graceful.harness.workload import Workload

__all__ = [
    "Counts",
    "Kind",
    "Ledger",
    "LoadClient",
    "Record",
    "RequestOutcome",
    "Workload",
    "classify",
    "describe_failures",
]


class Kind(StrEnum):
    """What a request was for."""

    WORK = "work"  # steady short requests
    LONG = "long"  # long requests held in flight across the stop
    WRITE = "write"  # POST of an item with a client-chosen id
    READ = "read"  # a read of what is stored (the items list, or one id)


class RequestOutcome(StrEnum):
    """How a request ended, as the client saw it."""

    OK = "ok"  # answered with a 2xx status
    HTTP_ERROR = "http_error"  # answered with another status
    REFUSED = "refused"  # the connection was refused: nobody listened
    RESET = "reset"  # the connection was reset (RST) before the answer was complete
    CLOSED = "closed"  # the connection was closed (FIN) before any answer
    TIMEOUT = "timeout"  # no answer in time
    ERROR = "error"  # anything else (named in the record's detail)


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """One request in the ledger.

    Attributes:
        kind: what the request was for.
        sent: monotonic time the request was started.
        answered: monotonic time its outcome was known (answer or error).
        outcome: how it ended.
        status: the HTTP status when there was an answer.
        item_id: the id written, for writes.
        detail: the error's text, for failures.
        asked_ms: the work a work request asked for, in milliseconds (an answer that comes
            clearly sooner did not do it: :mod:`graceful.harness.work_done`).

    .. versionadded:: 0.1
    """

    kind: Kind
    sent: float
    answered: float
    outcome: RequestOutcome
    status: int | None = None
    item_id: str | None = None
    detail: str = ""
    asked_ms: int | None = None

    @property
    def took_ms(self) -> float:
        """Milliseconds from sending the request to knowing its outcome."""
        return (self.answered - self.sent) * 1000

    @property
    def ok(self) -> bool:
        """Answered with a 2xx status."""
        return self.outcome is RequestOutcome.OK

    @property
    def acked(self) -> bool:
        """A write the service acknowledged (and so promised to keep)."""
        return self.kind is Kind.WRITE and self.outcome is RequestOutcome.OK


@dataclass(frozen=True, slots=True)
class Counts:
    """Requests sent, answered with 2xx, and failed (everything else)."""

    sent: int
    ok: int
    failed: int


@dataclass(slots=True)
class Ledger:
    """Every request the load client made, in the order they ended.

    .. versionadded:: 0.1
    """

    records: list[Record] = field(default_factory=list)

    def add(self, record: Record) -> None:
        """Append one request's record."""
        self.records.append(record)

    def select(
        self,
        kinds: Iterable[Kind] | None = None,
        *,
        sent_before: float | None = None,
        sent_after: float | None = None,
    ) -> list[Record]:
        """Records of the given kinds sent in the given window (bounds exclusive)."""
        wanted = set(kinds) if kinds is not None else set(Kind)
        return [
            r
            for r in self.records
            if r.kind in wanted
            and (sent_before is None or r.sent < sent_before)
            and (sent_after is None or r.sent > sent_after)
        ]

    def counts(self, kinds: Iterable[Kind] = (Kind.WORK, Kind.LONG, Kind.WRITE)) -> Counts:
        """Sent / ok / failed over the load's requests (reads made to check state excluded)."""
        chosen = self.select(kinds)
        ok = sum(1 for r in chosen if r.ok)
        return Counts(sent=len(chosen), ok=ok, failed=len(chosen) - ok)

    def acked_ids(self) -> list[str]:
        """Ids of the writes the service acknowledged, in the order they were acknowledged."""
        return [r.item_id for r in self.records if r.acked and r.item_id is not None]


_GONE = frozenset({RequestOutcome.REFUSED, RequestOutcome.RESET, RequestOutcome.CLOSED})


def describe_failures(records: Sequence[Record]) -> str:
    """Plain words for a set of failed requests: ``"3 reset, 1 HTTP 503"``."""
    counter: Counter[str] = Counter()
    for r in records:
        if r.outcome is RequestOutcome.HTTP_ERROR:
            counter[f"HTTP {r.status}"] += 1
        elif r.outcome is RequestOutcome.ERROR:
            counter[r.detail or "error"] += 1
        else:
            counter[r.outcome.value] += 1
    return ", ".join(f"{n} {what}" for what, n in counter.most_common())


def classify(exc: BaseException) -> tuple[RequestOutcome, str]:
    """Map an httpx error to the error class the harness reports."""
    if isinstance(exc, httpx.TimeoutException):
        return RequestOutcome.TIMEOUT, type(exc).__name__
    causes = _chain(exc)
    for cause in causes:
        if isinstance(cause, ConnectionRefusedError):
            return RequestOutcome.REFUSED, str(cause)
        if isinstance(cause, ConnectionResetError | BrokenPipeError):
            return RequestOutcome.RESET, str(cause)
        if isinstance(cause, OSError) and cause.errno in (errno.ECONNRESET, errno.EPIPE):
            return RequestOutcome.RESET, str(cause)
    text = str(exc)
    if isinstance(exc, httpx.RemoteProtocolError):
        # httpcore's words for a FIN before the status line, vs one in the middle of a body.
        if "without sending a response" in text:
            return RequestOutcome.CLOSED, text
        return RequestOutcome.RESET, text
    if isinstance(exc, httpx.ReadError | httpx.WriteError):
        return RequestOutcome.RESET, text or type(exc).__name__
    if isinstance(exc, httpx.ConnectError) and "refused" in text.lower():
        return RequestOutcome.REFUSED, text
    return RequestOutcome.ERROR, f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


class LoadClient:
    """Drives the HTTP contract over keep-alive connections and records every request.

    Args:
        host_port: the host port published for the service's HTTP port (on 127.0.0.1).
        workload: paths of the contract.
        ledger: where records go; a new one when omitted.
        connections: size of the keep-alive pool.
        timeout: per-request bound, a hang guard.
        id_prefix: prefix of the item ids this client writes (unique per run); the
            attribute of the same name may be changed, to keep ids unique across the clients
            that share one ledger.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        host_port: int,
        *,
        workload: Workload,
        ledger: Ledger | None = None,
        connections: int = 32,
        timeout: float = 30.0,
        id_prefix: str = "item",
    ) -> None:
        self.workload = workload
        self.ledger = ledger if ledger is not None else Ledger()
        self._base = f"http://127.0.0.1:{host_port}"
        self._client = httpx.AsyncClient(
            base_url=self._base,
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            timeout=httpx.Timeout(timeout),
            trust_env=False,  # never route through a proxy from the environment
        )
        self._ids = itertools.count(1)
        self.id_prefix = id_prefix
        # Parsed once: a writer sends thousands.
        self._write_template = workload.write_template
        self._read_template = workload.read_template

    async def __aenter__(self) -> LoadClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    def next_id(self) -> str:
        """A fresh item id, unique within this client."""
        return f"{self.id_prefix}-{next(self._ids)}"

    async def work(self, ms: int, *, kind: Kind = Kind.WORK) -> Record:
        """``GET`` the work URL: one request that stays in flight for about ``ms``."""
        return await self._request(kind, "GET", self.workload.work_target(ms), asked_ms=ms)

    async def write(self, item_id: str | None = None) -> Record:
        """Write an item with a client-chosen id: ``POST {items_path}`` ``{"id": ...}``,
        acknowledged when answered 2xx with that id; or the workload's write template,
        acknowledged when answered 2xx."""
        item_id = item_id if item_id is not None else self.next_id()
        template = self._write_template
        if template is None:
            return await self._request(
                Kind.WRITE, "POST", self.workload.items_path, json={"id": item_id}, item_id=item_id
            )
        body = template.body_for(item_id)
        return await self._request(
            Kind.WRITE,
            template.method,
            template.target_for(item_id),
            content=body.encode() if body else None,
            item_id=item_id,
            echo=False,
        )

    async def stored_ids(self, ids: Iterable[str] | None = None) -> set[str]:
        """The ids the service holds (of ``ids``, with a read template).

        With an items path: ``GET {items_path}``, following ``next`` page by page (a service
        that pages its list answers ``{"ids", "count", "next"}`` while more remain; one that
        does not never sends ``next``, so a single page is the whole list); ``ids`` is not
        needed. With a read template: each of ``ids`` is read, 32 at a time (2xx: stored,
        404: not); with no ids, one id never written is read, so a store that does not
        answer still raises.

        Raises:
            httpx.HTTPError: the service did not answer, or not with 2xx and JSON ids (with a
                read template: not with 2xx or 404).
            ValueError: a read template, and no ``ids`` to look for.
        """
        if self._read_template is not None:
            if ids is None:
                raise ValueError("a read template reads ids one by one: name the ids to look for")
            return await self._read_each(list(ids))
        found: set[str] = set()
        params: dict[str, str] = {}
        while True:
            response = await self._read(Kind.READ, "GET", self.workload.items_path, params=params)
            response.raise_for_status()
            body = response.json()
            found.update(str(i) for i in body["ids"])
            after = body.get("next")
            if not after or str(after) == params.get("after"):
                return found
            params = {"limit": "1000", "after": str(after)}

    async def has(self, item_id: str) -> bool:
        """Read ``item_id`` with the read template: True on 2xx, False on 404.

        Raises:
            httpx.HTTPError: no answer, or another status (the harness cannot tell).
            ValueError: the workload has no read template.
        """
        template = self._read_template
        if template is None:
            raise ValueError("no read template: stored ids are listed at the items path")
        body = template.body_for(item_id)
        response = await self._read(
            Kind.READ, template.method, template.target_for(item_id),
            content=body.encode() if body else None,
        )  # fmt: skip
        if response.status_code == 404:
            return False
        response.raise_for_status()
        return True

    async def _read_each(self, ids: list[str]) -> set[str]:
        if not ids:
            await self.has(f"{self.id_prefix}-never-written")  # the store answers at all
            return set()
        gate = asyncio.Semaphore(32)

        async def one(item_id: str) -> str | None:
            async with gate:
                return item_id if await self.has(item_id) else None

        # A TaskGroup: the first read that fails cancels the others (nothing left running),
        # and its error is the caller's, as one read's would be.
        try:
            async with asyncio.TaskGroup() as group:
                reads = [group.create_task(one(i)) for i in ids]
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None
        return {found for r in reads if (found := r.result()) is not None}

    async def _read(
        self,
        kind: Kind,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        """A request that checks state: recorded (ok on 2xx or 404), its response returned."""
        sent = time.monotonic()
        headers = {"content-type": "application/json"} if content is not None else None
        response = await self._client.request(
            method, path, params=params, content=content, headers=headers
        )
        # A read template's 404 is an answer (not stored); the items list's is not.
        found = response.status_code == 404 and self._read_template is not None
        ok = response.is_success or found
        self.ledger.add(
            Record(
                kind=kind,
                sent=sent,
                answered=time.monotonic(),
                outcome=RequestOutcome.OK if ok else RequestOutcome.HTTP_ERROR,
                status=response.status_code,
            )
        )
        return response

    async def steady(
        self,
        *,
        stop: asyncio.Event,
        concurrency: int = 4,
        ms: int = 20,
        writes: bool = False,
        max_requests: int = 5000,
        max_seconds: float = 30.0,
        retry_after: float | None = None,
    ) -> None:
        """Keep ``concurrency`` requests going until ``stop`` is set or a bound is reached.

        Args:
            stop: set it to end the load; no request is started after it is set.
            concurrency: requests in flight at once (each worker keeps its connection alive).
            ms: the work each request asks for (ignored for writes).
            writes: send writes instead of work requests.
            max_requests: the most requests this call sends in all.
            max_seconds: the longest this call runs.
            retry_after: None: a worker stops once the service is gone (refused, reset,
                closed), as a client of one container would. Seconds: after any failed
                request a worker waits this long and goes on, as a client of a load balancer
                would (the balancer stays up; a failed request is what is counted).
        """
        deadline = time.monotonic() + max_seconds
        budget = itertools.count()

        async def worker() -> None:
            while not stop.is_set() and time.monotonic() < deadline:
                if next(budget) >= max_requests:
                    return
                record = await (self.write() if writes else self.work(ms))
                if retry_after is None and record.outcome in _GONE:
                    return  # the service is gone: a real client would back off, not spin
                if retry_after is not None and not record.ok:
                    await asyncio.sleep(retry_after)  # back off a little, do not spin

        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(worker())

    async def settle(self) -> None:
        """Give requests just sent time to reach the server: a short request sent after them
        must come back (the listener accepts in order), then a little more for them to be
        read."""
        await asyncio.sleep(0.1)
        await self.work(0)
        await asyncio.sleep(0.1)

    async def _request(
        self,
        kind: Kind,
        method: str,
        path: str,
        *,
        json: object = None,
        content: bytes | None = None,
        item_id: str | None = None,
        asked_ms: int | None = None,
        echo: bool = True,
    ) -> Record:
        """One load request, recorded; a write with ``echo`` is acknowledged only when the
        answer names its id."""
        sent = time.monotonic()
        headers = {"content-type": "application/json"} if content is not None else None
        try:
            response = await self._client.request(
                method, path, json=json, content=content, headers=headers
            )
        except httpx.HTTPError as exc:
            outcome, detail = classify(exc)
            record = Record(
                kind=kind,
                sent=sent,
                answered=time.monotonic(),
                outcome=outcome,
                item_id=item_id,
                detail=detail,
                asked_ms=asked_ms,
            )
        else:
            ok = response.is_success
            if ok and kind is Kind.WRITE and echo:
                ok = _acked_id(response) == item_id
            record = Record(
                kind=kind,
                sent=sent,
                answered=time.monotonic(),
                outcome=RequestOutcome.OK if ok else RequestOutcome.HTTP_ERROR,
                status=response.status_code,
                item_id=item_id,
                asked_ms=asked_ms,
            )
        self.ledger.add(record)
        return record


def _acked_id(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, dict) and "id" in body:
        return str(body["id"])
    return None
