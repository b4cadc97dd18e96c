"""The ``graceful`` command.

::

    graceful serve module:attr      serve an ASGI app (FastAPI, Starlette) or an aiohttp app
    graceful run module:attr        serve an ``async def main(runtime)`` or a Runtime
    graceful config                 show the effective settings and the stop budget
    graceful probe livez|readyz     exit 0 when the admin endpoint answers 200 (HEALTHCHECK)
    graceful harness run|list|clean prove on a Docker engine that an image stops correctly
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import socket
import sys
from collections.abc import Sequence
from dataclasses import fields
from typing import Any, NoReturn

from graceful import __version__
from graceful.budget import Budget
from graceful.config import ENV_VARS, Config
from graceful.exceptions import ConfigError
from graceful.probe import DEFAULT_ADMIN_PORT, probe
from graceful.runtime import Runtime
from graceful.serve.app import serve_target
from graceful.serve.options import DEFAULT_HOST, DEFAULT_PORT, SERVE_ENV_VARS, ServeOptions
from graceful.serve.stopping import StopDeadlines, worker_config
from graceful.serve.target import (
    import_from_string,
    load_guarded,
    load_target,
    web_app_kind,
)
from graceful.signals import StartupSignals
from graceful.status import ExitCode
from graceful.swarm_settings import swarm_lines, swarm_settings

__all__ = ["import_target", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``graceful`` command; returns the exit code.

    .. versionadded:: 0.1
    """
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        message = f"unrecognized arguments: {' '.join(unknown)}"
        if args.command == "harness":
            parser.error(message)
        # Name the command whose --help lists the options (the top level's does not).
        _Parser(prog=f"graceful {args.command}").error(message)
    if args.command == "serve":
        return _serve(args)
    if args.command == "run":
        return _run(parser, args)
    StartupSignals.take(())  # the other commands stop on no signal: the defaults apply
    if args.command == "config":
        return _config(args)
    if args.command == "probe":
        return probe(args.endpoint, args.host, args.port, args.timeout)
    try:
        from graceful.harness import cli as harness_cli
        from graceful.harness import load  # noqa: F401  (the extra's modules are importable)
    except ImportError as exc:
        print(
            f"graceful harness needs the harness extra (missing module {exc.name!r}): "
            "pip install 'graceful-stop[harness]'",
            file=sys.stderr,
        )
        return 2
    return harness_cli.main(args)


