"""One access log line per request, the same for uvicorn and aiohttp.

The message is uvicorn's (``'%s - "%s %s HTTP/%s" %d'`` with the same five arguments, so a
filter or formatter written for ``uvicorn.access`` keeps working), and the record carries the
request as fields: ``method``, ``path``, ``status``, ``duration_s``, ``client``. Written when
the response has ended, so the duration covers the whole body (a stream's too).
"""

from __future__ import annotations

import logging
import urllib.parse

__all__ = ["ACCESS_FORMAT", "log_access", "only_graceful_access_lines"]

ACCESS_FORMAT = '%s - "%s %s HTTP/%s" %d'


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
    if not logger.isEnabledFor(logging.INFO):
        return
    client_addr = f"{client[0]}:{client[1]}" if client else ""
    full_path = urllib.parse.quote(path) + (f"?{query}" if query else "")
    logger.info(
        ACCESS_FORMAT,
        client_addr,
        method,
        full_path,
        http_version,
        status,
        extra={
            "method": method,
            "path": path,
            "status": status,
            "duration_s": round(duration, 6),
            "client": client_addr,
            **({} if complete else {"complete": False}),
        },
    )


class _OnlyGracefulAccessLines(logging.Filter):
    """Passes the lines :func:`log_access` wrote (they carry ``duration_s``), drops the others."""

    def filter(self, record: logging.LogRecord) -> bool:
        return hasattr(record, "duration_s")


def only_graceful_access_lines(logger: logging.Logger) -> None:
    """Drop the server's own access lines on ``logger``: graceful writes them, with the duration.

    uvicorn writes its line when a response starts, without a duration, and only when the
    logger has a handler; a filter (installed once) keeps its records out without stopping
    the logger from propagating, as ``uvicorn.Config(access_log=False)`` would for the whole
    process.
    """
    if not any(isinstance(f, _OnlyGracefulAccessLines) for f in logger.filters):
        logger.addFilter(_OnlyGracefulAccessLines())
