"""The access line: one JSON event per request, safe for any path, cheap, and still filterable.

In-process: every line :func:`log_access` writes for any path, query, client or method
(hypothesis: control characters, NUL, quotes, lone surrogates, huge strings) is one line of
ASCII that parses as JSON and gives the path back; the fast path is taken only when nothing
but graceful's JSON handler would see the record. In real ``graceful serve`` processes: the
line's shape, hostile paths over a raw socket, a ``uvicorn.access`` filter of the app's that
still drops health checks, the console format, the log level, ``worker`` under ``--workers``,
and an aiohttp app.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import signal
import socket
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graceful.integrations._access import (
    EVENT,
    MAX_FIELD,
    _json_handler_only,
    log_access,
    only_graceful_access_lines,
)
from graceful.logs import StdlibHandler
from tests.support import APPS, ServiceProcess, free_port
from tests.test_serve import GRACEFUL, HANG_GUARD, get, json_lines, serving

STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")

#: Any code point, lone surrogates and NUL included.
ANY_TEXT = st.text(st.characters(codec=None, categories=None, exclude_categories=()))


def json_logger(name: str = "uvicorn.access") -> tuple[logging.Logger, io.StringIO]:
    """A logger outside the tree whose only handler is graceful's JSON handler."""
    out = io.StringIO()
    logger = logging.Logger(name, logging.INFO)
    logger.addHandler(StdlibHandler(logging.Formatter(), out, json_lines=True))
    return logger, out


# -- in process: the line itself ----------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    path=ANY_TEXT | st.text(min_size=MAX_FIELD - 2, max_size=MAX_FIELD * 3),
    query=ANY_TEXT,
    host=ANY_TEXT,
    method=ANY_TEXT,
    status=st.integers(-(10**20), 10**20),
    duration=st.floats(min_value=0, max_value=1e9),
    complete=st.booleans(),
)
def test_every_line_is_one_json_object_that_gives_the_path_back(
    path: str, query: str, host: str, method: str, status: int, duration: float, complete: bool
) -> None:
    logger, out = json_logger()
    log_access(
        logger,
        client=(host, 8080),
        method=method,
        path=path,
        query=query,
        http_version="1.1",
        status=status,
        duration=duration,
        complete=complete,
    )
    text = out.getvalue()
    assert text.endswith("\n")
    assert text.count("\n") == 1
    assert text.isascii()  # whatever the client sent: nothing for a terminal to interpret
    line = json.loads(text)
    assert line["event"] == EVENT
    assert (line["level"], line["logger"]) == ("info", "uvicorn.access")
    assert STAMP.fullmatch(line["timestamp"])
    assert (line["method"], line["status"], line["client"]) == (method, status, f"{host}:8080")
    assert line["duration_s"] == round(duration, 6)
    assert line.get("complete", True) is complete
    for key, sent in (("path", path), ("query", query)):
        if not sent and key == "query":  # no query, no field; a path is always there
            assert key not in line
        elif len(sent) <= MAX_FIELD:
            assert (line[key], f"{key}_length" in line) == (sent, False)
        else:  # cut: the line stays short, and says how long the original was
            assert (line[key], line[f"{key}_length"]) == (sent[:MAX_FIELD], len(sent))


def test_control_a_line_built_without_escaping_does_not_parse() -> None:
    """Control for the test above: the check can see a broken line (a naive f-string)."""
    for path in ['/a"b', "/a\nb", "/a\x00b", "/a\\"]:
        naive = f'{{"event": "{EVENT}", "path": "{path}"}}'
        with pytest.raises(json.JSONDecodeError):
            json.loads(naive)
        logger, out = json_logger()
        log_access(logger, client=None, method="GET", path=path, query="", http_version="1.1",
                   status=200, duration=0.0)  # fmt: skip
        assert json.loads(out.getvalue())["path"] == path


def test_the_line_carries_the_structlog_context_like_the_other_lines() -> None:
    """``worker`` (and whatever the app bound with structlog's contextvars) is on the line,
    as ``merge_contextvars`` puts it on graceful's other lines."""
    import structlog

    logger, out = json_logger()
    with structlog.contextvars.bound_contextvars(worker=3, request_id="r-1"):
        log_access(logger, client=("10.0.0.1", 5), method="GET", path="/", query="",
                   http_version="1.1", status=204, duration=0.25)  # fmt: skip
    line = json.loads(out.getvalue())
    assert (line["worker"], line["request_id"]) == (3, "r-1")
    assert list(line)[-1] == "event"


def route(logger: logging.Logger) -> str:
    return "fast" if _json_handler_only(logger) is not None else "logging"


