"""Write and read templates: how the harness stores an id in any app and asks for it back.

A template is one line, ``METHOD /path [JSON body]``, with ``{id}`` where the id goes::

    POST /orders {"id": "{id}", "qty": 1}
    GET /orders/{id}

The write is acknowledged when it answers 2xx; the read answers 2xx when the id is stored and
404 when it is not (anything else means the harness cannot tell). In the path ``{id}`` is
percent-encoded; in the body it is JSON-escaped, so it belongs inside a JSON string
(``"{id}"``). A template is checked once, when it is parsed: a known method (ASCII), a path that
starts with ``/`` (not ``//``) without ``#`` or a control character (:func:`target_problem`),
``{id}`` present, no other ``{field}`` in the path, and a body that is valid JSON once ``{id}``
is replaced.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from urllib.parse import quote

__all__ = [
    "CONTROL_CHARS",
    "ID_FIELD",
    "MAX_TEMPLATE_CHARS",
    "METHODS",
    "RequestTemplate",
    "TemplateError",
    "target_problem",
]

#: The placeholder a template must hold.
ID_FIELD = "{id}"
#: The methods a template may use.
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
#: The longest template accepted (a body a writer sends thousands of times stays small).
MAX_TEMPLATE_CHARS = 8192
# An id such as the harness writes (run id, scenario, counter), to check the body with.
_SAMPLE_ID = "0123456789ab-kill-under-load-1"
#: Characters no request target (or mount path) may hold: C0, DEL and C1 controls (CR and LF
#: would end the request line; NEL is a line break to some parsers).
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_FIELD = re.compile(r"\{([^{}]*)\}")


class TemplateError(ValueError):
    """A template that cannot describe a request; the message says why."""


@dataclass(frozen=True, slots=True)
class RequestTemplate:
    """A parsed write or read template.

    Attributes:
        method: the HTTP method, upper case.
        path: the request target, ``{id}`` where the id goes (percent-encoded).
        body: the JSON body, ``{id}`` where the id goes (JSON-escaped); "" for none.

    .. versionadded:: 0.1
    """

    method: str
    path: str
    body: str = ""

    @classmethod
    def parse(cls, text: object, *, what: str = "template") -> RequestTemplate:
        """``'POST /orders {"id": "{id}"}'`` → a template.

        Args:
            text: the template.
            what: how error messages name it (``"--write"``, ``"write"``).

        Raises:
            TemplateError: not a template the harness can send (the message says why and
                shows the expected form).
        """
        example = (  # a read's example is a read: the key or option names which it is
            f"GET /orders/{ID_FIELD}" if "read" in what else f'POST /orders {{"id": "{ID_FIELD}"}}'
        )
        form = f"METHOD /path [JSON body] with {ID_FIELD}, e.g. {example}"
        if not isinstance(text, str):
            raise TemplateError(f"{what}: expected text ({form}), not {type(text).__name__}")
        if len(text) > MAX_TEMPLATE_CHARS:
            raise TemplateError(f"{what}: {len(text)} characters, more than {MAX_TEMPLATE_CHARS}")
        parts = text.strip().split(None, 2)
        if len(parts) < 2:
            raise TemplateError(f"{what} {_show(text)}: expected {form}")
        method, path = parts[0], parts[1]
        body = parts[2].strip() if len(parts) == 3 else ""
        if not method.isascii() or method.upper() not in METHODS:
            raise TemplateError(
                f"{what} {_show(text)}: {_show(method)} is not a method "
                f"({', '.join(sorted(METHODS))})"
            )
        if not path.startswith("/"):
            raise TemplateError(f"{what} {_show(text)}: the path {_show(path)} must start with /")
        problem = target_problem(path)
        if problem:
            raise TemplateError(f"{what} {_show(text)}: the path {problem}")
        others = sorted({f"{{{f}}}" for f in _FIELD.findall(path)} - {ID_FIELD})
        if others:
            raise TemplateError(
                f"{what} {_show(text)}: the path holds {', '.join(others)}; only {ID_FIELD} "
                "is replaced"
            )
        if ID_FIELD not in path and ID_FIELD not in body:
            raise TemplateError(f"{what} {_show(text)}: no {ID_FIELD} in it; expected {form}")
        template = cls(method.upper(), path, body)
        if body:
            try:
                json.loads(template.body_for(_SAMPLE_ID), parse_constant=_no_constant)
            except ValueError as exc:
                raise TemplateError(
                    f"{what} {_show(text)}: the body is not valid JSON once {ID_FIELD} is "
                    f"replaced by an id ({exc}); put {ID_FIELD} inside a JSON string: "
                    f'{{"id": "{ID_FIELD}"}}'
                ) from None
        return template

    def target_for(self, item_id: str) -> str:
        """The request target for ``item_id`` (percent-encoded in the path)."""
        return self.path.replace(ID_FIELD, quote(item_id, safe=""))

    def body_for(self, item_id: str) -> str:
        """The body for ``item_id`` (JSON-escaped); "" for none."""
        return self.body.replace(ID_FIELD, json.dumps(item_id)[1:-1])

    def describe(self) -> str:
        """The template as written: ``POST /orders {"id": "{id}"}``."""
        return f"{self.method} {self.path}" + (f" {self.body}" if self.body else "")


def target_problem(target: str) -> str:
    """Why ``target`` cannot be sent as the request target it is meant to be ("" when it
    can): a control character (CR or LF would end the request line), a leading ``//`` (a
    client reads ``//host/path`` as another host) or a ``#`` (what follows is a fragment,
    never sent: ``POST /orders#{id}`` would post every id to ``/orders``).

    .. versionadded:: 0.1
    """
    if CONTROL_CHARS.search(target):
        return "holds a control character"
    if target.startswith("//"):
        return "starts with //, which names a host (//host/path), not a path on the service"
    if "#" in target:
        return "holds #: what follows is a fragment, which is never sent to the service"
    return ""


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _show(text: str, limit: int = 60) -> str:
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"
