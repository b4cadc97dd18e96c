"""How ``graceful serve`` serves an app: uvicorn's option names, each also from the environment.

Precedence as everywhere in graceful: command line > environment > default. The defaults are
uvicorn's except ``host``: a server in a container must listen on every interface to be
reached through a published port, and ``graceful serve`` is made to be a container's ``CMD``;
pass ``--host 127.0.0.1`` (or ``HOST=127.0.0.1``) on a laptop to keep it private.

The stop budget, the admin server, the loop and the log settings are ``graceful.Config``'s
(``GRACEFUL_STOP_TIMEOUT``, ``ADMIN_PORT``, ...); ``--loop`` and ``--log-level`` are kept here
too because uvicorn users pass them to the server, and :meth:`ServeOptions.config_overrides`
hands them on to the ``Config``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from graceful.environment import from_environment
from graceful.exceptions import ConfigError

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "SERVE_ENV_VARS", "ServeOptions"]

#: Every interface: what a container needs (uvicorn's default, 127.0.0.1, is unreachable
#: through a published port).
DEFAULT_HOST = "0.0.0.0"
#: uvicorn's default port, so a ``uvicorn app:app`` image's ``EXPOSE 8000`` keeps working.
DEFAULT_PORT = 8000

#: Environment variable of each option. ``PORT``, ``HOST``, ``WEB_CONCURRENCY`` and
#: ``FORWARDED_ALLOW_IPS`` are the names platforms, uvicorn and gunicorn already use.
SERVE_ENV_VARS: dict[str, str] = {
    "host": "HOST",
    "port": "PORT",
    "uds": "GRACEFUL_UDS",
    "fd": "GRACEFUL_FD",
    "workers": "WEB_CONCURRENCY",
    "worker_start": "GRACEFUL_WORKER_START",
    "lifespan": "GRACEFUL_LIFESPAN",
    "root_path": "GRACEFUL_ROOT_PATH",
    "proxy_headers": "GRACEFUL_PROXY_HEADERS",
    "forwarded_allow_ips": "FORWARDED_ALLOW_IPS",
    "limit_concurrency": "GRACEFUL_LIMIT_CONCURRENCY",
    "backlog": "GRACEFUL_BACKLOG",
    "timeout_keep_alive": "GRACEFUL_TIMEOUT_KEEP_ALIVE",
    "access_log": "GRACEFUL_ACCESS_LOG",
    "factory": "GRACEFUL_FACTORY",
    "app_dir": "GRACEFUL_APP_DIR",
}

Lifespan = Literal["auto", "on", "off"]
LoopName = Literal["auto", "asyncio", "uvloop"]
WorkerStartMode = Literal["fork", "preload", "spawn"]

_LIFESPANS = ("auto", "on", "off")
_LOOPS = ("auto", "asyncio", "uvloop")
_WORKER_STARTS = ("fork", "preload", "spawn")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_INTS = ("port", "fd", "workers", "limit_concurrency", "backlog", "timeout_keep_alive")
_BOOLS = ("proxy_headers", "access_log", "factory")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
#: Upper bounds that catch typos (a worker per core; backlog is capped by somaxconn anyway).
_MAX = {"workers": 1024, "backlog": 65535, "timeout_keep_alive": 86400, "fd": 1 << 20}


@dataclass(frozen=True, slots=True, kw_only=True)
class ServeOptions:
    """Options of ``graceful serve``, named as uvicorn's where they mean the same.

    Args:
        host: address to bind (default ``0.0.0.0``: see the module docs).
        port: port to bind; 0 picks a free one.
        uds: bind a Unix domain socket at this path instead of host and port.
        fd: serve on this already listening socket (a file descriptor) instead.
        workers: worker processes; more than 1 runs a supervisor (``WEB_CONCURRENCY``).
        worker_start: how the supervisor starts a worker (``GRACEFUL_WORKER_START``):
            ``"fork"`` (default) forks it from a zygote that imported graceful and the
            server, then the worker imports the app; ``"preload"`` forks it from a zygote that
            imported the app too (the app must not start threads or open sockets at import);
            ``"spawn"``, a fresh interpreter per worker. See ``docs/workers.md``.
        loop: ``"auto"``, ``"asyncio"`` or ``"uvloop"``; ``None`` keeps the Config's
            (``GRACEFUL_LOOP``).
        lifespan: ASGI lifespan events: ``"auto"``, ``"on"`` or ``"off"``.
        root_path: ASGI ``root_path`` for an app mounted below a URL prefix.
        proxy_headers: trust ``X-Forwarded-Proto``/``-For`` from ``forwarded_allow_ips``.
        forwarded_allow_ips: addresses trusted for proxy headers (comma separated, ``*``
            for all); ``None``: ``FORWARDED_ALLOW_IPS`` or ``127.0.0.1``, as uvicorn.
        log_level: ``"debug"``, ``"info"``, ``"warning"`` or ``"error"``; ``None`` keeps the
            Config's (``GRACEFUL_LOG_LEVEL``).
        limit_concurrency: answer 503 beyond this many concurrent connections and tasks.
        backlog: listen backlog.
        timeout_keep_alive: seconds an idle keep-alive connection is kept while serving.
        access_log: one log line per request (method, path, status, duration).
        factory: the target is a function returning the app.
        app_dir: directory searched first for the target's module.

    Only ``host``, ``port``, ``uds``, ``fd``, ``backlog``, ``timeout_keep_alive`` and
    ``access_log`` apply to an aiohttp app; the others are ASGI (uvicorn) settings.

    Raises:
        ConfigError: a value cannot work; the message names the option (or the variable it
            came from) and the value.

    .. versionadded:: 0.1
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    uds: str | None = None
    fd: int | None = None
    workers: int = 1
    worker_start: WorkerStartMode = "fork"
    loop: LoopName | None = None
    lifespan: Lifespan = "auto"
    root_path: str = ""
    proxy_headers: bool = True
    forwarded_allow_ips: str | None = None
    log_level: str | None = None
    limit_concurrency: int | None = None
    backlog: int = 2048
    timeout_keep_alive: int = 5
    access_log: bool = True
    factory: bool = False
    app_dir: str = "."

    def __post_init__(self) -> None:
        _validate(self._values(), lambda name: f"{name}={getattr(self, name)!r}")

    def _values(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def config_overrides(self) -> dict[str, str]:
        """The ``graceful.Config`` settings given here (``loop``, ``log_level``), if any."""
        given = {"loop": self.loop, "log_level": self.log_level}
        return {name: value for name, value in given.items() if value is not None}

    @property
    def address(self) -> str:
        """Where the server listens, for logs: ``http://host:port``, ``unix:PATH``, ``fd:N``."""
        if self.fd is not None:
            return f"fd:{self.fd}"
        if self.uds is not None:
            return f"unix:{self.uds}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServeOptions:
        """Options from the environment (``SERVE_ENV_VARS``), explicit overrides winning.

        Args:
            environ: the environment to read; ``os.environ`` when omitted.
            **overrides: option values that win over the environment (the command line).

        Raises:
            ConfigError: a variable or an override holds a value that cannot work; the
                message names it.

        .. versionadded:: 0.1
        """
        return from_environment(
            cls,
            SERVE_ENV_VARS,
            environ=environ,
            overrides=overrides,
            parse=_parse,
            validate=_validate,
            noun="option",
        )


def _parse(name: str, raw: str, label: str) -> Any:
    """One environment value as the option's type; ``label`` names the variable and value."""
    if name in _INTS:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{label} is not a whole number") from None
    if name in _BOOLS:
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ConfigError(f"{label} is not a yes/no value (1, true, yes, on / 0, false, no, off)")
    if name in ("lifespan", "worker_start"):
        return raw.lower()
    return raw


def _validate(values: Mapping[str, Any], label: Callable[[str], str]) -> None:
    """Check every option; ``label(name)`` names one in an error (variable or option)."""
    for name in _INTS:
        value = values[name]
        if value is None and name in ("fd", "limit_concurrency"):
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{label(name)} is not a whole number")
        low = 0 if name in ("port", "fd", "timeout_keep_alive") else 1
        high = 65535 if name == "port" else _MAX.get(name, 1 << 31)
        if not low <= value <= high:
            raise ConfigError(f"{label(name)} is out of range ({low} to {high})")
    for name in _BOOLS:
        if not isinstance(values[name], bool):
            raise ConfigError(f"{label(name)} is not true or false")
    _check_choice(label("lifespan"), values["lifespan"], _LIFESPANS)
    _check_choice(label("worker_start"), values["worker_start"], _WORKER_STARTS)
    if values["loop"] is not None:
        _check_choice(label("loop"), values["loop"], _LOOPS)
    if values["log_level"] is not None:
        _check_choice(label("log_level"), values["log_level"], _LOG_LEVELS)
    if not isinstance(values["host"], str) or not values["host"].strip():
        raise ConfigError(f"{label('host')} is not an address")
    root_path = values["root_path"]
    if not isinstance(root_path, str) or (root_path and not root_path.startswith("/")):
        raise ConfigError(f"{label('root_path')} must be empty or start with '/'")
    if values["uds"] is not None and values["fd"] is not None:
        raise ConfigError(f"{label('uds')} and {label('fd')}: choose one way to listen")
    for name in ("uds", "forwarded_allow_ips", "app_dir"):
        value = values[name]
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(f"{label(name)} must not be empty")


def _check_choice(label: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{label} must be one of {', '.join(choices)}")