def test_the_fast_path_only_when_graceful_json_handler_alone_would_see_the_line() -> None:
    """Anything of the application's on the way (a filter, a handler, a console handler, a
    handler's filter or level) sends the line through ``logging``, where it sees it."""
    root = logging.Logger("root-like", logging.INFO)
    ours = StdlibHandler(logging.Formatter(), io.StringIO(), json_lines=True)
    root.addHandler(ours)
    access = logging.Logger("uvicorn.access", logging.INFO)
    access.parent = root
    assert route(access) == "fast"
    only_graceful_access_lines(access)  # graceful's own filter is not the app's
    assert route(access) == "fast"

    access.addFilter(lambda record: True)
    assert route(access) == "logging"
    access.filters = access.filters[:1]
    access.addHandler(logging.NullHandler())
    assert route(access) == "logging"
    access.propagate = False  # its own handler only: not graceful's
    assert route(access) == "logging"
    access.handlers, access.propagate = [], True
    ours.addFilter(lambda record: True)
    assert route(access) == "logging"
    ours.filters = []
    ours.setLevel(logging.WARNING)
    assert route(access) == "logging"
    ours.setLevel(logging.NOTSET)
    ours.json_lines = False  # GRACEFUL_LOG_FORMAT=console
    assert route(access) == "logging"
    ours.json_lines = True
    assert route(access) == "fast"
    root.handlers = []  # GRACEFUL_LOG_FORMAT=off: nobody's handler
    assert route(access) == "logging"


