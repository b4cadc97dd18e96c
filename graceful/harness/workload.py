"""The HTTP contract the harness drives an image through: ports, paths and URL templates.

The defaults follow the project's examples (``GET /work?ms=N``, ``/items``, ``/stream``,
``/readyz`` on admin port 9090). Any other app is judged by describing its own endpoints
instead of adding ours: ``--work-url '/slow?s={seconds}'`` for a slow endpoint that reads
whole seconds, ``--ready-path /health`` for readiness on the main port, ``--stream-path
/events`` for its server-sent events, write and read templates for its own store
(``POST /orders {"id": "{id}"}``, ``GET /orders/{id}``), an empty items path when it stores
nothing.

What the image really honours is established by :mod:`graceful.harness.preflight` before any
scenario runs; this module only says what to ask.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Literal

from graceful.harness.templates import CONTROL_CHARS, RequestTemplate, target_problem

__all__ = [
    "ADMIN_PORT_ZERO",
    "GRACEFUL_READY_PATH",
    "WORK_FIELDS",
    "Workload",
    "check_path",
    "parse_admin_port",
]

#: graceful's readiness endpoint, on its admin port.
GRACEFUL_READY_PATH = "/readyz"
#: The fields a work URL template may use.
WORK_FIELDS = frozenset({"ms", "seconds"})

ADMIN_PORT_ZERO = (
    "admin port 0 means a port picked at random when the service starts (as ADMIN_PORT=0 does "
    "in graceful's runtime), which the harness cannot publish: name the port, or say off for "
    "none"
)


def parse_admin_port(text: str) -> int | None:
    """``"9090"`` → 9090; ``"off"`` (or ``"none"``) → None, no admin port.

    Raises:
        ValueError: not a port number or ``off``, or 0 (a random port, see
            :data:`ADMIN_PORT_ZERO`).

    .. versionadded:: 0.1
    """
    value = text.strip().lower()
    if value in ("off", "none"):
        return None
    try:
        port = int(value)
    except ValueError:
        raise ValueError(f"{text!r} is not a port number (or off)") from None
    _check_admin_port(port)
    return port


def check_path(key: str, path: str) -> None:
    """Raise ValueError when ``path`` (the value of ``key``) cannot be what the key says: a
    request target the harness sends (no control character, which would end the request
    line; no ``#``, a fragment is never sent; no leading ``//``, which names another host),
    or for ``volume_path`` a mount point (absolute, not ``/``, no ``:``, which Docker reads
    as mount options).

    .. versionadded:: 0.1
    """
    if key != "volume_path":
        problem = target_problem(path)
        if problem:
            raise ValueError(f"{path!r} {problem}")
        return
    if CONTROL_CHARS.search(path):
        raise ValueError(f"{path!r} holds a control character")
    if not path.startswith("/") or not path.strip("/") or ":" in path:
        raise ValueError(
            f"{path!r} must be an absolute path in the container other than /, without ':' "
            "(Docker reads what follows a ':' as mount options)"
        )


def _check_admin_port(port: int) -> None:
    if port == 0:
        raise ValueError(ADMIN_PORT_ZERO)
    if not 0 < port < 65536:
        raise ValueError(f"admin port {port} is not a TCP port")


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    """Where and how the service under test answers.

    Args:
        port: the HTTP port inside the container.
        admin_port: the admin port inside the container (graceful's ``/readyz``); None when
            there is none. 0 is refused: in graceful's runtime it means a random port.
        work_url: ``GET`` target of a request that takes a given time, a template with
            ``{ms}`` (milliseconds) or ``{seconds}`` (whole seconds are asked for, so an
            endpoint that parses an integer works): ``/work?ms={ms}``, ``/slow?s={seconds}``.
        items_path: ``POST`` stores ``{"id": ...}`` durably (answering ``{"id": ...}``),
            ``GET`` lists ``{"ids": [...]}``; empty when the service stores nothing, which
            turns the write checks off (unless ``write`` and ``read`` are given).
        write: a write template (:mod:`graceful.harness.templates`),
            ``POST /orders {"id": "{id}"}``: acknowledged when it answers 2xx. Given with
            ``read``, it replaces ``items_path``; "" for none.
        read: a read template, ``GET /orders/{id}``: 2xx when the id is stored, 404 when it
            is not; "" for none.
        ready_path: readiness endpoint (200 when ready); None for graceful's ``/readyz`` on
            the admin port (none without an admin port); empty for none. Without one,
            readiness is a short work request answering 2xx.
        ready_port: ``"admin"`` or ``"main"``: which port serves ``ready_path``; None for the
            admin port when there is one, else the main port.
        stream_path: ``GET`` target of a streaming response (SSE or chunked) that stays open
            until the server stops; empty for none (``stop-during-stream`` then does not run).
        volume_path: where the state volume is mounted in the container; empty for none.
        report_event: the log event that summarises a stop (counted to check that a stop runs
            once); empty to skip.

    Raises:
        ValueError: a work URL without ``{ms}`` or ``{seconds}`` (or with another field, or
            a format spec), a path that does not start with ``/`` or that
            :func:`check_path` refuses, admin port 0 or the main port, a write template without a
            read template (or the other way round), a template that does not parse
            (:class:`~graceful.harness.templates.TemplateError`).

    .. versionadded:: 0.1
    """

    port: int = 8080
    admin_port: int | None = 9090
    work_url: str = "/work?ms={ms}"
    items_path: str = "/items"
    write: str = ""
    read: str = ""
    ready_path: str | None = None
    ready_port: Literal["admin", "main"] | None = None
    stream_path: str = "/stream"
    volume_path: str = "/data"
    report_event: str = "shutdown.report"

    def __post_init__(self) -> None:
        if self.admin_port is not None:
            _check_admin_port(self.admin_port)
            if self.admin_port == self.port:
                raise ValueError(
                    f"the admin port and the main port are both {self.port}: one port cannot "
                    "serve both (give the admin port its own, or off for none)"
                )
        _check_work_url(self.work_url)
        for what, path in (
            ("work URL", self.work_url),
            ("items path", self.items_path),
            ("ready path", self.ready_path or ""),
            ("stream path", self.stream_path),
            ("volume path", self.volume_path),
        ):
            if path and not path.startswith("/"):
                raise ValueError(f"{what} {path!r} must start with /")
            if path:
                try:
                    check_path(what.replace(" ", "_"), path)
                except ValueError as exc:
                    raise ValueError(f"{what} {exc}") from None
        if self.ready_port == "admin" and self.admin_port is None:
            raise ValueError("readiness on the admin port, but there is no admin port")
        if bool(self.write) != bool(self.read):
            given, missing = ("write", "read") if self.write else ("read", "write")
            raise ValueError(
                f"a {given} template without a {missing} template: the harness writes ids and "
                'reads them back, so it needs both (write: POST /orders {"id": "{id}"}, '
                "read: GET /orders/{id})"
            )
        if self.write:
            RequestTemplate.parse(self.write, what="write template")
            RequestTemplate.parse(self.read, what="read template")

    @property
    def has_admin(self) -> bool:
        """Whether readiness is graceful's: a ready path on an admin port."""
        return self.ready_on == "admin"

    @property
    def readiness_path(self) -> str:
        """The ready path in effect: the one given, else graceful's ``/readyz`` when there is
        an admin port; "" for none."""
        if self.ready_path is None:
            return GRACEFUL_READY_PATH if self.admin_port is not None else ""
        return self.ready_path

    @property
    def ready_on(self) -> Literal["admin", "main", "work"]:
        """Where readiness is polled: the admin port's or the main port's ready path, or
        (``"work"``) a short work request on the main port."""
        if not self.readiness_path:
            return "work"
        if self.ready_port is not None:
            return self.ready_port
        return "admin" if self.admin_port is not None else "main"

    @property
    def ready_target(self) -> str:
        """The readiness request's target (the ready path, or a work request of 0 ms)."""
        return self.readiness_path or self.work_target(0)

    @property
    def has_items(self) -> bool:
        """Whether the service stores writes the harness can check (an items path, or
        write and read templates)."""
        return bool(self.write) or bool(self.items_path)

    @property
    def write_template(self) -> RequestTemplate | None:
        """The parsed write template; None when writes go to the items path."""
        return RequestTemplate.parse(self.write, what="write template") if self.write else None

    @property
    def read_template(self) -> RequestTemplate | None:
        """The parsed read template; None when stored ids are listed at the items path."""
        return RequestTemplate.parse(self.read, what="read template") if self.read else None

    @property
    def writes_to(self) -> str:
        """How a write is sent, in words: ``POST /items`` or the write template."""
        return self.write or f"POST {self.items_path}"

    @property
    def reads_from(self) -> str:
        """How stored ids are read back, in words: ``GET /items`` or the read template."""
        return self.read or f"GET {self.items_path}"

    @property
    def has_stream(self) -> bool:
        """Whether a streaming endpoint is known."""
        return bool(self.stream_path)

    @property
    def in_seconds(self) -> bool:
        """The work URL asks for whole seconds (``{seconds}``), not milliseconds."""
        return "{seconds}" in self.work_url

    def long_ms(self, ms: int) -> int:
        """A long request's length as the endpoint can be asked for it: for a ``{seconds}``
        template, the nearest whole number of seconds, at least 1."""
        return max(round(ms / 1000), 1) * 1000 if self.in_seconds else ms

    def short_ms(self, ms: int) -> int:
        """A short request's length as the endpoint can be asked for it: 0 for a
        ``{seconds}`` template (a fraction may not parse)."""
        return 0 if self.in_seconds else ms

    def work_target(self, ms: int) -> str:
        """The request target of work that takes ``ms`` milliseconds."""
        seconds = ms // 1000 if ms % 1000 == 0 else ms / 1000
        return self.work_url.format(ms=ms, seconds=seconds)


def _check_work_url(work_url: str) -> None:
    """{ms} or {seconds}, plain: a format spec (``{ms:>99999999}``) or a conversion
    (``{ms!r}``) would make the harness build a different (or huge) target."""
    parsed = list(string.Formatter().parse(work_url))
    fields = {f for _, f, _, _ in parsed if f is not None}
    if not fields & WORK_FIELDS or fields - WORK_FIELDS:
        raise ValueError(
            f"work URL {work_url!r} must hold {{ms}} or {{seconds}} (and no other field), "
            "e.g. /work?ms={ms} or /slow?s={seconds}"
        )
    for _, name, spec, conversion in parsed:
        if name is not None and (spec or conversion):
            extra = f"!{conversion}" if conversion else f":{spec}"
            raise ValueError(
                f"work URL {work_url!r}: {{{name}{extra}}} has a format spec or conversion; "
                f"write {{{name}}} plain"
            )
