"""Hostile requests against the example HTTP services: never a 5xx, a traceback or a crash.

Both examples (``asgi_service.py`` on uvicorn, ``aiohttp_service.py`` on aiohttp) run once for
the module as child processes, each on its own SQLite file. Every request goes to both, and
they must answer alike (the harness drives either): the same status, the same JSON body.
Hypothesis makes the requests: arbitrary JSON values and ids, random bytes, nesting up to
100 000 levels, lone surrogates, NUL, numbers as ids, odd query strings. After each test the
services must still be running with no traceback and no error event in their output.
"""

from __future__ import annotations

import http.client
import json
import math
import select
import socket
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.support import ROOT, ServiceProcess, free_port, wait_http

SERVERS = ("asgi_service", "aiohttp_service")
MAX_BODY = 1024 * 1024
MAX_ID_CHARS = 256
MAX_NESTING = 64
HANG_GUARD = 60.0

pytestmark = pytest.mark.slow

hostile = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

Answer = tuple[int, Any]


@dataclass
class Example:
    name: str
    process: ServiceProcess
    port: int

    def request(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=HANG_GUARD)
        try:
            conn.request(method, target, body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        try:
            return response.status, json.loads(data)
        except ValueError:
            return response.status, data

    def assert_healthy(self, since: int = 0) -> None:
        """Still running; no traceback and no error event in the output from line ``since``."""
        assert self.process.proc.poll() is None, f"{self.name} exited:\n{self.process.output()}"
        lines = self.process.lines[since:]
        assert not [x for x in lines if "Traceback" in x], f"{self.name}:\n" + "\n".join(lines)
        bad = [
            e
            for e in map(event, lines)
            if e.get("level") in {"error", "critical"} or "exception" in e
        ]
        assert not bad, f"{self.name} logged errors: {bad!r:.2000}"

    def memory_kib(self, field: str) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith(field + ":"))
        return int(line.split()[1])

    def reset_peak_memory(self) -> None:
        # Writing 5 to clear_refs resets VmHWM (the peak RSS) to the current RSS.
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")


def event(line: str) -> dict[str, Any]:
    try:
        parsed = json.loads(line)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Example]]:
    tmp = tmp_path_factory.mktemp("hostile")
    started: list[Example] = []
    try:
        for name in SERVERS:
            port = free_port()
            env = {
                "HOST": "127.0.0.1",
                "PORT": str(port),
                "ADMIN_HOST": "127.0.0.1",
                "ADMIN_PORT": str(free_port()),
                "STATE_PATH": str(tmp / f"{name}.sqlite"),
            }
            process = ServiceProcess.python(ROOT / "examples" / f"{name}.py", env=env)
            started.append(Example(name, process, port))
        for example in started:
            wait_http(f"http://127.0.0.1:{example.port}/work?ms=0", timeout=HANG_GUARD)
        yield started
    finally:
        for example in started:
            example.process.kill()


def ask(
    examples: list[Example],
    method: str,
    target: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    *,
    alike: bool = True,
) -> Answer:
    """Send the request to every example: none answers 5xx or stops, all answer alike."""
    marks = [len(ex.process.lines) for ex in examples]
    answers = [ex.request(method, target, body, headers) for ex in examples]
    for example, mark, (status, answer) in zip(examples, marks, answers, strict=True):
        assert status < 500, f"{example.name}: {status} {answer!r:.300} for {target} {body!r:.200}"
        assert isinstance(answer, dict), f"{example.name}: not a JSON object: {answer!r:.300}"
        # Only this request's lines: an earlier failure must not fail every later test.
        example.assert_healthy(since=mark)
    if alike:
        assert all(a == answers[0] for a in answers), f"the examples disagree: {answers!r:.600}"
    return answers[0]


def post(examples: list[Example], body: bytes, headers: dict[str, str] | None = None) -> Answer:
    return ask(examples, "POST", "/items", body, headers)


def all_ids(example: Example) -> list[str]:
    """Every id ``example`` stores, read page by page."""
    ids: list[str] = []
    target = "/items?limit=1000"
    while True:
        status, page = ask([example], "GET", target)
        assert status == 200, page
        assert len(page["ids"]) <= 1000
        ids += page["ids"]
        if "next" not in page:
            assert page["count"] == len(ids)
            return ids
        target = f"/items?limit=1000&after={quote(page['next'], safe='')}"


# -- what a valid item is (the contract in the examples' docstrings, restated) -------------


