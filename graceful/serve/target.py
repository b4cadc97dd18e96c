"""Find the app ``graceful serve module:attr`` serves, and tell what kind of app it is.

The kind is read from the object: an ``aiohttp.web.Application`` is served by aiohttp, any
other callable that takes ``(scope, receive, send)`` is an ASGI app served by uvicorn
(FastAPI, Starlette, plain ASGI). A target that is not one (a missing module or attribute, a
number, an app factory without ``--factory``, an ``async def main(runtime)``) is a
:class:`~graceful.TargetImportError` whose message is one line that says what to do.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from graceful.exceptions import TargetImportError
from graceful.logs import exception_dicts, last_line, writes_json
from graceful.runtime import Runtime
from graceful.signals import LoadingStopped, StartupSignals
from graceful.status import ExitCode

__all__ = [
    "AppKind",
    "Target",
    "failed_to_load",
    "import_from_string",
    "load_guarded",
    "load_target",
    "report_failed_to_load",
    "web_app_kind",
]

AppKind = Literal["asgi", "aiohttp"]


@dataclass(frozen=True, slots=True)
class Target:
    """An app found by :func:`load_target`.

    Attributes:
        spec: what was asked for, ``"module:attr"``.
        kind: ``"asgi"`` (served by uvicorn) or ``"aiohttp"``.
        app: the ASGI callable or the ``aiohttp.web.Application``.

    .. versionadded:: 0.1
    """

    spec: str
    kind: AppKind
    app: Any


def failed_to_load(spec: str, exc: BaseException) -> str:
    """The one line that says why the app's module (or factory) raised while loading.

    Any ``BaseException``: a module that calls ``sys.exit(3)`` must not end graceful with its
    code (3 reads as "work cut"), so the code is said here instead.
    """
    if isinstance(exc, SystemExit):
        why = f"it called sys.exit({exc.code!r}) while being imported"
    else:
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return f"{spec} failed to load: {why}"


def report_failed_to_load(
    spec: str, exc: BaseException, *, event: str, label: str, log_format: str, **fields: Any
) -> None:
    """Say that the app's module (or factory) raised while loading, in the log's format.

    JSON logs (``json``, or ``auto`` off a terminal): one line, ``event`` at error, with
    ``app``, ``error`` (the line of :func:`failed_to_load`), ``exception`` (the traceback as
    graceful's other error lines carry it) and ``fields``: a log pipeline that parses every
    line gets one more object, not a traceback's twenty lines. Otherwise (a terminal,
    ``console``, ``off``): the traceback, then ``{label}: {error}``, on stderr. Either way
    only the app's frames: graceful's and importlib's say nothing about the bug.
    """
    error = failed_to_load(spec, exc)
    if writes_json(log_format):
        chain = exception_dicts(exc)
        for stack in chain:
            stack["frames"] = [f for f in stack.get("frames", ()) if _apps(f["filename"])]
        last_line(event, app=spec, error=error, exception=chain, **fields)
        return
    shown = traceback.TracebackException.from_exception(exc)
    shown.stack = traceback.StackSummary.from_list(
        [frame for frame in shown.stack if _apps(frame.filename)]
    )
    print("".join(shown.format()), end="", file=sys.stderr, flush=True)
    print(f"{label}: {error}", file=sys.stderr, flush=True)


def load_guarded(
    spec: str,
    load: Callable[[], Any],
    guard: StartupSignals,
    *,
    command: str,
    label: str,
    log_format: str,
    import_error: Callable[[str], int],
    **fields: Any,
) -> Any:
    """Load the app with a stop signal turned into a clean end; the one way ``graceful run``,
    ``graceful serve`` and a worker say what went wrong.

    Args:
        spec: the target, as given (``module:attr``).
        load: imports the target (inside the guard's import block).
        guard: the startup signal handlers.
        command: ``serve`` or ``run``: the events are ``{command}.stopped_while_loading`` and
            ``{command}.failed_to_load``.
        label: names the process in a plain-text error (``graceful serve: worker 1``).
        log_format: the log format (JSON logs: one line, else a traceback).
        import_error: reports a target that is not there; returns the exit code.
        **fields: added to the JSON line (``worker``).

    Returns:
        The target, or the :class:`ExitCode` to end with: ``OK`` for a stop signal during the
        import (nothing serves yet, so nothing to drain), ``ERROR`` when the app's own code
        failed, ``import_error``'s for a target that is not there.
    """
    try:
        with guard.importing():
            return load()
    except LoadingStopped as stopped:
        last_line(f"{command}.stopped_while_loading", level="info", app=spec, signal=stopped.signal)
        return ExitCode.OK
    except TargetImportError as exc:
        return ExitCode(import_error(str(exc)))
    except BaseException as exc:
        # Any BaseException: a module that calls ``sys.exit(3)`` must not end graceful with
        # its code (3 reads as "work cut"), nor a KeyboardInterrupt it raises look like Ctrl-C.
        report_failed_to_load(
            spec,
            exc,
            event=f"{command}.failed_to_load",
            label=label,
            log_format=log_format,
            **fields,
        )
        return ExitCode.ERROR


_GRACEFUL = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _apps(filename: str) -> bool:
    return not filename.startswith((_GRACEFUL, "<frozen")) and "importlib" not in filename


def import_from_string(spec: str, *, app_dir: str | None = None) -> Any:
    """Import ``module:attr`` (dots allowed in ``attr``) and return the attribute.

    Args:
        spec: ``"module:attr"``.
        app_dir: directory searched first for the module (uvicorn's ``--app-dir``); the
            current directory when ``None``.

    Raises:
        TargetImportError: the form is wrong, the module or one it imports is not installed,
            or the attribute is missing. Errors raised by the module's own code propagate.

    .. versionadded:: 0.1
    """
    module_name, _, attrs = spec.partition(":")
    if not module_name or not attrs:
        raise TargetImportError(f'target {spec!r} must be in the form "module:attribute"')
    if module_name.startswith("."):  # importlib would ask for a package: a TypeError
        raise TargetImportError(
            f'target {spec!r}: "{module_name}" is a relative module name; give its full '
            "dotted name (as to python -m)"
        )
    directory = os.path.abspath(app_dir if app_dir is not None else os.getcwd())
    if directory not in sys.path:
        sys.path.insert(0, directory)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == module_name or module_name.startswith(f"{missing}."):
            raise TargetImportError(
                f'could not import module "{module_name}": not found in {directory} or on '
                f"sys.path{_file_hint(module_name, attrs)}"
            ) from None
        raise TargetImportError(
            f'could not import module "{module_name}": it imports "{missing}", '
            "which is not installed"
        ) from None
    for attr in attrs.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise TargetImportError(
                f'attribute "{attrs}" not found in module "{module_name}"'
            ) from None
    return obj


def load_target(
    spec: str,
    *,
    factory: bool = False,
    app_dir: str | None = None,
    stop_signals: Sequence[str] = (),
) -> Target:
    """Import ``spec`` and find the app to serve.

    Args:
        spec: ``"module:attr"``.
        factory: the attribute is a function that takes no arguments and returns the app
            (uvicorn's ``--factory``); it is called once, here.
        app_dir: directory searched first for the module; the current directory when ``None``.
        stop_signals: signal names (``"SIGTERM"``) that abort the import with
            :class:`LoadingStopped` (on the main thread; the previous handlers are back
            afterwards). An import can take seconds (a framework, a model); as a container's
            PID 1 a signal nobody handles is dropped, and ``docker stop`` would end in SIGKILL.

    Returns:
        The app and its kind.

    Raises:
        TargetImportError: no such module or attribute, or the object is not an app; the
            message is one line. Errors raised by the module's or the factory's own code
            propagate, with their traceback.
        LoadingStopped: one of ``stop_signals`` arrived first.

    .. versionadded:: 0.1
    """
    guard = StartupSignals(stop_signals).install()
    try:
        with guard.importing():
            obj = import_from_string(spec, app_dir=app_dir)
            if factory:
                obj = _call_factory(spec, obj)
    finally:
        guard.restore()
    kind = web_app_kind(obj)
    if kind is None:
        raise TargetImportError(f"{spec} {_why_not_an_app(obj, factory=factory)}")
    return Target(spec=spec, kind=kind, app=obj)


def web_app_kind(obj: object) -> AppKind | None:
    """``"aiohttp"`` for an ``aiohttp.web.Application``, ``"asgi"`` for an ASGI app, else ``None``.

    An ASGI app is a callable that accepts ``(scope, receive, send)`` and not a single
    argument (which would be an ``async def main(runtime)``). A callable whose signature
    cannot be read (a C extension) is taken for an ASGI app: the server will tell.

    .. versionadded:: 0.1
    """
    # aiohttp is imported by the app's module when it is an aiohttp app: do not import it
    # for everyone else (it is an optional dependency).
    aiohttp_web = sys.modules.get("aiohttp.web")
    if aiohttp_web is not None and isinstance(obj, aiohttp_web.Application):
        return "aiohttp"
    if not callable(obj) or _is_runtime(obj):
        return None
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return "asgi"
    if _accepts(signature, 3) and not _accepts(signature, 1):
        return "asgi"
    if isinstance(obj, type) and _accepts(signature, 1) and not _accepts(signature, 0):
        return "asgi"  # an ASGI 2 app: a class built from the scope (uvicorn runs those)
    return None


def _file_hint(module_name: str, attrs: str) -> str:
    """For a file path given as the module (``app.py``, ``src/app.py``): what to write."""
    if not module_name.endswith(".py") and os.sep not in module_name:
        return ""
    directory, file = os.path.split(module_name)
    module = file.removesuffix(".py")
    app_dir = f" --app-dir {directory}" if directory else ""
    return f"; give a module name, not a file: {module}:{attrs}{app_dir}"


def _call_factory(spec: str, factory: Any) -> Any:
    if not callable(factory):
        raise TargetImportError(f"{spec} is not callable: --factory needs a function")
    try:
        inspect.signature(factory).bind()
    except TypeError:
        raise TargetImportError(
            f"{spec} cannot be called without arguments: an app factory takes none"
        ) from None
    except ValueError:  # no signature to read: call it and see
        pass
    app = factory()
    if inspect.isawaitable(app):
        if inspect.iscoroutine(app):
            app.close()  # never awaited, on purpose: no "was never awaited" warning
        raise TargetImportError(
            f"{spec} is an async factory: make it a plain function that returns the app "
            "(open resources in the app's lifespan or cleanup contexts)"
        )
    if web_app_kind(app) is None:
        raise TargetImportError(
            f"{spec}() returned {_describe(app)}, not an ASGI app or an aiohttp Application"
        )
    return app


def _why_not_an_app(obj: Any, *, factory: bool) -> str:
    if _is_runtime(obj):
        return "is a graceful.Runtime: serve it with `graceful run`"
    if not callable(obj):
        return f"is {_describe(obj)}, not an ASGI app or an aiohttp Application"
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):  # pragma: no cover - web_app_kind accepted these
        return "is not an ASGI app or an aiohttp Application"
    if not factory and _accepts(signature, 0):
        return "takes no arguments: if it returns the app, add --factory"
    if inspect.iscoroutinefunction(obj) and _accepts(signature, 1):
        return "looks like an `async def main(runtime)`: serve it with `graceful run`"
    return f"is not an ASGI app: it takes {signature}, an ASGI app takes (scope, receive, send)"


def _accepts(signature: inspect.Signature, count: int) -> bool:
    try:
        signature.bind(*range(count))
    except TypeError:
        return False
    return True


def _is_runtime(obj: object) -> bool:
    return isinstance(obj, Runtime)


def _describe(obj: object) -> str:
    name = type(obj).__name__
    return f"an {name}" if name[:1].lower() in "aeiou" else f"a {name}"
