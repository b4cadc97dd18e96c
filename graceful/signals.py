"""Which signals start a stop, how repeats escalate, and who owns the handlers.

Why ``signal.signal`` and not ``loop.add_signal_handler``: a Python-level handler runs in the
main thread even while the event loop is blocked, so the third signal can always end the
process; and ``signal.getsignal`` shows whether another library replaced our handler (with
``add_signal_handler`` every owner looks the same). The handler itself only records the signal
and wakes the loop with ``call_soon_threadsafe``, which is safe from a signal handler.

PID 1: the kernel drops signals whose action is the default for PID 1, so a container's main
process that installs no handler never sees SIGTERM and is SIGKILLed at the deadline. Installing
the handler explicitly is what makes us work as PID 1.

Escalation: the first signal starts the stop, a second skips the rest of the drain and goes to
flush, a third exits at once. Containers never send a second SIGINT; a second SIGTERM comes
from a person or a script. Repeats closer than ``repeat_window`` to the previous counted signal
are one request (a ``kill`` loop or a supervisor's storm) and do not escalate.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from enum import IntEnum

# Imported by the ``graceful`` command before anything else (see StartupSignals.capture): only
# what the interpreter's start and the ``signal`` module loaded already, and threading. The
# rest is imported where it is used, or for the type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import FrameType
    from typing import Any, ClassVar, Protocol, Self

    from graceful.config import Config

    _Handler = Callable[[int, FrameType | None], Any] | int | None

    class Stoppable(Protocol):
        """What :meth:`StartupSignals.hand_over` stops: a ``Runtime`` or the supervisor."""

        @property
        def config(self) -> Config: ...

        def request_stop(self, reason: str) -> None: ...


__all__ = [
    "Escalation",
    "LoadingStopped",
    "StartupSignals",
    "StopSignals",
    "shell_pid1_warning",
]

#: The signals ``docker stop`` and Ctrl-C send: caught before GRACEFUL_SIGNALS is read.
FIRST_CAUGHT = ("SIGTERM", "SIGINT")


class Escalation(IntEnum):
    """What a stop signal asks for, by how many came before it.

    .. versionadded:: 0.1
    """

    REPEAT = 0
    """Within the repeat window of the previous one: part of the same request."""
    STOP = 1
    """The first: start the stop."""
    SKIP_TO_FLUSH = 2
    """The second: skip the rest of the drain, go to flush."""
    EXIT_NOW = 3
    """The third: exit at once."""


class StopSignals:
    """Owns the stop signals while a runtime serves; restores the previous handlers after.

    Args:
        names: signal names, for example ``("SIGTERM", "SIGINT")``.
        on_signal: called in signal-handler context with the signal, its escalation and its
            ``time.monotonic()`` arrival time; must only record and wake the loop.
        hard_exit_code: exit status of the process on the third signal.
        repeat_window: seconds within which repeated signals count as one.
        ownership_interval: seconds between the first checks that our handlers are still
            installed (later checks come ten times less often).

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        names: tuple[str, ...],
        on_signal: Callable[[signal.Signals, Escalation, float], None],
        *,
        hard_exit_code: int,
        repeat_window: float = 0.5,
        ownership_interval: float = 0.5,
    ) -> None:
        self.signals = tuple(signal.Signals[name] for name in names)
        self._on_signal = on_signal
        self._hard_exit_code = hard_exit_code
        self._repeat_window = repeat_window
        self._ownership_interval = ownership_interval
        self._ownership_checks = 0
        self._previous: dict[signal.Signals, _Handler] = {}
        self._last_seen = -float("inf")
        self.level = Escalation.REPEAT
        self.received = 0
        self.installed = False

    @classmethod
    def for_config(
        cls,
        config: Config,
        on_signal: Callable[[signal.Signals, Escalation, float], None],
        log: Any,
    ) -> StopSignals | None:
        """Install handlers as ``config`` says; ``None`` when off or not on the main thread."""
        from graceful.status import ExitCode

        if not config.handle_signals:
            return None
        owner = cls(
            config.signals,
            on_signal,
            hard_exit_code=int(ExitCode.FORCED),
            repeat_window=config.repeat_window,
            ownership_interval=config.ownership_interval,
        )
        if not owner.install():
            log.warning("signals.not_installed", reason="not on the main thread")
            return None
        return owner

    def install(self) -> bool:
        """Install the handlers; a no-op (returning False) off the main thread."""
        if not _on_main_thread():
            return False
        for sig in self.signals:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)
        self.installed = True
        return True

    def restore(self) -> None:
        """Put back the handlers that were there before ``install``."""
        if not self.installed:
            return
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self.installed = False

    def replaced(self) -> dict[str, str]:
        """Signals whose handler another library replaced, with a name for the intruder."""
        if not self.installed:
            return {}
        found = {}
        for sig in self.signals:
            current = signal.getsignal(sig)
            if current != self._handle:
                found[sig.name] = _describe(current)
        return found

    def reclaim(self) -> None:
        """Install our handler again where it was replaced."""
        for name in self.replaced():
            signal.signal(signal.Signals[name], self._handle)

    def check_ownership(self, log: Any) -> None:
        """Take our handlers back where another library replaced them, and say so."""
        replaced = self.replaced()
        if replaced:
            log.warning(
                "signals.handler_replaced",
                replaced=replaced,
                action="graceful installed its handler again; stop signals start the graceful stop",
            )
            self.reclaim()

    def watch_ownership(self, log: Any, keep_watching: Callable[[], bool]) -> None:
        """Check ownership now, then every ``ownership_interval`` while ``keep_watching()``.

        Libraries often install handlers while starting (uvicorn, anyio, add_signal_handler),
        so the first checks come soon after startup; later ones every ten intervals.
        """
        if not keep_watching() or not self.installed:
            return
        self.check_ownership(log)
        self._ownership_checks += 1
        interval = self._ownership_interval * (1 if self._ownership_checks <= 4 else 10)
        import asyncio

        loop = asyncio.get_running_loop()
        loop.call_later(interval, self.watch_ownership, log, keep_watching)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        self.received += 1
        now = time.monotonic()
        # From the previous signal, counted or not: a slow storm (one every 0.3 s) stays one.
        previous, self._last_seen = self._last_seen, now
        if now - previous < self._repeat_window:
            self._on_signal(sig, Escalation.REPEAT, now)
            return
        self.level = Escalation(min(self.level + 1, Escalation.EXIT_NOW))
        if self.level is Escalation.EXIT_NOW:
            hard_exit(self._hard_exit_code, sig)
        self._on_signal(sig, Escalation(self.level), now)


