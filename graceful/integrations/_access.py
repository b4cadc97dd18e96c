"""One access log line per request, the same for uvicorn and aiohttp.

The line is one of graceful's structured events, ``"event": "http.request"``, with the
request as fields: ``method``, ``path``, ``query`` (when there is one), ``status``,
``duration_s``, ``client``, and ``"complete": false`` when the response started but its body
was cut. Written when the response has ended, so the duration covers the whole body (a
stream's too).

It is written on the server's access logger (``uvicorn.access``, ``aiohttp.access``) at INFO,
by one of two paths:

- the fast path, when the line would reach graceful's own JSON handler and nothing else (the
  usual case under ``graceful serve`` and ``graceful.run``): the JSON object is built here,
  with the fields graceful's other lines carry (the structlog context, such as ``worker``;
  ``level``, ``timestamp``, ``logger``), and written straight to the handler's stream. The
  standard library's record, structlog's processor chain and ``json.dumps`` of a dict cost
  more than the request itself;
- the ``logging`` path otherwise: a record with uvicorn's message (``'%s - "%s %s HTTP/%s"
  %d'`` and its five arguments, so a filter written for ``uvicorn.access``, such as one that
  drops health checks by ``record.args[2]``, keeps working) and the fields as ``extra``
  (``event`` among them, so graceful's console and JSON renderers show ``http.request``).
  Taken whenever the access logger has a filter or a handler of the application's, the root
  logger has one, or the output is not JSON (``GRACEFUL_LOG_FORMAT=console`` or ``off``).

Every string field is escaped to ASCII by the standard library's C encoder: a path with
quotes, control characters, NUL bytes or undecodable bytes is still one valid JSON line. A
path or query longer than :data:`MAX_FIELD` characters is cut there, and the line then
carries its full length (``path_length``, ``query_length``).
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
import urllib.parse
from typing import Any

from structlog.contextvars import STRUCTLOG_KEY_PREFIX, STRUCTLOG_KEY_PREFIX_LEN

from graceful.logs import StdlibHandler

__all__ = ["ACCESS_FORMAT", "EVENT", "MAX_FIELD", "log_access", "only_graceful_access_lines"]

ACCESS_FORMAT = '%s - "%s %s HTTP/%s" %d'
#: The access line's ``event``.
EVENT = "http.request"
#: Characters of a path or a query kept in the line: a client's 64 KiB URL must not make a
#: 64 KiB line (nor one longer than a pipe writes whole, where workers share stdout).
MAX_FIELD = 2048

_INFO = logging.INFO
#: ``json``'s C string encoder: quotes and escapes, every character above 0x7f as ``\\uXXXX``
#: (a lone surrogate too), so a line is ASCII whatever the client sent.
_quote: Any = json.encoder.encode_basestring_ascii


def log_access(
    logger: logging.Logger,
    *,
    client: tuple[str, int] | None,
    method: str,
    path: str,
    query: str,
    http_version: str,
    status: int,
    duration: float,
    complete: bool = True,
) -> None:
    """Write one access line on ``logger`` at INFO.

    Args:
        logger: the server's access logger (``uvicorn.access``, ``aiohttp.access``).
        client: the client's address, if known.
        method: the request method.
        path: the URL path, not quoted.
        query: the query string, without ``?``.
        http_version: ``"1.1"``, ``"2"``, ...
        status: the response status.
        duration: seconds from the request to the end of the response.
        complete: False when the response started but its body was cut (the app raised, or
            the drain deadline cancelled it): the line then carries ``complete=False``.
    """
    if not logger.isEnabledFor(_INFO):
        return
    client_addr = f"{client[0]}:{client[1]}" if client else ""
    handler = _json_handler_only(logger)
    if handler is not None:
        line = _line(logger.name, method, path, query, status, duration, client_addr, complete)
        handler.write_line(line)
        return
    full_path = urllib.parse.quote(path) + (f"?{query}" if query else "")
    fields: dict[str, Any] = {
        "event": EVENT,
        "method": method,
        "path": path,
        **({"query": query} if query else {}),
        "status": status,
        "duration_s": round(duration, 6),
        "client": client_addr,
        **({} if complete else {"complete": False}),
    }
    logger.info(ACCESS_FORMAT, client_addr, method, full_path, http_version, status, extra=fields)


def _json_handler_only(logger: logging.Logger) -> StdlibHandler | None:
    """graceful's JSON handler, if an INFO record on ``logger`` would reach it and nothing else.

    Walked on every call (a few attribute reads): the application may add a filter or a
    handler at any time, and the line must then go through ``logging`` for them to see it.
    """
    for found_filter in logger.filters:
        if not isinstance(found_filter, _OnlyGracefulAccessLines):
            return None
    found: StdlibHandler | None = None
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if (
                found is not None
                or not isinstance(handler, StdlibHandler)
                or not handler.json_lines
                or handler.filters
                or handler.level > _INFO
            ):
                return None
            found = handler
        if not current.propagate:
            break
        current = current.parent
    return found


def _line(
    name: str,
    method: str,
    path: str,
    query: str,
    status: int,
    duration: float,
    client: str,
    complete: bool,
) -> str:
    """The JSON object, keys in the order of graceful's other lines (``event`` last)."""
    parts = _context()
    parts.append(f'"level": "info", "timestamp": "{_timestamp()}", "logger": {_quote(name)}')
    parts.append(f'"method": {_quote(method)}')
    parts.append(_field("path", path))
    if query:
        parts.append(_field("query", query))
    status_text = str(status) if type(status) is int else _value(status)
    parts.append(f'"status": {status_text}, "duration_s": {round(duration, 6)!r}')
    parts.append(f'"client": {_quote(client)}')
    if not complete:
        parts.append('"complete": false')
    parts.append(f'"event": "{EVENT}"')
    return "{" + ", ".join(parts) + "}"


