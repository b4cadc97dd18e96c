"""One description of the app under test: ``[tool.graceful.harness]`` in its ``pyproject.toml``.

``graceful harness run``/``soak`` (from the current directory upwards, or ``--config PATH``)
and the pytest plugin (the rootdir's ``pyproject.toml``, or ``--graceful-config PATH``) read
the same table through this module, and each key can be overridden by a flag: ``--work-url``
for ``harness run``, ``--graceful-work-url`` for pytest. A flag beats the table, the table
beats the default::

    [tool.graceful.harness]
    image = "orders-api:dev"
    admin_port = "off"
    ready_path = "/health"
    work_url = "/slow?s={seconds}"
    stream_path = ""
    write = 'POST /orders {"id": "{id}"}'
    read = "GET /orders/{id}"
    stop_timeout = 5

An unknown key, a value of the wrong type or one the harness cannot use fails at once, naming
the file and the key (``pyproject.toml: [tool.graceful.harness] wokr_url: unknown key (did you
mean work_url?)``). Relative ``build`` paths are relative to the file's directory.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from graceful.exceptions import ConfigError
from graceful.harness.templates import RequestTemplate
from graceful.harness.workload import Workload, parse_admin_port

if TYPE_CHECKING:
    from graceful.harness.context import Settings

__all__ = [
    "KEYS",
    "MAX_TEXT",
    "TABLE",
    "HarnessConfig",
    "check_value",
    "find_pyproject",
    "flag_value",
    "load",
    "read_table",
    "resolve",
]

#: The table's name in ``pyproject.toml``.
TABLE = "[tool.graceful.harness]"
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
# Keys that describe one thing together: a flag for one of them replaces the table's others.
_GROUPS = (("work_url", "work_path"), ("items_path", "write", "read"))


@dataclass(frozen=True, slots=True, kw_only=True)
class HarnessConfig:
    """Everything a harness run (or the pytest plugin) needs to know about the app under test.

    Attributes:
        workload: the HTTP contract (ports, paths, templates).
        image: the image to test; None when it is to be built (``build``) or not given.
        build: a build context to build the image from (absolute, or relative to the current
            directory when it came from a flag).
        dockerfile: the Dockerfile for ``build``, relative to the context.
        build_args: ``--build-arg`` values for ``build``.
        stop_timeout: ``docker stop -t``, also ``GRACEFUL_STOP_TIMEOUT``.
        startup_timeout: seconds a container may take to become ready.
        env: extra environment for the service.
        init: run under Docker's init.
        probe_image: image with ``python3`` for the connection prober.
        scenarios: the scenarios ``harness run`` runs when none is named; None for the default
            set.
        source: the ``pyproject.toml`` the table was read from; None when none was.

    .. versionadded:: 0.1
    """

    workload: Workload = field(default_factory=Workload)
    image: str | None = None
    build: str | None = None
    dockerfile: str | None = None
    build_args: Mapping[str, str] = field(default_factory=dict)
    stop_timeout: int = 10
    startup_timeout: float = 60.0
    env: Mapping[str, str] = field(default_factory=dict)
    init: bool = False
    probe_image: str | None = None
    scenarios: tuple[str, ...] | None = None
    source: Path | None = None

    def settings(self) -> Settings:
        """The scenarios' :class:`~graceful.harness.context.Settings`."""
        from graceful.harness.context import Settings

        return Settings(
            stop_timeout=self.stop_timeout,
            workload=self.workload,
            env=tuple(self.env.items()),
            startup_timeout=self.startup_timeout,
            probe_image=self.probe_image,
            init=self.init,
        )


def find_pyproject(start: Path) -> Path | None:
    """The nearest ``pyproject.toml`` holding ``[tool.graceful.harness]``, from ``start``
    upwards; None when there is none.

    Raises:
        ConfigError: a ``pyproject.toml`` that mentions graceful is not valid TOML.
    """
    for directory in (start.resolve(), *start.resolve().parents):
        candidate = directory / "pyproject.toml"
        try:
            text = candidate.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if "graceful" in text and _table_of(_parse(candidate, text)) is not None:
            return candidate
    return None