class _Parser(argparse.ArgumentParser):
    """A bad option is an invalid setting: one line and exit 1, as for a bad environment
    variable (the README's exit codes). ``graceful harness`` keeps argparse's usage and 2: it
    exits 2 whenever it could not run."""

    def error(self, message: str) -> NoReturn:
        if self.prog.startswith("graceful harness"):
            self.print_usage(sys.stderr)
            self.exit(2, f"{self.prog}: error: {message}\n")
        # One line, as every other startup error: a container's log is read line by line.
        self.exit(int(ExitCode.ERROR), f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="graceful",
        description="Containerized asyncio services that stop correctly.",
    )
    parser.add_argument("--version", action="version", version=f"graceful {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    _add_serve(sub)

    run = sub.add_parser(
        "run",
        help="serve `async def main(runtime)` (or a Runtime) from module:attr",
        description="Import module:attr and serve it under the graceful runtime. The target "
        "is an `async def main(runtime)` or a graceful.Runtime with its hooks registered. "
        "Settings come from the environment (GRACEFUL_STOP_TIMEOUT, ...); options win.",
    )
    run.add_argument("target", metavar="module:attr")
    _add_stop_options(run)

    config = sub.add_parser(
        "config",
        help="show the effective settings and how the stop budget splits",
        description="Read the settings from the environment, validate them, and print them "
        "with the phase deadlines of a stop. Exit 1 when a setting is invalid.",
    )
    config.add_argument("--json", action="store_true", help="print JSON")
    config.add_argument(
        "--workers",
        type=int,
        help="plan the stop of `graceful serve --workers N` [WEB_CONCURRENCY; 1]",
    )

    probe = sub.add_parser(
        "probe",
        help="exit 0 when an admin endpoint answers 200 (for HEALTHCHECK)",
        description="GET http://ADMIN_HOST:ADMIN_PORT/<endpoint> directly (proxy variables "
        "are ignored; 0.0.0.0 and :: are probed on loopback); exit 0 on 200, 1 otherwise.",
    )
    probe.add_argument("endpoint", choices=["livez", "readyz"])
    probe.add_argument("--host", help="admin address (default: ADMIN_HOST or 127.0.0.1)")
    probe.add_argument(
        "--port", type=_port, help=f"admin port (default: ADMIN_PORT or {DEFAULT_ADMIN_PORT})"
    )
    probe.add_argument("--timeout", type=_seconds, default=2.0, help="seconds (default: 2)")

    harness = sub.add_parser(
        "harness",
        help="prove on a real Docker engine that an image stops correctly",
        description="Run docker stop / docker kill scenarios under load against an image "
        "and report verdicts a CI can act on.",
    )
    try:
        from graceful.harness import cli as harness_cli

        harness_cli.add_arguments(harness)
    except ImportError:  # the harness extra is not installed: `main` explains
        harness.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def _add_stop_options(parser: argparse.ArgumentParser | Any) -> None:
    """graceful's own options, shared by ``run`` and ``serve`` (each also an env variable)."""
    parser.add_argument(
        "--stop-timeout",
        type=float,
        help="seconds between SIGTERM and SIGKILL [GRACEFUL_STOP_TIMEOUT; default 10]",
    )
    parser.add_argument(
        "--delay", type=float, help="propagation delay after /readyz turns 503 [GRACEFUL_DELAY]"
    )
    parser.add_argument(
        "--admin-port", type=int, help="port of /livez, /readyz, /metrics [ADMIN_PORT; none]"
    )
    parser.add_argument(
        "--admin-host", help="address of the admin server [ADMIN_HOST; default 127.0.0.1]"
    )


def _stop_overrides(args: argparse.Namespace) -> dict[str, Any]:
    given = {
        "stop_timeout": args.stop_timeout,
        "delay": args.delay,
        "admin_port": args.admin_port,
        "admin_host": args.admin_host,
    }
    return {name: value for name, value in given.items() if value is not None}


def _add_serve(sub: Any) -> None:
    serve = sub.add_parser(
        "serve",
        help="serve an ASGI app (FastAPI, Starlette) or an aiohttp Application from module:attr",
        description="Import module:attr and serve it under the graceful runtime: an ASGI app "
        "on uvicorn, an aiohttp.web.Application on aiohttp (told apart by the object). Options "
        "are uvicorn's where they mean the same; each also comes from the environment variable "
        "in brackets; the command line wins. A target that cannot be served is one line on "
        "stderr and exit code 1.",
    )
    serve.add_argument("target", metavar="module:attr")
    server = serve.add_argument_group("server (uvicorn's names)")
    env = SERVE_ENV_VARS
    server.add_argument(
        "--host",
        help=f"address to bind [{env['host']}; default {DEFAULT_HOST}, every interface, "
        "as a container needs (uvicorn: 127.0.0.1)]",
    )
    server.add_argument(
        "--port", type=int, help=f"port to bind [{env['port']}; default {DEFAULT_PORT}]"
    )
    server.add_argument("--uds", help=f"bind a Unix domain socket at this path [{env['uds']}]")
    server.add_argument(
        "--fd", type=int, help=f"serve on this listening socket's descriptor [{env['fd']}]"
    )
    server.add_argument(
        "--workers", type=int, help=f"worker processes [{env['workers']}; default 1]"
    )
    server.add_argument(
        "--worker-start",
        choices=["fork", "preload", "spawn"],
        help=f"how workers start [{env['worker_start']}; default fork: forked from a "
        "process that imported graceful and the server; preload: and the app; spawn: fresh]",
    )
    server.add_argument(
        "--loop",
        choices=["auto", "asyncio", "uvloop"],
        help="event loop [GRACEFUL_LOOP; default auto: uvloop when installed]",
    )
    server.add_argument(
        "--lifespan",
        choices=["auto", "on", "off"],
        help=f"ASGI lifespan events [{env['lifespan']}; default auto]",
    )
    server.add_argument(
        "--root-path", help=f"ASGI root_path, for an app below a prefix [{env['root_path']}]"
    )
    server.add_argument(
        "--proxy-headers",
        action=argparse.BooleanOptionalAction,
        help="trust X-Forwarded-Proto/-For from --forwarded-allow-ips "
        f"[{env['proxy_headers']}; default on]",
    )
    server.add_argument(
        "--forwarded-allow-ips",
        help=f"addresses trusted for proxy headers, or * [{env['forwarded_allow_ips']}; "
        "default 127.0.0.1]",
    )
    server.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="[GRACEFUL_LOG_LEVEL; default info]",
    )
    server.add_argument(
        "--limit-concurrency",
        type=int,
        help=f"answer 503 beyond this many connections and tasks [{env['limit_concurrency']}]",
    )
    server.add_argument(
        "--backlog", type=int, help=f"listen backlog [{env['backlog']}; default 2048]"
    )
    server.add_argument(
        "--timeout-keep-alive",
        type=int,
        help=f"seconds an idle keep-alive connection is kept [{env['timeout_keep_alive']}; "
        "default 5]",
    )
    server.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        help="one line per request: method, path, status, duration "
        f"[{env['access_log']}; default on]",
    )
    server.add_argument(
        "--factory",
        action="store_true",
        default=None,
        help=f"module:attr is a function that returns the app [{env['factory']}]",
    )
    server.add_argument(
        "--app-dir", help=f"look for the module here first [{env['app_dir']}; default .]"
    )
    _add_stop_options(serve.add_argument_group("graceful"))


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port number (1-65535)")
    return port


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (up to 3600)")
    return seconds