class LoadingStopped(BaseException):
    """A stop signal arrived while the app was being imported (see :class:`StartupSignals`).

    A ``BaseException``, as ``KeyboardInterrupt``: the app's own ``except Exception`` must
    not swallow it.

    Attributes:
        signal: the signal's name.
    """

    def __init__(self, signal: str) -> None:
        super().__init__(f"{signal} while the app was being imported")
        self.signal = signal


class StartupSignals:
    """The stop signals from the ``graceful`` command's first line until the handlers of the
    runtime (or the supervisor) take over: one owner from ``exec`` through the app's import.

    As a container's PID 1 a signal nobody handles is dropped, and ``docker stop`` then waits
    for SIGKILL; importing the command takes 0.2-0.3 s and the app's import can take seconds.
    So :meth:`capture` installs these handlers first of all, and :meth:`take` hands them to the
    command once it knows which signals it stops on. These handlers

    - raise :class:`LoadingStopped` where the import is, inside :meth:`importing` (an
      exception out of a signal handler, unlike the runtime's, which only record and wake
      the loop: no loop runs yet and nothing was accepted, so nothing is to drain, and the
      import could outlast the stop timeout);
    - otherwise record the signal and ask the owner given to :meth:`hand_over` to stop (at once
      if the signal came before it), until that owner installs its own handlers.

    A no-op off the main thread. :meth:`restore` puts the previous handlers back.

    Args:
        names: signal names (``"SIGTERM"``).
    """

    _captured: ClassVar[StartupSignals | None] = None

    def __init__(self, names: Sequence[str]) -> None:
        self.signals = tuple(signal.Signals[name] for name in names)
        self._arrived: list[signal.Signals] = []
        self._owner: Stoppable | None = None
        self._importing = False
        self._previous: dict[signal.Signals, _Handler] = {}

    @classmethod
    def capture(cls) -> None:
        """The command's first step: catch SIGTERM and SIGINT before anything heavy is imported
        (GRACEFUL_SIGNALS is not read yet; :meth:`take` settles the set)."""
        if cls._captured is None:
            cls._captured = cls(FIRST_CAUGHT).install()

    @classmethod
    def take(cls, names: Sequence[str]) -> StartupSignals:
        """The startup handlers for ``names`` from now on: those :meth:`capture` installed,
        with the signals they caught, else new ones.

        Captured signals not in ``names`` get their previous handlers back, and one of them that
        arrived is raised again for that handler (SIGINT's ``KeyboardInterrupt``, say). With no
        ``names`` (the commands that stop on nothing) every signal gets its default back.
        """
        startup, cls._captured = cls._captured, None
        if startup is None:
            return cls(names).install()
        startup._keep(tuple(signal.Signals[name] for name in names))
        return startup

    def install(self) -> Self:
        """Install the handlers (on the main thread only); returns ``self``."""
        if _on_main_thread():
            for sig in self.signals:
                if sig not in self._previous:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    @property
    def received(self) -> str | None:
        """The name of the first stop signal that arrived, if one did."""
        return self._arrived[0].name if self._arrived else None

    @property
    def in_import(self) -> bool:
        """Inside :meth:`importing`'s block now (a stop signal would raise there)."""
        return self._importing

    def importing(self) -> StartupSignals:
        """``with startup.importing():`` a stop signal inside the block raises
        :class:`LoadingStopped` in it."""
        return self

    def __enter__(self) -> None:
        self._importing = True

    def __exit__(self, *exc_info: object) -> None:
        self._importing = False

    def hand_over(self, owner: Stoppable) -> None:
        """Stop ``owner`` (a ``Runtime``, the supervisor) on a signal from now on, at once if
        one came already.

        Its own handlers replace these when it starts serving (and put them back when it
        returns, when a signal has nothing left to stop). Signals it does not stop on get
        their previous handlers back now.
        """
        config = owner.config
        self._keep(
            tuple(signal.Signals[n] for n in config.signals) if config.handle_signals else ()
        )
        self._owner = owner
        if self.received is not None:
            owner.request_stop(f"signal {self.received}")

    def restore(self) -> None:
        """Put back the handlers that were there before :meth:`install`."""
        for sig in list(self._previous):
            self._give_back(sig, replaced_or_not=True)

    def _keep(self, kept: tuple[signal.Signals, ...]) -> None:
        dropped = [sig for sig in self._previous if sig not in kept]
        for sig in dropped:
            self._give_back(sig)
        self.signals = kept
        self.install()
        again = [sig for sig in self._arrived if sig in dropped]
        self._arrived = [sig for sig in self._arrived if sig in kept]
        for sig in again:
            signal.raise_signal(sig)

    def _give_back(self, sig: signal.Signals, *, replaced_or_not: bool = False) -> None:
        previous = self._previous.pop(sig)
        # A handler installed over ours since (the runtime's, before ``take``) stays.
        if replaced_or_not or signal.getsignal(sig) == self._handle:
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        if sig not in self._arrived:  # the first of each, in order: all that is acted on
            self._arrived.append(sig)
        if self._importing:
            # Recorded first: an import that swallows the exception (a bare ``except:``, a
            # ``__del__`` that ran then) must not lose the stop; the owner stops at once.
            raise LoadingStopped(sig.name)
        if self._owner is not None:
            # Safe from a signal handler here: the owner has not started waiting on its stop
            # (its own handlers replace this one before it does), so this only sets a flag.
            self._owner.request_stop(f"signal {sig.name}")


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def hard_exit(code: int, sig: signal.Signals) -> None:
    """Exit at once, after one last log line written straight to the file descriptor."""
    from graceful.logs import last_line

    last_line("shutdown.forced", signal=sig.name, exit_code=code)
    os._exit(code)