def _field(key: str, text: str) -> str:
    if len(text) <= MAX_FIELD:
        return f'"{key}": {_quote(text)}'
    return f'"{key}": {_quote(text[:MAX_FIELD])}, "{key}_length": {len(text)}'


def _context() -> list[str]:
    """structlog's context-local values (``merge_contextvars``), as ``"key": value`` parts."""
    parts = []
    ctx = contextvars.copy_context()
    for var in ctx:
        name = var.name
        if name.startswith(STRUCTLOG_KEY_PREFIX):
            value = ctx[var]
            if value is not Ellipsis:
                parts.append(f"{_quote(name[STRUCTLOG_KEY_PREFIX_LEN:])}: {_value(value)}")
    return parts


def _value(value: Any) -> str:
    if type(value) is int:
        return str(value)
    if type(value) is str:
        return str(_quote(value))
    return json.dumps(value, default=repr)


#: The second of the last timestamp and its date and time of day, swapped as one tuple.
_stamp: tuple[int, str] = (-1, "")


def _timestamp() -> str:
    """Now in UTC as graceful's other lines write it (ISO 8601, µs, ``Z``), the date and time
    of day formatted once a second."""
    global _stamp
    now = time.time()
    second = int(now)
    cached, prefix = _stamp
    if second != cached:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _stamp = (second, prefix)
    return f"{prefix}.{int((now - second) * 1e6):06d}Z"


class _OnlyGracefulAccessLines(logging.Filter):
    """Passes the lines :func:`log_access` wrote (they carry ``duration_s``), drops the others."""

    def filter(self, record: logging.LogRecord) -> bool:
        return hasattr(record, "duration_s")


def only_graceful_access_lines(logger: logging.Logger) -> None:
    """Drop the server's own access lines on ``logger``: graceful writes them, with the duration.

    uvicorn writes its line when a response starts, without a duration, and only when the
    logger has a handler; a filter (installed once) keeps its records out without stopping
    the logger from propagating, as ``uvicorn.Config(access_log=False)`` would for the whole
    process. The fast path ignores this filter: the lines it writes are graceful's.
    """
    if not any(isinstance(f, _OnlyGracefulAccessLines) for f in logger.filters):
        logger.addFilter(_OnlyGracefulAccessLines())
