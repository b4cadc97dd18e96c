"""The keys of ``[tool.graceful.harness]`` and what each may hold, checked one value at a time.

:mod:`graceful.harness.settings` reads the table and applies the flags; this module says
whether one value (from the table or from a flag) is one the harness can use, and converts a
flag's text to the type the table would hold. Every refusal is a ``ValueError`` whose message
says why; the caller adds the file and key, or the flag.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from graceful.harness.workload import check_path, parse_admin_port

__all__ = [
    "KEYS",
    "MAX_TEXT",
    "PATH_KEYS",
    "RESERVED_ENV",
    "check_value",
    "flag_value",
    "show",
    "toml_type",
]

#: The longest text value accepted.
MAX_TEXT = 8192

Kind = Literal["text", "int", "number", "bool", "admin_port", "pairs", "names"]

#: Every key of the table, with the type of its value. The CLI flag of a key is ``--`` and
#: the key with dashes (``work_url`` → ``--work-url``); the pytest option ``--graceful-``...
KEYS: dict[str, Kind] = {
    "image": "text",
    "build": "text",
    "dockerfile": "text",
    "build_args": "pairs",
    "port": "int",
    "admin_port": "admin_port",
    "work_url": "text",
    "work_path": "text",
    "items_path": "text",
    "write": "text",
    "read": "text",
    "ready_path": "text",
    "stream_path": "text",
    "volume_path": "text",
    "report_event": "text",
    "stop_timeout": "int",
    "startup_timeout": "number",
    "env": "pairs",
    "init": "bool",
    "probe_image": "text",
    "scenarios": "names",
}
#: The keys that hold a request target or a mount path: no control character, no fragment,
#: no ``//`` (a target that names another host), checked when the value is read.
PATH_KEYS = frozenset(
    {"work_url", "work_path", "items_path", "ready_path", "stream_path", "volume_path"}
)
#: Environment variables the harness sets from its own keys: an ``env`` entry for one would
#: silently replace what the harness publishes, waits on and passes (``docker stop -t``).
RESERVED_ENV = {
    "ADMIN_PORT": "admin_port (--admin-port)",
    "PORT": "port (--port)",
    "GRACEFUL_STOP_TIMEOUT": "stop_timeout (--stop-timeout)",
}
_EXPECTED: dict[Kind, str] = {
    "text": "text",
    "int": "an integer",
    "number": "a number of seconds",
    "bool": "true or false",
    "admin_port": 'a port number or "off"',
    "pairs": "a table of names to text",
    "names": "a list of names",
}
_TOML_TYPES = {
    str: "text",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    dict: "a table",
    list: "an array",
}
_RANGES = {"port": (1, 65535), "stop_timeout": (1, 86400), "startup_timeout": (0.1, 86400)}
# What an environment variable name may not hold: "=" ends the name, a control character
# (a newline, NUL) cannot be passed through Docker's KEY=VALUE list intact.
_BAD_NAME = re.compile(r"[=\x00-\x1f\x7f]")


def check_value(key: str, value: object) -> Any:
    """``value`` as key ``key`` holds it (typed as TOML gives it), or ValueError.

    Raises:
        ValueError: the wrong type, text with a NUL or over :data:`MAX_TEXT` characters, a
            path with a control character, or a value the harness cannot use (the message
            says which).
    """
    kind = KEYS[key]
    if kind == "text":
        text = _text(value)
        if key in PATH_KEYS and text:
            check_path(key, text.removeprefix("main:").removeprefix("admin:"))
        return text
    if kind in ("int", "number"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected {_EXPECTED[kind]}, not {toml_type(value)}")
        if kind == "int" and not isinstance(value, int):
            raise ValueError(f"expected {_EXPECTED[kind]}, not {value!r}")
        low, high = _RANGES[key]
        if not low <= value <= high:
            raise ValueError(f"{value!r} is out of range ({low:g} to {high:g})")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, not {toml_type(value)}")
        return value
    if kind == "admin_port":
        # Text is only "off", as port takes only a number: admin_port = "9090" is refused
        # like port = "8080" (a flag's text is converted first, by flag_value).
        off = isinstance(value, str) and _text(value).strip().lower() in ("off", "none")
        if not off and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f'expected a port number or "off", not {toml_type(value)}')
        return "off" if off else parse_admin_port(str(value))
    if kind == "pairs":
        return _pairs(key, value)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of names, not {toml_type(value)}")
    return tuple(_text(v) for v in value)


def _pairs(key: str, value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a table of names to text, not {toml_type(value)}")
    pairs = {}
    for name, item in value.items():
        if isinstance(item, bool | dict | list) or not isinstance(item, str | int | float):
            raise ValueError(f"{show(name)}: expected text, not {toml_type(item)}")
        if not name or _BAD_NAME.search(name):
            raise ValueError(f"{show(name)} is not a variable name")
        if key == "env" and name in RESERVED_ENV:
            raise ValueError(
                f"{name} is set by the harness from {RESERVED_ENV[name]}, which also decides "
                f"what it publishes, polls and waits for: set that instead of env {name}"
            )
        pairs[_text(name)] = _text(str(item))
    return pairs


def flag_value(key: str, raw: object) -> Any:
    """A flag's value as the table would hold it: ``"8080"`` → 8080 for ``port``,
    ``["A=1"]`` → ``{"A": "1"}`` for ``env``, ``["a,b", "c"]`` → ``("a", "b", "c")`` for
    ``scenarios``; None stays None (the flag was not given).

    Raises:
        ValueError: a value the key cannot hold (the message says why).
    """
    if raw is None:
        return None
    kind = KEYS[key]
    if kind == "pairs" and isinstance(raw, list | tuple):
        pairs: dict[str, str] = {}
        for item in raw:
            name, sep, value = str(item).partition("=")
            if not sep or not name:
                raise ValueError(f"{item!r} is not KEY=VALUE")
            pairs[name] = value
        return check_value(key, pairs) if pairs else None
    if kind == "names" and isinstance(raw, list | tuple):
        names = [n.strip() for item in raw for n in str(item).split(",") if n.strip()]
        return check_value(key, names) if names else None
    if kind == "admin_port" and isinstance(raw, str):
        port = parse_admin_port(_text(raw))  # "9090" or "off": a flag's value is text
        return "off" if port is None else check_value(key, port)
    if kind in ("int", "number") and isinstance(raw, str):
        try:
            number: float = int(raw) if kind == "int" else float(raw)
        except ValueError:
            raise ValueError(f"expected {_EXPECTED[kind]}, not {show(raw)}") from None
        return check_value(key, number)
    return check_value(key, raw)


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected text, not {toml_type(value)}")
    if "\x00" in value:
        raise ValueError("holds a NUL character")
    if len(value) > MAX_TEXT:
        raise ValueError(f"{len(value)} characters, more than {MAX_TEXT}")
    return value


def toml_type(value: object) -> str:
    for kind, name in _TOML_TYPES.items():
        if type(value) is kind:
            shown = f" ({show(value)})" if kind in (str, int, float, bool) else ""
            return name + shown
    return type(value).__name__


def show(value: object, limit: int = 40) -> str:
    """``repr(value)``, cut to ``limit`` characters (a hostile value stays readable)."""
    shown = repr(value)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"
