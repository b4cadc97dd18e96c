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
import json
import re
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from graceful.exceptions import ConfigError
from graceful.harness.table_values import (
    KEYS,
    MAX_TEXT,
    check_value,
    flag_value,
    show,
    toml_type,
)
from graceful.harness.templates import RequestTemplate
from graceful.harness.workload import Workload

if TYPE_CHECKING:
    import argparse
    from typing import TextIO

    from graceful.harness.context import Settings

__all__ = [
    "KEYS",
    "MAX_TEXT",
    "TABLE",
    "HarnessConfig",
    "check_value",
    "checked_from_args",
    "find_pyproject",
    "flag_value",
    "from_args",
    "load",
    "read_table",
    "record_source",
    "resolve",
]

#: The table's name in ``pyproject.toml``.
TABLE = "[tool.graceful.harness]"
# harness run's flags whose name is not the key's (they repeat: one value each).
_FLAG_NAMES = {"scenarios": "scenario", "build_args": "build_arg"}
# Keys that describe one thing together: a flag for one of the first replaces the table's
# second. An image named by a flag drops the table's build (which would rebuild, and so
# overwrite, the very tag the user named), and a build flag the table's image.
_GROUPS = (
    (("work_url", "work_path"), ("work_url", "work_path")),
    (("items_path", "write", "read"), ("items_path", "write", "read")),
    (("image", "build"), ("image", "build", "dockerfile", "build_args")),
)


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
        ConfigError: a ``pyproject.toml`` on the way that cannot be read (a directory, no
            permission, not UTF-8), or that mentions graceful and is not valid TOML: the
            nearest table may be in it, so a table further up is not taken silently instead.
    """
    for directory in (start.resolve(), *start.resolve().parents):
        candidate = directory / "pyproject.toml"
        try:
            if not candidate.exists() and not candidate.is_symlink():
                continue
            text = candidate.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"{candidate}: cannot be read ({exc}); the harness looks for {TABLE} from the "
                "current directory upwards and will not pass over it for a table further up: "
                "fix or remove it, or name the file to use with --config PATH"
            ) from None
        if "graceful" in text and _table_of(_parse(candidate, text)) is not None:
            return candidate
    return None


def read_table(path: Path, *, required: bool = False) -> dict[str, Any] | None:
    """The checked ``[tool.graceful.harness]`` table of ``path`` (None when it has none).

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
        return None
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: {TABLE} must be a table, not {toml_type(table)}")
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in KEYS:
            close = difflib.get_close_matches(key, KEYS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else f"; known: {', '.join(KEYS)}"
            shown = key if re.fullmatch(r"[\w.-]{1,40}", key, re.ASCII) else show(key)
            raise ConfigError(f"{path}: {TABLE} {shown}: unknown key{hint}")
        try:
            out[key] = check_value(key, value)
        except ValueError as exc:
            raise ConfigError(f"{path}: {TABLE} {key}: {exc}") from None
    return out


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
        source: where the table came from (relative ``build`` paths are relative to it);
            None when no table was read.
        prefix: how error messages spell a flag (``--`` and the key with dashes).

    Raises:
        ConfigError: a value, or a combination, the harness cannot use; the message names
            the flag or the file and key it came from.
    """
    given = {k: v for k, v in flags.items() if v is not None}
    chosen: dict[str, Any] = dict(table)
    for flagged, dropped in _GROUPS:
        if any(k in given for k in flagged):
            for k in dropped:
                chosen.pop(k, None)
    for key in ("env", "build_args"):  # a flag adds names (or overrides them), as docker does
        if key in given and key in chosen:
            given[key] = {**chosen[key], **given[key]}
    chosen.update(given)

    def origin(key: str) -> str:
        if key in given:
            flag = _FLAG_NAMES.get(key, key) if prefix == "--" else key
            return f"{prefix}{flag.replace('_', '-')}"
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
    if chosen.get("scenarios"):
        _check_scenarios(chosen["scenarios"], fail)
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
        source=source,
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
        # Only a file that is not there at all may be passed over (required=False): one
        # that is there but cannot be read (a directory, no permission) is an error.
        there = Path(config).exists() or Path(config).is_symlink()
        table = read_table(Path(config), required=required) if required or there else None
    else:
        source = find_pyproject(start if start is not None else Path.cwd())
        table = read_table(source, required=True) if source is not None else None
    if table is None:
        source, table = None, {}
    return resolve(checked, table, source, prefix=prefix)


def from_args(args: argparse.Namespace) -> HarnessConfig:
    """``harness run``/``soak``'s options over the table (``--config``, or the nearest one
    from the current directory upwards), over the defaults.

    Raises:
        ConfigError: an option, a key or a combination it cannot use (the message says which).
    """
    renamed = {"build_args": "build_arg", "scenarios": "scenario"}
    flags = {key: getattr(args, renamed.get(key, key), None) for key in KEYS}
    return load(flags, config=getattr(args, "config", None))


def checked_from_args(args: argparse.Namespace, out: TextIO | None = None) -> HarnessConfig | None:
    """:func:`from_args`, after naming on ``out`` the file it came from, once; None after
    saying on ``out`` (stderr by default) what is wrong (the command then exits 2).
    """
    out = out if out is not None else sys.stderr  # looked up now: a test may replace it
    try:
        config = from_args(args)
    except ConfigError as exc:
        print(f"graceful harness: {exc}", file=out)
        return None
    if config.source is not None:
        print(f"config: {config.source.resolve()} {TABLE}", file=out)
    else:
        print(f"config: none ({TABLE} in no pyproject.toml from {Path.cwd()} up)", file=out)
    if not config.image and not config.build:
        print(
            "graceful harness: --image IMAGE (or --build PATH) is required, or image (or "
            f"build) in {TABLE} of pyproject.toml",
            file=out,
        )
        return None
    return config


def record_source(json_path: str | None, config: HarnessConfig) -> None:
    """Name the ``pyproject.toml`` the run used in its JSON report at ``json_path``, as
    ``"config"`` (its absolute path; null when there was none), after ``"image"``."""
    path = Path(json_path) if json_path else None
    try:
        report = json.loads(path.read_text()) if path is not None else None
    except (OSError, ValueError):
        return  # no report was written (the run could not start): nothing to add to
    if path is None or not isinstance(report, dict):
        return
    named = str(config.source.resolve()) if config.source is not None else None
    report.pop("config", None)
    first = {"image": report.pop("image")} if "image" in report else {}
    path.write_text(json.dumps({**first, "config": named, **report}, indent=2) + "\n")


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
    if fields["admin_port"] is not None and fields["admin_port"] == fields["port"]:
        raise fail(
            ("admin_port", "port"),
            f"the admin port and the main port are both {fields['port']}: one port cannot "
            'serve both (give the admin port its own, or "off" for none)',
        )
    if fields["ready_port"] == "admin" and fields["admin_port"] is None:
        raise fail(
            ("ready_path", "admin_port"),
            "readiness on the admin port, but there is no admin port (it is off)",
        )


def _check_scenarios(
    names: tuple[str, ...], fail: Callable[[tuple[str, ...], str], ConfigError]
) -> None:
    """Every name is a scenario's (opt-in ones included), or the error suggests the closest."""
    # Imported here: the registry brings the engine's client, which a table without
    # scenarios (and the pytest plugin's startup) should not pay for.
    from graceful.harness.scenarios import scenario_names

    known = scenario_names(opt_in=True)
    wanted = [n.strip() for item in names for n in item.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in known]
    if not unknown:
        return
    shown, unmatched = [], False
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        text = name if re.fullmatch(r"[\w.-]{1,40}", name, re.ASCII) else show(name)
        shown.append(f"{text} (did you mean {close[0]}?)" if close else text)
        unmatched = unmatched or not close
    every = f"; known: {', '.join(known)}" if unmatched else ""
    raise fail(("scenarios",), f"unknown scenario {', '.join(shown)}{every}")


def _parse(path: Path, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def _table_of(document: Mapping[str, Any]) -> object:
    tool = document.get("tool")
    graceful = tool.get("graceful") if isinstance(tool, dict) else None
    return graceful.get("harness") if isinstance(graceful, dict) else None