def import_target(target: str) -> Any:
    """Import ``module:attr`` (dots allowed in ``attr``) from the current directory.

    Raises:
        TargetImportError: the form is wrong, or the module or attribute is missing.

    .. versionadded:: 0.1
    """
    return import_from_string(target)


def _serve(args: argparse.Namespace) -> int:
    given = {f.name: getattr(args, f.name) for f in fields(ServeOptions)}
    try:
        options = ServeOptions.from_env(**{k: v for k, v in given.items() if v is not None})
        config = Config.from_env(**{**_stop_overrides(args), **options.config_overrides()})
    except ConfigError as exc:
        return _serve_error(f"configuration error: {_as_option(str(exc))}")
    unresolved = _unresolved_host(options)
    if unresolved is not None:
        return _serve_error(f"configuration error: {unresolved}")
    # From here until the runtime's (or the supervisor's) own handlers, a stop signal is never
    # dropped: it aborts the import, or (after it) starts the stop as soon as there is a stop.
    startup = StartupSignals.take(config.signals if config.handle_signals else ())
    try:
        if options.workers > 1:
            # The supervisor's module is imported only when workers are asked for.
            supervisor: Any = importlib.import_module("graceful.serve.supervisor")
            code: int = supervisor.run_supervisor(args.target, options, config, startup=startup)
            return code
        target = load_guarded(
            args.target,
            lambda: load_target(args.target, factory=options.factory, app_dir=options.app_dir),
            startup,
            command="serve",
            label="graceful serve",
            log_format=config.log_format,
            import_error=_serve_error,
        )
        if isinstance(target, ExitCode):
            return int(target)

        async def main(runtime: Runtime) -> None:
            await serve_target(runtime, target, options)

        runtime = Runtime(config)
        startup.hand_over(runtime)
        return runtime.run(main)
    finally:
        startup.restore()


def _as_option(message: str) -> str:
    """``workers=0 is out of range`` names the option as typed: ``--workers 0 ...``.

    Settings read from the environment are already named by their variable
    (``WEB_CONCURRENCY='abc' ...``); an explicit option's error named the field."""
    field, sep, rest = message.partition("=")
    if not sep or not field.isidentifier() or not field.islower():
        return message
    value, _, why = rest.partition(" ")
    return f"--{field.replace('_', '-')} {value} {why}".rstrip()