def read_table(path: Path, *, required: bool = False) -> dict[str, Any]:
    """The checked ``[tool.graceful.harness]`` table of ``path`` ({} when it has none).

    Args:
        path: a ``pyproject.toml``.
        required: a missing table is an error (the file was named on purpose).

    Raises:
        ConfigError: the file cannot be read or parsed, the table is missing (``required``),
            or a key is unknown or of the wrong type (the message names the file and key).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc})") from None
    table = _table_of(_parse(path, text))
    if table is None:
        if required:
            raise ConfigError(f"{path}: no {TABLE} table")
        return {}
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: {TABLE} must be a table, not {_toml_type(table)}")
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in KEYS:
            close = difflib.get_close_matches(key, KEYS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else f"; known: {', '.join(KEYS)}"
            shown = key if re.fullmatch(r"[\w.-]{1,40}", key, re.ASCII) else _show(key)
            raise ConfigError(f"{path}: {TABLE} {shown}: unknown key{hint}")
        try:
            out[key] = check_value(key, value)
        except ValueError as exc:
            raise ConfigError(f"{path}: {TABLE} {key}: {exc}") from None
    return out


def check_value(key: str, value: object) -> Any:
    """``value`` as key ``key`` holds it (typed as TOML gives it), or ValueError.

    Raises:
        ValueError: the wrong type, text with a NUL or over :data:`MAX_TEXT` characters, or
            a value the harness cannot use (the message says which).
    """
    kind = KEYS[key]
    if kind == "text":
        return _text(value)
    if kind in ("int", "number"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected {_EXPECTED[kind]}, not {_toml_type(value)}")
        if kind == "int" and not isinstance(value, int):
            raise ValueError(f"expected {_EXPECTED[kind]}, not {value!r}")
        low, high = _RANGES[key]
        if not low <= value <= high:
            raise ValueError(f"{value!r} is out of range ({low:g} to {high:g})")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, not {_toml_type(value)}")
        return value
    if kind == "admin_port":
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(f'expected a port number or "off", not {_toml_type(value)}')
        port = parse_admin_port(_text(value) if isinstance(value, str) else str(value))
        return "off" if port is None else port  # None is "not given"
    if kind == "pairs":
        if not isinstance(value, dict):
            raise ValueError(f"expected a table of names to text, not {_toml_type(value)}")
        pairs = {}
        for name, item in value.items():
            if isinstance(item, bool | dict | list) or not isinstance(item, str | int | float):
                raise ValueError(f"{_show(name)}: expected text, not {_toml_type(item)}")
            if not name or "=" in name or "\x00" in name:
                raise ValueError(f"{_show(name)} is not a variable name")
            pairs[_text(name)] = _text(str(item))
        return pairs
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of names, not {_toml_type(value)}")
    return tuple(_text(v) for v in value)


def resolve(
    flags: Mapping[str, Any], table: Mapping[str, Any], source: Path | None, *, prefix: str = "--"
) -> HarnessConfig:
    """The configuration: each key from ``flags`` when given (not None), else from ``table``
    (read from ``source``), else the default. ``env`` and ``build_args`` flags add to the
    table's names (a flag's value wins for a name in both).

    Args:
        flags: values by key (``work_url``, ...), already checked (:func:`check_value`); None
            when the flag was not given.
        table: the checked table (:func:`read_table`).
        source: where the table came from (relative ``build`` paths are relative to it).
        prefix: how error messages spell a flag (``--`` and the key with dashes).

    Raises:
        ConfigError: a value, or a combination, the harness cannot use; the message names
            the flag or the file and key it came from.
    """
    given = {k: v for k, v in flags.items() if v is not None}
    chosen: dict[str, Any] = dict(table)
    for group in _GROUPS:
        if any(k in given for k in group):
            for k in group:
                chosen.pop(k, None)
    for key in ("env", "build_args"):  # a flag adds names (or overrides them), as docker does
        if key in given and key in chosen:
            given[key] = {**chosen[key], **given[key]}
    chosen.update(given)

    def origin(key: str) -> str:
        if key in given:
            return f"{prefix}{key.replace('_', '-')}"
        return f"{source}: {TABLE} {key}"

    def fail(keys: tuple[str, ...], message: str) -> ConfigError:
        named = [origin(k) for k in keys if k in chosen] or ["the defaults"]
        return ConfigError(f"{' and '.join(named)}: {message}")

    if "work_url" in chosen and "work_path" in chosen:
        raise fail(("work_url", "work_path"), "give one of work_url and work_path")
    if chosen.get("items_path") and (chosen.get("write") or chosen.get("read")):
        raise fail(("items_path", "write", "read"), "give items_path, or write and read")
    defaults = Workload()
    admin_port = chosen.get("admin_port", defaults.admin_port)
    work_url = chosen.get("work_url", defaults.work_url)
    if "work_path" in chosen:
        path = chosen["work_path"]
        work_url = f"{path}{'&' if '?' in path else '?'}ms={{ms}}"
    ready_port: Literal["admin", "main"] | None = None
    ready_path = chosen.get("ready_path")
    for where in ("main", "admin"):
        if ready_path is not None and ready_path.startswith(f"{where}:"):
            ready_port, ready_path = where, ready_path.removeprefix(f"{where}:")
    fields: dict[str, Any] = {
        "port": chosen.get("port", defaults.port),
        "admin_port": None if admin_port == "off" else admin_port,
        "work_url": work_url,
        "items_path": "" if chosen.get("write") else chosen.get("items_path", "/items"),
        "write": chosen.get("write", ""),
        "read": chosen.get("read", ""),
        "ready_path": ready_path,
        "ready_port": ready_port,
        "stream_path": chosen.get("stream_path", defaults.stream_path),
        "volume_path": chosen.get("volume_path", defaults.volume_path),
        "report_event": chosen.get("report_event", defaults.report_event),
    }
    _check_workload(fields, chosen, fail)
    workload = Workload(**fields)
    build = chosen.get("build")
    if build is not None and "build" not in given and source is not None:
        build = str((source.parent / build).resolve())
    return HarnessConfig(
        workload=workload,
        image=chosen.get("image") or None,
        build=build or None,
        dockerfile=chosen.get("dockerfile") or None,
        build_args=dict(chosen.get("build_args", {})),
        stop_timeout=chosen.get("stop_timeout", 10),
        startup_timeout=float(chosen.get("startup_timeout", 60.0)),
        env=dict(chosen.get("env", {})),
        init=bool(chosen.get("init", False)),
        probe_image=chosen.get("probe_image") or None,
        scenarios=chosen.get("scenarios"),
        source=source if table else None,
    )


def load(
    flags: Mapping[str, object],
    *,
    config: str | Path | None = None,
    start: Path | None = None,
    prefix: str = "--",
    required: bool = True,
) -> HarnessConfig:
    """Read the table and apply the flags: what ``harness run`` and the plugin call.

    Args:
        flags: raw flag values by key (:func:`flag_value` converts them; None: not given).
        config: the ``pyproject.toml`` to read (a missing table is then an error); None to
            look for one from ``start`` upwards.
        start: where to look from (the current directory by default).
        prefix: how the flags are spelt before the key with dashes: ``--`` for ``harness
            run``, ``--graceful-`` for pytest (error messages name the flag).
        required: ``config`` must exist and hold the table (False: the pytest rootdir's
            file, which may have neither).

    Raises:
        ConfigError: the file, a key, a flag or a combination the harness cannot use; the
            message names the file and key, or the flag.
    """
    checked: dict[str, Any] = {}
    for key, raw in flags.items():
        try:
            checked[key] = flag_value(key, raw)
        except ValueError as exc:
            raise ConfigError(f"{prefix}{key.replace('_', '-')}: {exc}") from None
    if config is not None:
        source: Path | None = Path(config)
        exists = Path(config).is_file()
        table = read_table(Path(config), required=required) if required or exists else {}
    else:
        source = find_pyproject(start if start is not None else Path.cwd())
        table = read_table(source) if source is not None else {}
    return resolve(checked, table, source, prefix=prefix)


def _check_workload(
    fields: dict[str, Any],
    chosen: Mapping[str, Any],
    fail: Callable[[tuple[str, ...], str], ConfigError],
) -> None:
    """Each workload value on its own, then the combinations, so the error names its keys."""
    for key in ("write", "read"):
        if fields[key]:
            try:
                RequestTemplate.parse(fields[key], what=f"{key} template")
            except ValueError as exc:
                raise fail((key,), str(exc)) from None
    if bool(fields["write"]) != bool(fields["read"]):
        missing = "read" if fields["write"] else "write"
        raise fail(
            ("write", "read"),
            f"{missing} is missing: the harness writes ids and reads them back, so it needs "
            'both (write = \'POST /orders {"id": "{id}"}\', read = "GET /orders/{id}")',
        )
    try:
        Workload(work_url=fields["work_url"])
    except ValueError as exc:
        raise fail(("work_url", "work_path"), str(exc)) from None
    for key in ("items_path", "ready_path", "stream_path", "volume_path"):
        value = fields[key] or ""
        if value and not value.startswith("/"):
            raise fail((key,), f"{value!r} must start with / (or be empty for none)")
    if fields["ready_port"] == "admin" and fields["admin_port"] is None:
        raise fail(
            ("ready_path", "admin_port"),
            "readiness on the admin port, but there is no admin port (it is off)",
        )


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
    if kind in ("int", "number") and isinstance(raw, str):
        try:
            number: float = int(raw) if kind == "int" else float(raw)
        except ValueError:
            raise ValueError(f"expected {_EXPECTED[kind]}, not {_show(raw)}") from None
        return check_value(key, number)
    return check_value(key, raw)


def _parse(path: Path, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def _table_of(document: Mapping[str, Any]) -> object:
    tool = document.get("tool")
    graceful = tool.get("graceful") if isinstance(tool, dict) else None
    return graceful.get("harness") if isinstance(graceful, dict) else None


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected text, not {_toml_type(value)}")
    if "\x00" in value:
        raise ValueError("holds a NUL character")
    if len(value) > MAX_TEXT:
        raise ValueError(f"{len(value)} characters, more than {MAX_TEXT}")
    return value


def _toml_type(value: object) -> str:
    for kind, name in _TOML_TYPES.items():
        if type(value) is kind:
            shown = f" ({_show(value)})" if kind in (str, int, float, bool) else ""
            return name + shown
    return type(value).__name__


def _show(value: object, limit: int = 40) -> str:
    shown = repr(value)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"
