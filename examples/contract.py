"""The contract of the example services: what a request may hold and what it is answered.

The HTTP services (``asgi_service.py`` on uvicorn, ``aiohttp_service.py``) answer alike, so
the harness and the tests can drive either; the streams service and the worker take ids by the
same rules. The services read the request and send the answer; what a request means, and what
it is answered, is decided here.

Environment: ``PORT`` (8080), ``HOST`` (0.0.0.0), ``ADMIN_PORT`` (9090),
``GRACEFUL_STOP_TIMEOUT`` (10), ``STATE_PATH`` (SQLite file, ``state.sqlite``), ``WORKERS``
(1: more runs the service in that many processes, see `run`).

- ``GET /work?ms=N``: sleeps N ms, answers 200 ``{"slept_ms": N}``.
- ``POST /items`` with ``{"id": "...", ...}``: answers 200 ``{"id": ...}`` once the item is on
  disk; the same id twice is stored once (the first item stays). The store failing: 503,
  nothing stored, the client may retry.
- ``GET /items?limit=N&after=ID``: ``{"ids": [...], "count": total stored}``, the ids in the
  order they were first stored, plus ``"next"`` (the ``after`` of the next page) while more
  remain.

Limits (each refusal is a short JSON error, never a 500):

- a ``POST /items`` body is at most `MAX_BODY_BYTES` (1 MiB), else 413; reading stops as soon
  as the limit is passed, so a huge upload costs no more memory than the limit;
- the body is UTF-8 JSON text (I-JSON, RFC 7493: no lone surrogates, no duplicate names, no
  NaN or Infinity), an object with an ``"id"``, nested at most `MAX_NESTING` levels, else 400;
- an id is a JSON string (``1`` and ``"1"`` must not name the same item, ``null`` must not
  become ``"None"``) of 1 to `MAX_ID_CHARS` characters, with no control character, else 400;
- ``GET /items`` answers at most `MAX_PAGE` ids at a time (`DEFAULT_PAGE` unless ``limit``
  says otherwise), plus a ``next`` cursor while more remain;
- ``GET /work?ms=N`` takes 0 to `MAX_WORK_MS` milliseconds.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import graceful
from graceful.state import DurableStore

MAX_BODY_BYTES: Final = 1024 * 1024
MAX_ID_CHARS: Final = 256
# A fixed depth, well under the interpreter's recursion limit: what the parser accepts must
# not then fail (RecursionError) in the encoder, the store or a reader with a deeper stack,
# and both services must draw the line at the same place.
MAX_NESTING: Final = 64
DEFAULT_PAGE: Final = 1000
MAX_PAGE: Final = 10_000
MAX_WORK_MS: Final = 600_000

# C0 and C1 control characters (NUL included) and DEL; lone surrogates, which no UTF-8 text
# can hold and which the store cannot encode.
_NOT_IN_AN_ID: Final = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def run(main: Callable[[graceful.Runtime], Awaitable[None]], *, factory: str) -> int:
    """Run an example HTTP service as a container's main process; return its exit code.

    ``main`` runs here, under ``graceful.run``. With ``WORKERS=N`` (N > 1) this process
    becomes ``graceful serve FACTORY --factory --workers N`` instead (``exec``: the same
    process, so still PID 1): its supervisor owns the signals and the admin server, and N
    worker processes share the listener, each calling the app factory ``factory``
    (``"module:function"``, a module beside this one) and serving the app under its own
    runtime. ``HOST`` and ``PORT`` keep the examples' defaults; a bad ``WORKERS`` is
    ``graceful serve``'s one-line error.
    """
    workers = os.environ.get("WORKERS", "").strip()
    if workers not in ("", "1"):
        argv = [sys.executable, "-m", "graceful", "serve", factory, "--factory"]
        argv += ["--app-dir", os.path.dirname(os.path.abspath(__file__))]
        argv += [
            "--host",
            os.environ.get("HOST", "0.0.0.0"),
            "--port",
            os.environ.get("PORT", "8080"),
        ]
        argv += ["--workers", workers]
        os.execv(sys.executable, argv)
    return graceful.run(main, config=graceful.Config.from_env())


async def open_store(runtime: graceful.Runtime) -> DurableStore:
    """The service's state store (``STATE_PATH``), opened now and closed with ``runtime``, in
    its ``close`` phase: after the drain and the flush, so no write in flight is cut."""
    path = os.environ.get("STATE_PATH", "state.sqlite")
    return await runtime.enter(DurableStore(path, registry=runtime.registry), name="state")


class Refused(ValueError):
    """A request the contract refuses: the HTTP status to answer and a short reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason

    def body(self) -> dict[str, str]:
        """The JSON error body the services answer with."""
        return {"error": self.reason}