def valid_id(value: object) -> bool:
    return (
        isinstance(value, str)
        and 1 <= len(value) <= MAX_ID_CHARS
        and not any(c < "\x20" or "\x7f" <= c <= "\x9f" or "\ud800" <= c <= "\udfff" for c in value)
    )


def clean(value: object) -> bool:
    """No lone surrogate in any string, no NaN or infinity: I-JSON."""
    if isinstance(value, str):
        return not any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(clean(v) for v in value)
    if isinstance(value, dict):
        return all(clean(k) and clean(v) for k, v in value.items())
    return True


def acceptable(value: object) -> bool:
    return isinstance(value, dict) and "id" in value and valid_id(value["id"]) and clean(value)


any_text = st.text(st.characters(exclude_categories=()), max_size=40)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats()
    | any_text
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=16,
)
ids = (
    json_values
    | st.text(st.characters(exclude_categories=()), min_size=1, max_size=MAX_ID_CHARS + 20)
    | st.sampled_from(["", "1", "None", "a" * MAX_ID_CHARS, "a" * (MAX_ID_CHARS + 1), "x\x00y"])
)
items = st.builds(lambda i, rest: {**rest, "id": i}, ids, st.dictionaries(any_text, json_values))


def encode(value: object, ascii_only: bool) -> bytes:
    # ensure_ascii escapes a lone surrogate as \\udxxx (valid JSON syntax); without it the
    # surrogate goes out as the 3 bytes UTF-8 forbids.
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


# -- POST /items -----------------------------------------------------------------------------


@hostile
@given(value=items | json_values, ascii_only=st.booleans())
def test_any_json_body_is_stored_or_refused_with_400(
    examples: list[Example], value: object, ascii_only: bool
) -> None:
    """A JSON object with a valid string id is stored (200, the id back); anything else is
    400 with an error, whatever the values: lone surrogates, NaN, numbers or null as ids."""
    status, answer = post(examples, encode(value, ascii_only))
    if isinstance(value, dict) and acceptable(value):
        assert (status, answer) == (200, {"id": value["id"]})
    else:
        assert status == 400
        assert set(answer) == {"error"}


@hostile
@given(
    body=st.binary(max_size=2048),
    content_type=st.sampled_from(["application/json", "text/plain", "multipart/form-data", ""]),
)
def test_random_bytes_are_never_a_500(
    examples: list[Example], body: bytes, content_type: str
) -> None:
    """Whatever the bytes and the declared type, the answer is the body's own verdict."""
    status, answer = post(examples, body, {"Content-Type": content_type} if content_type else None)
    assert status in {200, 400}, answer


@hostile
@given(
    depth=st.integers(min_value=1, max_value=100_000) | st.integers(min_value=55, max_value=75),
    opener=st.sampled_from([("[", "]"), ('{"a":', "}")]),
    wrapped=st.booleans(),
)
def test_deep_nesting_is_400_not_a_recursion_error(
    examples: list[Example], depth: int, opener: tuple[str, str], wrapped: bool
) -> None:
    """Up to 64 levels (the item itself is one) are stored; deeper is 400, at every depth,
    never a RecursionError in the parser, the encoder or the store."""
    nested = opener[0] * depth + "0" + opener[1] * depth
    body = f'{{"id": "deep-{uuid.uuid4()}", "v": {nested}}}' if wrapped else nested
    status, answer = post(examples, body.encode())
    if wrapped and depth + 1 <= MAX_NESTING:
        assert status == 200, answer
    else:
        assert status == 400, answer
        assert "nested more than 64 levels" in answer["error"] or not wrapped


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"id": 1}', "a number"),
        (b'{"id": 1.5}', "a number"),
        (b'{"id": null}', "null"),
        (b'{"id": true}', "a boolean"),
        (b'{"id": ["a"]}', "an array"),
        (b'{"id": {"a": 1}}', "an object"),
        (b'{"id": ""}', "empty"),
        (b'{"id": "' + b"x" * 900_000 + b'"}', "longer than"),
        (b'{"id": "victim\\u0000x"}', "control characters"),
        (b'{"id": "a\\u0085b"}', "control characters"),
        (b'{"id": "\\ud800"}', "lone surrogate"),
        (b'{"id": "a", "v": "\\udfff"}', "lone surrogate"),
        (b'{"id": "a", "id": "b"}', "twice"),
        (b'{"id": "a", "v": NaN}', "NaN"),
        (b'{"id": "a", "v": 1e999}', "not valid JSON"),
        (b'{"id": "a", "v": ' + b"9" * 5000 + b"}", "not valid JSON"),
        (b'{"id": "\xff"}', "not UTF-8"),
        (b"\xfe\xff\x00{", "not UTF-8"),
        (b'"id"', "a string"),
        (b"[]", "an array"),
        (b"{}", "missing"),
        (b"", "not valid JSON"),
    ],
)
def test_what_is_refused_and_why(examples: list[Example], body: bytes, reason: str) -> None:
    status, answer = post(examples, body)
    assert status == 400, answer
    assert reason in answer["error"]