def _unresolved_host(options: ServeOptions) -> str | None:
    """Why ``--host``/``HOST`` cannot be listened on, said before the app is imported (the
    server's own error came after the app's startup, naming neither)."""
    if options.fd is not None or options.uds is not None:
        return None
    try:
        socket.getaddrinfo(options.host, options.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        return f"HOST / --host {options.host!r} cannot be resolved: {reason}"
    return None


def _serve_error(message: str) -> int:
    print(f"graceful serve: {message}", file=sys.stderr, flush=True)
    return int(ExitCode.ERROR)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    overrides = _stop_overrides(args)
    try:
        config = Config.from_env(**overrides)
    except ConfigError as exc:
        parser.error(str(exc))
    # As in `serve`: a stop signal aborts a slow import, and is never dropped after it.
    startup = StartupSignals.take(config.signals if config.handle_signals else ())
    try:
        target = load_guarded(
            args.target,
            lambda: import_target(args.target),
            startup,
            command="run",
            label="graceful run",
            log_format=config.log_format,
            import_error=parser.error,
        )
        if isinstance(target, ExitCode):
            return int(target)
        return _run_target(parser, args, target, config, startup)
    finally:
        startup.restore()


def _run_target(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    target: Any,
    config: Config,
    startup: StartupSignals,
) -> int:
    if isinstance(target, Runtime):
        if _stop_overrides(args):
            parser.error("options cannot change a Runtime built in code; use its Config")
        startup.hand_over(target)
        return target.run()
    kind = web_app_kind(target)
    if kind is not None:
        app = "an aiohttp Application" if kind == "aiohttp" else "an ASGI app"
        print(
            f"graceful run: {args.target} is {app}, not an async main(runtime): "
            f"serve it with `graceful serve {args.target}`",
            file=sys.stderr,
        )
        return int(ExitCode.ERROR)
    if not callable(target):
        parser.error(f"{args.target} is neither a Runtime nor an async main(runtime)")
    runtime = Runtime(config)
    startup.hand_over(runtime)
    return runtime.run(target)


def _config(args: argparse.Namespace) -> int:
    try:
        config = Config.from_env()
        overrides = {} if args.workers is None else {"workers": args.workers}
        options = ServeOptions.from_env(**overrides)
        workers = options.workers
    except ConfigError as exc:
        print(f"graceful: configuration error: {exc}", file=sys.stderr)
        return int(ExitCode.ERROR)
    if workers > 1:  # each worker plans to the supervisor's deadline for it
        deadlines = StopDeadlines.plan(config, 0.0)
        budget = Budget.plan(
            worker_config(config), 0.0, exit_by=deadlines.worker_exit_by, log=False
        )
    else:
        budget = Budget.plan(config, 0.0, log=False)
    plan = budget.offsets()
    if workers > 1:
        plan["workers_exit_by_s"] = plan.pop("exit_by_s")
        plan["workers_killed_at_s"] = round(deadlines.kill_at, 4)
        plan["exit_by_s"] = round(deadlines.exit_at, 4)
    plan["sigkill_at_s"] = config.stop_timeout
    if budget.delay_end < config.delay:
        plan = {"delay_asked_s": config.delay, **plan}
    # What the runtime will use: a margin or reserve left unset is derived from stop_timeout.
    settings = {name: getattr(config, name) for name in ENV_VARS}
    settings["margin"] = config.effective_margin
    settings["reserve"] = config.effective_reserve
    derived = {
        "margin": config.margin is None,
        "reserve": config.reserve is None,
    }
    warnings = config.fit_warnings()
    if args.json:
        document = {
            "settings": settings,
            "workers": workers,
            "worker_start": options.worker_start,
            "derived": sorted(name for name, is_derived in derived.items() if is_derived),
            "plan": plan,
            "warnings": warnings,
            "swarm": swarm_settings(config),
        }
        print(json.dumps(document, indent=2))
        return 0
    notes = {
        name: f"(derived from {ENV_VARS['stop_timeout']})" for name in derived if derived[name]
    }
    if config.drain_timeout is None:
        notes["drain_timeout"] = "(no cap: the drain may run until drain_until_s)"
    if config.hook_timeout is None:
        notes["hook_timeout"] = "(no cap: a hook may use what is left of its phase)"
    for name, var in ENV_VARS.items():
        print(f"{var:28} {settings[name]!r}  {notes.get(name, '')}".rstrip())
    if workers > 1:
        print(f"{'WEB_CONCURRENCY':28} {workers!r}  (a supervisor and {workers} workers)")
        print(f"{'GRACEFUL_WORKER_START':28} {options.worker_start!r}  (docs/workers.md)")
    print()
    print("after the stop signal (seconds):")
    for key, value in plan.items():
        print(f"  {key:20} {value:g}")
    print("\n" + "\n".join(swarm_lines(config)))
    for warning in warnings:
        print(f"warning: {warning}")
    return 0