def too_large() -> Refused:
    return Refused(413, f"the body is larger than {MAX_BODY_BYTES} bytes")


def check_declared_length(content_length: str | None) -> None:
    """Refuse at once a body whose ``Content-Length`` is over the limit, before reading it.

    Args:
        content_length: the header's value, or ``None`` without one (chunked).

    Raises:
        Refused: 413 over the limit; 400 if the value is not a number.
    """
    if content_length is None:
        return
    if not (content_length.isascii() and content_length.isdecimal()):
        raise Refused(400, "Content-Length is not a number")
    # int() of thousands of digits is an error of its own; such a number is too large anyway.
    digits = content_length.lstrip("0") or "0"
    if len(digits) > 15 or int(digits) > MAX_BODY_BYTES:
        raise too_large()


class BodyReader:
    """Collects a request body chunk by chunk, refusing it as soon as it passes the limit.

    A ``bytearray`` grows in place; ``body += chunk`` on ``bytes`` copies everything read so
    far for every chunk (quadratic time, and a 32 MB upload cost 620 MB).
    """

    def __init__(self) -> None:
        self._data = bytearray()

    def add(self, chunk: bytes) -> None:
        """Append ``chunk``.

        Raises:
            Refused: 413, the body passed `MAX_BODY_BYTES`; nothing more should be read.
        """
        if len(self._data) + len(chunk) > MAX_BODY_BYTES:
            raise too_large()
        self._data += chunk

    def data(self) -> bytes:
        """Everything read so far."""
        return bytes(self._data)


def check_id(value: object) -> str:
    """The item id ``value`` if it is one the services accept.

    Returns:
        ``value``, unchanged.

    Raises:
        Refused: 400, with what is wrong.
    """
    if not isinstance(value, str):
        raise Refused(400, f'"id" must be a JSON string, not {_json_type(value)}')
    if not value:
        raise Refused(400, '"id" must not be empty')
    if len(value) > MAX_ID_CHARS:
        raise Refused(400, f'"id" is longer than {MAX_ID_CHARS} characters')
    if _NOT_IN_AN_ID.search(value):
        raise Refused(400, '"id" must not hold control characters or lone surrogates')
    return value