def test_ids_of_other_types_never_name_a_string_id(examples: list[Example]) -> None:
    """``{"id": "1"}`` then ``{"id": 1}``: the second is 400, "1" is stored once, and
    nothing became ``"1"``, ``"None"`` or ``"True"``."""
    before = [all_ids(example) for example in examples]
    assert post(examples, b'{"id": "1"}') == (200, {"id": "1"})
    for other in (b"1", b"1.0", b"null", b"true", b'["1"]'):
        status, _ = post(examples, b'{"id": ' + other + b"}")
        assert status == 400
    assert post(examples, b'{"id": "1", "again": true}') == (200, {"id": "1"})
    for example, ids_before in zip(examples, before, strict=True):
        after = all_ids(example)
        assert len(after) == len(set(after))
        assert set(after) - set(ids_before) <= {"1"}
        assert "1" in after


def test_an_item_over_the_stores_limit_is_refused_alone(examples: list[Example]) -> None:
    """A body under 1 MiB whose numbers grow when stored (1e9 is 1000000000.0): 400 or 200,
    and the writes beside it are not failed with it."""
    numbers = b",".join([b"1e9"] * ((MAX_BODY - 100) // 4))
    big = b'{"id": "grows-' + uuid.uuid4().hex.encode() + b'", "v": [' + numbers + b"]}"
    assert len(big) <= MAX_BODY
    with ThreadPoolExecutor(4) as pool:
        small = [f'{{"id": "beside-{uuid.uuid4()}"}}'.encode() for _ in range(3)]
        futures = [pool.submit(post, examples, b) for b in [big, *small]]
        answers = [f.result() for f in futures]
    assert answers[0][0] in {200, 400}, answers[0]
    assert all(status == 200 for status, _ in answers[1:]), answers


# -- huge bodies ---------------------------------------------------------------------------


def post_huge(port: int, size: int, *, chunked: bool) -> tuple[int, int]:
    """POST ``size`` bytes, stopping as soon as an answer arrives (as curl does).

    Returns:
        The status, and how many body bytes were sent before the answer came.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD) as sock:
        framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
        sock.sendall(f"POST /items HTTP/1.1\r\nHost: x\r\n{framing}\r\n\r\n".encode())
        chunk = b"[" * 65536
        frame = b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk
        sent = 0
        while sent < size:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(frame)
            except OSError:
                break  # the server closed its side after answering
            sent += len(chunk)
        response = http.client.HTTPResponse(sock)
        response.begin()
        response.close()
        return response.status, sent


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_32_mb_post_is_refused_early_with_bounded_memory(
    examples: list[Example], chunked: bool
) -> None:
    """The answer is 413 before the upload ends, and the peak memory of the service grows by
    far less than the body (the ASGI example used to hold it all, and copy it per chunk)."""
    size = 32 * 1024 * 1024
    for example in examples:
        mark = len(example.process.lines)
        example.reset_peak_memory()
        rss_before = example.memory_kib("VmRSS")
        status, sent = post_huge(example.port, size, chunked=chunked)
        growth_kib = example.memory_kib("VmHWM") - rss_before
        assert status == 413, example.name
        assert sent < size, f"{example.name}: the whole body was read before the answer"
        assert growth_kib < 16 * 1024, f"{example.name}: peak RSS grew {growth_kib} KiB"
        example.assert_healthy(since=mark)


def test_a_body_just_over_the_limit_is_413_at_the_limit_200(examples: list[Example]) -> None:
    pad = b'{"id": "at-limit-' + uuid.uuid4().hex.encode() + b'", "pad": "'
    at_limit = pad + b"x" * (MAX_BODY - len(pad) - 2) + b'"}'
    assert len(at_limit) == MAX_BODY
    assert post(examples, at_limit)[0] == 200
    status, answer = post(examples, at_limit + b" ")
    assert status == 413, answer


# -- GET /items and GET /work --------------------------------------------------------------


def test_get_items_is_paged(examples: list[Example]) -> None:
    """Over 1000 items: one GET answers 1000 and a cursor; following it gives every id once,
    and ``count`` is the total each time."""
    prefix = uuid.uuid4().hex
    mine = {f"page-{prefix}-{i}" for i in range(1005)}
    bodies = [json.dumps({"id": i}).encode() for i in sorted(mine)]
    with ThreadPoolExecutor(16) as pool:
        assert all(s == 200 for s, _ in pool.map(lambda b: post(examples, b), bodies))
    for example in examples:
        # Concurrent writes land in any order: each example is read on its own.
        status, first = ask([example], "GET", "/items")
        assert status == 200
        assert len(first["ids"]) == 1000
        assert "next" in first
        stored = all_ids(example)
        assert mine <= set(stored)
        assert first["count"] == len(stored) == len(set(stored))
    status, answer = ask(examples, "GET", "/items?limit=1&after=" + quote("no such id"))
    assert status == 400, answer


def query_values() -> st.SearchStrategy[str]:
    return (
        st.text(st.characters(exclude_categories=()), max_size=12)
        | st.integers(min_value=-10, max_value=60).map(str)
        | st.sampled_from(["", "1e3", "\u0663", "\u00b2", "0x10", "+5", " 5", "9" * 3000, "%00"])
    )


def is_whole(raw: str, low: int, high: int) -> bool:
    return raw.isascii() and raw.isdecimal() and len(raw) < 12 and low <= int(raw) <= high


@hostile
@given(ms=query_values())
def test_work_takes_only_a_whole_number_of_ms(examples: list[Example], ms: str) -> None:
    assume(not is_whole(ms, 61, 10**9))  # valid, but slow to wait for
    target = "/work?ms=" + quote(ms, safe="", errors="surrogatepass")
    status, answer = ask(examples, "GET", target)
    if is_whole(ms, 0, 60):
        assert (status, answer) == (200, {"slept_ms": int(ms)})
    else:
        assert status == 400, answer


@hostile
@given(limit=st.none() | query_values(), after=st.none() | query_values())
def test_items_paging_parameters(
    examples: list[Example], limit: str | None, after: str | None
) -> None:
    params = [(k, v) for k, v in (("limit", limit), ("after", after)) if v is not None]
    query = "&".join(f"{k}={quote(v, safe='', errors='surrogatepass')}" for k, v in params)
    status, answer = ask(examples, "GET", "/items?" + query, alike=False)
    if limit is not None and not is_whole(limit, 1, 10_000):
        assert status == 400, answer
    if status == 200:
        assert len(answer["ids"]) <= (int(limit) if limit is not None else 1000)
        assert answer["count"] >= len(answer["ids"])


def test_a_request_line_over_8_kib_is_refused_without_a_traceback(
    examples: list[Example],
) -> None:
    """aiohttp refuses it itself (400, text) and used to log it at ERROR with a traceback;
    uvicorn takes it, and the id in it is too long (400, JSON)."""
    for example in examples:
        mark = len(example.process.lines)
        status, _ = example.request("GET", "/items?after=" + "a" * 9000)
        assert status == 400
        example.assert_healthy(since=mark)


MALFORMED = {
    "content-length-5000-digits": b"POST /items HTTP/1.1\r\nHost: x\r\nContent-Length: "
    + b"9" * 5000
    + b"\r\n\r\n{}",
    "content-length-negative": b"POST /items HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "chunk-size-not-hex": b"POST /items HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\n{}\r\n0\r\n\r\n",
    "header-of-20-kib": b"GET /work HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 20_000 + b"\r\n\r\n",
    "nul-in-a-header": b"GET /work HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "nul-in-the-method": b"G\x00T /work HTTP/1.1\r\nHost: x\r\n\r\n",
    "tls-hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 50 + b"\r\n\r\n",
}


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_http_is_refused_without_a_traceback(examples: list[Example], raw: bytes) -> None:
    """What the HTTP parsers refuse themselves (their own 400, or an answer that ignores a
    header they may skip): never a 5xx, never a traceback (aiohttp logged one per request)."""
    for example in examples:
        mark = len(example.process.lines)
        with socket.create_connection(("127.0.0.1", example.port), timeout=HANG_GUARD) as sock:
            sock.sendall(raw)
            response = http.client.HTTPResponse(sock)
            response.begin()
            response.close()
        assert response.status < 500, example.name
        assert example.request("GET", "/work?ms=0")[0] == 200
        example.assert_healthy(since=mark)


def test_the_services_survived_everything(examples: list[Example]) -> None:
    """Last in the module: both are still up and answer; nothing was logged as an error."""
    assert ask(examples, "GET", "/work?ms=0") == (200, {"slept_ms": 0})
    for example in examples:
        example.assert_healthy()
