"""Settings from the environment: the one way every settings class reads its variables.

Precedence everywhere: an explicit value (argument, command line) > the environment > the
default. A value that cannot work fails at startup with a message naming where it came from:
``GRACEFUL_STOP_TIMEOUT='ten' is not a number of seconds``, ``--port=0 ...``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any, Protocol, TypeVar

from graceful.exceptions import ConfigError

__all__ = ["from_environment"]


class _Settings(Protocol):
    def __init__(self, **values: Any) -> None: ...


S = TypeVar("S", bound=_Settings)

#: Turns one variable's text into a field value (``name``, ``raw``, ``label``); type only.
Parse = Callable[[str, str, str], Any]
#: Checks the merged values; ``label(name)`` says where a value came from, for the error.
Validate = Callable[[Mapping[str, Any], Callable[[str], str]], None]


def from_environment(
    cls: type[S],
    variables: Mapping[str, str],
    *,
    environ: Mapping[str, str] | None,
    overrides: Mapping[str, Any],
    parse: Parse,
    validate: Validate,
    noun: str = "setting",
) -> S:
    """Build ``cls`` (a dataclass) from ``variables`` (field → variable), ``overrides`` winning.

    Args:
        cls: the settings dataclass; its defaults fill what neither gives.
        variables: the environment variable of each field read from it.
        environ: the environment; ``os.environ`` when ``None``.
        overrides: explicit values, which win over the environment.
        parse: one variable's text as the field's type.
        validate: checks every value, naming its source through the label it is given.
        noun: what an unknown override is called in the error (``setting``, ``option``).

    Raises:
        ConfigError: an unknown override, or a value that cannot work (named).
    """
    environ = os.environ if environ is None else environ
    unknown = set(overrides) - {f.name for f in fields(cls)}  # type: ignore[arg-type]
    if unknown:
        raise ConfigError(f"unknown {noun}(s): {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}  # field -> "VARIABLE='raw value'"
    for name, var in variables.items():
        raw = environ.get(var, "")
        if not raw.strip() or name in overrides:
            continue
        sources[name] = f"{var}={raw!r}"  # as set: a stray control character shows
        values[name] = parse(name, raw.strip(), sources[name])
    values.update(overrides)
    defaults = {f.name: getattr(cls(), f.name) for f in fields(cls)}  # type: ignore[arg-type]
    merged = {**defaults, **values}

    def label(name: str) -> str:
        if name in sources:
            return sources[name]
        if name in values:
            return f"{name}={values[name]!r}"
        return f"{variables.get(name, name)} (default {defaults[name]!r})"

    # Validated before construction, so that an error names the variable a value came from
    # (construction would name the field).
    validate(merged, label)
    return cls(**values)