def shell_pid1_warning() -> str | None:
    """Explain the problem when a shell stands between the stop signal and this process.

    Two shapes of it are common in containers, and both end with this process's work cut:

    - Our parent is a shell running as PID 1: a shell-form ``CMD`` (``/bin/sh -c ...``) or an
      entrypoint script that does not ``exec`` the server (``/bin/sh /entrypoint.sh``). The
      shell does not forward SIGTERM, so ``docker stop`` waits its full timeout and SIGKILLs
      us.
    - Our parent is a shell that an init running as PID 1 started (``docker run --init``): the
      init passes SIGTERM to the shell, which dies of it without passing it on, and this
      process is killed with the container (exit 143).

    Returns ``None`` when neither is the case or it cannot be known (no ``/proc``).
    """
    if os.getpid() == 1:
        return None
    parent = os.getppid()
    shell = _cmdline(parent)
    if shell is None or not _is_shell(shell):
        return None
    shown = b" ".join(shell[:3]).decode(errors="replace")
    advice = (
        'use an exec-form CMD (CMD ["python", "app.py"]), or put `exec` before the '
        "server's command in the entrypoint script (exec python app.py)"
    )
    if parent == 1:
        return (
            f"PID 1 is a shell ({shown}): it does not forward SIGTERM, so docker stop will wait "
            f"its full timeout and SIGKILL this process; {advice}"
        )
    init = _cmdline(1)
    if _parent_of(parent) == 1 and init is not None and _is_init(init):
        return (
            f"PID 1 is an init ({b' '.join(init[:2]).decode(errors='replace')}) whose child "
            f"is a shell ({shown}): the init passes SIGTERM to the shell, which dies of it "
            f"without passing it on, and this process goes down with the container; {advice}"
        )
    return None


_SHELLS = {b"sh", b"bash", b"dash", b"ash", b"zsh", b"ksh", b"busybox"}
_INITS = {b"docker-init", b"tini", b"dumb-init", b"catatonit"}


def _cmdline(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return None
    return [a for a in argv if a] or None


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: fields after its last ")".
    return int(stat.rsplit(b")", 1)[1].split()[1])


def _is_shell(argv: list[bytes]) -> bool:
    return os.path.basename(argv[0]).lstrip(b"-") in _SHELLS  # "-bash": a login shell


def _is_init(argv: list[bytes]) -> bool:
    return os.path.basename(argv[0]) in _INITS


def _describe(handler: object) -> str:
    if handler is None:
        return "None (set outside Python)"
    if isinstance(handler, int):
        return {int(signal.SIG_DFL): "SIG_DFL", int(signal.SIG_IGN): "SIG_IGN"}.get(
            handler, str(handler)
        )
    module = getattr(handler, "__module__", None) or "?"
    name = getattr(handler, "__qualname__", None) or repr(handler)
    return f"{module}.{name}"