def test_through_logging_the_record_keeps_uvicorns_message_and_arguments(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A filter written for uvicorn (``record.args[2]`` is the path) and a formatter of the
    application's (``%(message)s``) see what uvicorn gave them; graceful's renderers see the
    event name (``extra``)."""
    caplog.set_level(logging.INFO, logger="uvicorn.access")
    log_access(logging.getLogger("uvicorn.access"), client=("127.0.0.1", 9), method="GET",
               path="/a b", query="x=1", http_version="1.1", status=200,
               duration=0.5)  # fmt: skip
    (record,) = [r for r in caplog.records if r.name == "uvicorn.access"]
    assert record.args == ("127.0.0.1:9", "GET", "/a%20b?x=1", "1.1", 200)
    assert record.getMessage() == '127.0.0.1:9 - "GET /a%20b?x=1 HTTP/1.1" 200'
    fields: Any = record
    assert (fields.event, fields.path, fields.query, fields.duration_s) == (
        EVENT,
        "/a b",
        "x=1",
        0.5,
    )


# -- real processes ------------------------------------------------------------------------------


@contextlib.contextmanager
def serving_quietly(target: str, env: dict[str, str]) -> Iterator[tuple[ServiceProcess, int]]:
    """``graceful serve``, ready once its port accepts a connection (its log may not be JSON,
    or say nothing); no request is sent, so no access line is written meanwhile."""
    port = free_port()
    argv = [GRACEFUL, "serve", target, "--app-dir", str(APPS), "--host", "127.0.0.1",
            "--port", str(port)]  # fmt: skip
    with ServiceProcess(argv, env=env) as service:
        deadline = time.monotonic() + HANG_GUARD
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, service.output()
                time.sleep(0.05)
        yield service, port


def access_events(service: ServiceProcess, logger: str = "uvicorn.access") -> list[dict[str, Any]]:
    events, plain = json_lines(service)
    assert plain == [], plain
    return [e for e in events if e.get("logger") == logger]


def raw_get(port: int, target: bytes) -> bytes:
    """One request with ``target`` sent as is; the status line of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        return sock.recv(64).split(b"\r\n")[0]


HOSTILE = [
    b"/%00%01%1F%7F",  # NUL and control characters
    b"/%0A%0D%22%5C",  # a newline, a carriage return, a quote, a backslash
    b"/%FF%FE%C3",  # bytes that are not UTF-8
    b"/%E2%80%A8%E2%80%A9%F0%9F%98%80",  # line and paragraph separators, an emoji
    b'/a"b\\c',  # a quote and a backslash, not encoded
    b"/" + b"x" * 9000,  # huge
]


def test_every_request_is_one_json_line_with_the_request_as_fields() -> None:
    """``graceful serve app:app`` with its defaults: each request, hostile or not, is one JSON
    line ``"event": "http.request"`` with the fields, whose path is the app's ``scope["path"]``
    (what uvicorn decoded), cut at ``MAX_FIELD`` characters with its length beside it."""
    with serving("access_app:app") as (service, port):
        assert get(port, "/items/a?q=1") == (200, b"ok")
        assert get(port, "/health")[0] == 200
        for target in HOSTILE:
            assert raw_get(port, target).startswith(b"HTTP/1.1 "), target
        service.signal(signal.SIGTERM)
        assert service.wait() == 0
    lines = access_events(service)
    assert len(lines) == 2 + len(HOSTILE)
    first = lines[0]
    assert first["event"] == "http.request"
    assert {k: first[k] for k in ("method", "path", "query", "status")} == {
        "method": "GET", "path": "/items/a", "query": "q=1", "status": 200,
    }  # fmt: skip
    assert first["client"].startswith("127.0.0.1:")
    assert 0 <= first["duration_s"] < HANG_GUARD
    assert STAMP.fullmatch(first["timestamp"])
    assert first["level"] == "info"
    assert "complete" not in first
    for line, target in zip(lines[2:], HOSTILE, strict=True):
        decoded = urllib.parse.unquote(target.decode("ascii"))
        if len(decoded) > MAX_FIELD:
            assert (line["path"], line["path_length"]) == (decoded[:MAX_FIELD], len(decoded))
        else:
            assert line["path"] == decoded
    assert "/health" in [line["path"] for line in lines]  # the control of the filter test
    # Microseconds, not uvloop's whole milliseconds (the loop's clock, used before: every
    # duration was a multiple of 0.001, most of them 0.0 or 0.001).
    assert any(round(line["duration_s"] * 1000, 6) % 1 for line in lines)


def test_a_uvicorn_access_filter_of_the_apps_still_drops_its_lines() -> None:
    """The filter uvicorn users write to keep health checks out (it reads ``record.args``)
    still works: the line then goes through ``logging``, and is the same JSON event. The
    test above (no filter) is the control: there ``/health`` has its line."""
    with serving("access_app:app", env={"ACCESS_FILTER": "1"}) as (service, port):
        assert get(port, "/health")[0] == 200
        assert get(port, "/items/b")[0] == 200
        service.signal(signal.SIGTERM)
        assert service.wait() == 0
    (line,) = access_events(service)
    assert (line["event"], line["path"], line["status"]) == ("http.request", "/items/b", 200)
    assert STAMP.fullmatch(line["timestamp"])
    assert line["level"] == "info"


@pytest.mark.parametrize(
    ("env", "expect"),
    [
        ({"GRACEFUL_LOG_FORMAT": "console"}, "console"),
        ({"GRACEFUL_LOG_LEVEL": "warning"}, "none"),
        ({"GRACEFUL_LOG_FORMAT": "off"}, "none"),
    ],
    ids=["console", "level-warning", "format-off"],
)
def test_the_log_format_and_level_apply_to_the_access_line(
    env: dict[str, str], expect: str
) -> None:
    """Console: a readable line naming the event and the fields; a level above info, or
    logging left to the app (``off``, and it configured nothing): no line. The JSON tests
    above are the control."""
    with serving_quietly("access_app:app", env=env) as (service, port):
        assert get(port, "/items/c?z=9")[0] == 200
        service.signal(signal.SIGTERM)
        assert service.wait() == 0
    found = [line for line in service.lines if "/items/c" in line]
    if expect == "none":
        assert found == []
    else:
        (colored,) = found
        line = re.sub(r"\x1b\[[0-9;]*m", "", colored)  # the console renderer's colours
        assert "http.request" in line
        assert "path=/items/c" in line
        assert "status=200" in line
        assert not line.startswith("{")


def test_every_workers_access_line_says_which_worker() -> None:
    """``--workers 2``: the lines come from the workers' processes, each with ``worker``."""
    with serving("access_app:app", "--workers", "2") as (service, port):
        for n in range(6):
            assert get(port, f"/items/{n}")[0] == 200
        service.signal(signal.SIGTERM)
        assert service.wait() == 0
    lines = access_events(service)
    assert sorted(line["path"] for line in lines) == [f"/items/{n}" for n in range(6)]
    assert {line["worker"] for line in lines} <= {0, 1}
    assert all(line["event"] == "http.request" for line in lines)


def test_an_aiohttp_apps_access_line_is_the_same_event() -> None:
    with serving("serve_aiohttp:app") as (service, port):
        assert get(port, "/slow?s=0") == (200, b"done")
        service.signal(signal.SIGTERM)
        assert service.wait() == 0
    (line,) = access_events(service, "aiohttp.access")
    assert (line["event"], line["path"], line["query"], line["status"]) == (
        "http.request", "/slow", "s=0", 200,
    )  # fmt: skip
    assert line["client"].startswith("127.0.0.1:")
