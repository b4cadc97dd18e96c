"""What a runtime says about itself: where it is in its life, and how its stop ended."""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum, StrEnum

__all__ = ["ExitCode", "LifecycleState"]


class LifecycleState(StrEnum):
    """Where a runtime is in its life (``runtime.state``).

    .. versionadded:: 0.1
    """

    STARTING = "starting"
    SERVING = "serving"
    STOPPING = "stopping"
    STOPPED = "stopped"


class ExitCode(IntEnum):
    """The exit codes of a stop; the most serious cause wins.

    ``code.description`` is the one place each code is put in words: the README's table, the
    logs and the harness's findings say the same.

    .. versionadded:: 0.1
    """

    OK = 0
    ERROR = 1
    WORK_CUT = 3
    HOOK_FAILED = 4
    FORCED = 5
    OVERRAN = 6
    WORKER_FAILED = 7

    @property
    def description(self) -> str:
        """What the code means, in one line."""
        return _DESCRIPTIONS[self]

    @classmethod
    def worst(cls, codes: Iterable[ExitCode]) -> ExitCode:
        """The most serious of ``codes`` (``OK`` for none): what a process or container exits
        with when several causes, or several workers, each have one."""
        return min(codes, key=_SEVERITY.index, default=cls.OK)


#: Most serious first: an error, a crash-looping worker; the two ends a stop can be given from
#: outside (the watchdog, a third signal), which both left the flush unfinished; a failed
#: hook; cut work.
_SEVERITY: tuple[ExitCode, ...] = (
    ExitCode.ERROR,
    ExitCode.WORKER_FAILED,
    ExitCode.OVERRAN,
    ExitCode.FORCED,
    ExitCode.HOOK_FAILED,
    ExitCode.WORK_CUT,
    ExitCode.OK,
)

_DESCRIPTIONS = {
    ExitCode.OK: "clean stop: everything accepted was answered, every hook succeeded",
    ExitCode.ERROR: "startup failed, main crashed, or a setting is invalid",
    ExitCode.WORK_CUT: "in-flight work was cancelled at the drain deadline or skipped by a "
    "second signal, or a task a request handler left running was cancelled at the end",
    ExitCode.HOOK_FAILED: "a shutdown hook raised or was cut at its deadline: state may not "
    "have been flushed",
    ExitCode.FORCED: "a third stop signal: the process exited at once",
    ExitCode.OVERRAN: "the stop overran its exit deadline (a blocked loop, a stuck hook or "
    "thread): the watchdog ended the process before SIGKILL could",
    ExitCode.WORKER_FAILED: "a worker of graceful serve --workers kept failing to start (a crash "
    "loop): the service gave up on it",
}