def parse_item(body: bytes) -> tuple[str, dict[str, Any]]:
    """The id and the item of a ``POST /items`` body.

    Returns:
        ``(id, item)``: the item is the whole JSON object, as it will be stored.

    Raises:
        Refused: 400, the body is not a JSON object with a valid id.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(400, "the body is not UTF-8") from None
    try:
        item = json.loads(text, object_pairs_hook=_unique_names, parse_constant=_no_constant)
    except RecursionError:
        raise Refused(400, f"the body is nested more than {MAX_NESTING} levels deep") from None
    except ValueError as exc:  # JSONDecodeError, too many digits, NaN, a name twice
        raise Refused(400, f"the body is not valid JSON text: {_short(exc)}") from None
    if _deeper_than(item, MAX_NESTING):
        raise Refused(400, f"the body is nested more than {MAX_NESTING} levels deep")
    try:
        # Encoding it back finds lone surrogates (an escaped "\ud800" parses fine) and
        # numbers that overflowed to infinity (1e999).
        json.dumps(item, ensure_ascii=False, allow_nan=False).encode()
    except UnicodeEncodeError:
        raise Refused(400, "the body holds a lone surrogate: it is not Unicode text") from None
    except ValueError as exc:
        raise Refused(400, f"the body is not valid JSON text: {_short(exc)}") from None
    if not isinstance(item, dict):
        raise Refused(400, f'expected a JSON object {{"id": ...}}, not {_json_type(item)}')
    if "id" not in item:
        raise Refused(400, 'expected a JSON object {"id": ...}: "id" is missing')
    return check_id(item["id"]), item


async def store_item(store: DurableStore, body: bytes) -> tuple[int, dict[str, Any]]:
    """``POST /items``: store the item once it is checked.

    Returns:
        ``(status, JSON body)``: 200 ``{"id": ...}`` once the item is on disk (stored now or
        before); 400 when the body breaks the contract or the store's limits; 503 when the
        store failed (nothing was stored, the client may retry).
    """
    try:
        key, item = parse_item(body)
    except Refused as refused:
        return refused.status, refused.body()
    try:
        await store.put(key, item)
    except (ValueError, TypeError) as exc:  # the store's own limits (numbers grow re-encoded)
        return 400, {"error": f"the store refuses the item: {_short(exc)}"}
    except graceful.StateError as exc:
        return 503, {"error": f"not stored, try again: {exc}"}
    return 200, {"id": key}


async def list_page(store: DurableStore, query: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
    """``GET /items?limit=N&after=ID``: one page of the stored ids, in first-written order.

    Returns:
        ``(status, JSON body)``: 200 ``{"ids": [...], "count": total, "next": cursor}`` (no
        ``next`` on the last page); 400 for a bad ``limit`` or ``after``.
    """
    try:
        limit, after = page_request(query)
    except Refused as refused:
        return refused.status, refused.body()
    try:
        # One more than asked tells whether another page follows.
        ids = await store.keys(limit=limit + 1, after=after)
    except KeyError:
        return 400, {"error": "after: no such id"}
    page: dict[str, Any] = {"ids": ids[:limit], "count": await store.count()}
    if len(ids) > limit:
        page["next"] = ids[limit - 1]
    return 200, page


def page_request(query: Mapping[str, str]) -> tuple[int, str | None]:
    """``limit`` and ``after`` of a ``GET /items?limit=N&after=ID``.

    Returns:
        ``(limit, after)``: how many ids to answer, and the id the page starts after (the
        ``next`` of the previous page), or ``None`` for the first page.

    Raises:
        Refused: 400, ``limit`` is not a whole number from 1 to `MAX_PAGE` or ``after`` is not
            a valid id.
    """
    raw_limit = query.get("limit")
    limit = DEFAULT_PAGE if raw_limit is None else whole_number("limit", raw_limit, 1, MAX_PAGE)
    after = query.get("after")
    return limit, None if after is None else check_id(after)


def work_ms(query: Mapping[str, str]) -> int:
    """The ``ms`` of a ``GET /work?ms=N`` (0 when absent).

    Raises:
        Refused: 400, ``ms`` is not a whole number from 0 to `MAX_WORK_MS`.
    """
    raw = query.get("ms")
    return 0 if raw is None else whole_number("ms", raw, 0, MAX_WORK_MS)


def whole_number(name: str, raw: str, low: int, high: int) -> int:
    """``raw`` read as a whole number from ``low`` to ``high``.

    Raises:
        Refused: 400, naming ``name``.
    """
    # isdecimal() alone would accept other scripts' digits ("٣"), which int() reads too.
    if not (raw.isascii() and raw.isdecimal() and len(raw) <= len(str(high))):
        raise Refused(400, f"{name} must be a whole number from {low} to {high}")
    value = int(raw)
    if not low <= value <= high:
        raise Refused(400, f"{name} must be a whole number from {low} to {high}")
    return value


def _deeper_than(value: object, limit: int) -> bool:
    """Whether arrays and objects in ``value`` nest more than ``limit`` levels (``value``
    itself is level 1); without recursion, so the check itself cannot overflow."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = list(node.values())
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _unique_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        # {"id": "a", "id": "b"}: parsers disagree on which one wins; refuse both.
        raise ValueError("a name appears twice in one object")
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "a string"


def _short(exc: Exception) -> str:
    # The messages of int() and of the encoder can quote the input; keep the answer short.
    text = str(exc)
    return text if len(text) <= 120 else text[:117] + "..."
