"""What a stop reports: phase timings, hook outcomes, flushed items, and the exit code.

The runtime drives the phases; the recorder keeps the account of them and writes the one
``shutdown.report`` line an operator reads to learn what happened during a stop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from graceful.budget import Budget
from graceful.hooks import HookOutcome, Outcome, Phase
from graceful.metrics import Metrics
from graceful.status import ExitCode

__all__ = ["ShutdownRecorder", "rounded"]


def rounded(seconds: float) -> float:
    """Seconds as logged: to the tenth of a millisecond (no ``0.30000000000000004``)."""
    return round(seconds, 4)


class ShutdownRecorder:
    """The account of one stop, and its report.

    Args:
        metrics: where hook failures, flushed items and phase durations are counted.
        log: graceful's logger.

    .. versionadded:: 0.1
    """

    def __init__(self, metrics: Metrics, log: Any, *, event: str = "shutdown.report") -> None:
        self.metrics = metrics
        self.log = log
        #: The report's event name; a supervised worker's is ``worker.shutdown.report``, so
        #: the container's one ``shutdown.report`` is its supervisor's.
        self.event = event
        self.outcomes: list[HookOutcome] = []
        self.phase_seconds: dict[str, float] = {}
        self.flushed = 0
        self.leftovers: list[str] = []
        self.background: list[str] = []
        self.signals: list[str] = []
        self._metrics_failed = False

    def count(self, update: Callable[[], object]) -> None:
        """Run one metric update; if it fails, log it once and go on: a metric never ends a
        stop.

        Under prometheus-client's multiprocess mode a metric's first value opens a file: at
        the descriptor limit (a worker holding hundreds of idle connections) that raised
        EMFILE out of the first phase and killed the worker with requests in flight.
        `Metrics` creates every label the stop uses at startup, so no file is opened here;
        this guards whatever is left (a file that cannot grow, a full disk).
        """
        try:
            update()
        except Exception as exc:
            if not self._metrics_failed:
                self._metrics_failed = True
                self.log.error("metrics.update_failed", error=f"{type(exc).__name__}: {exc}")

    def hook(self, outcome: HookOutcome) -> None:
        """Count and log how one hook ended."""
        self.outcomes.append(outcome)
        if outcome.outcome is Outcome.OK:
            self.log.info("hook.finished", hook=outcome.name, seconds=rounded(outcome.seconds))
            return
        if outcome.outcome is Outcome.SKIPPED:
            self.log.warning("hook.skipped", hook=outcome.name, reason=outcome.error)
            return
        failed = self.metrics.hooks_failed
        self.count(lambda: failed.labels(str(outcome.phase), str(outcome.outcome)).inc())
        self.log.error(
            "hook.timed_out" if outcome.outcome is Outcome.TIMED_OUT else "hook.failed",
            hook=outcome.name,
            seconds=rounded(outcome.seconds),
            error=outcome.error,
        )

    def flushed_items(self, count: int) -> None:
        """Count items a flush wrote to durable state."""
        self.flushed += count
        self.count(lambda: self.metrics.flushed_items.inc(count))

    def phase(self, phase: Phase, seconds: float, budget: Budget, time_left: float) -> None:
        """Record and log the end of a phase."""
        self.phase_seconds[str(phase)] = rounded(seconds)
        self.count(lambda: self.metrics.phase_seconds.labels(str(phase)).set(seconds))
        self.log.info(
            "phase.finished",
            phase=str(phase),
            seconds=rounded(seconds),
            budget_share=budget.share(seconds),
            time_left_s=rounded(time_left),
        )

    def failed_hooks(self) -> list[str]:
        return [o.name for o in self.outcomes if o.outcome in (Outcome.FAILED, Outcome.TIMED_OUT)]

    def exit_code(self, *, crashed: bool, drained: bool, cut: int) -> ExitCode:
        """The most serious cause wins (``ExitCode.worst``)."""
        causes = [
            ExitCode.ERROR if crashed else ExitCode.OK,
            ExitCode.HOOK_FAILED if self.failed_hooks() else ExitCode.OK,
            ExitCode.WORK_CUT if cut or not drained else ExitCode.OK,
        ]
        return ExitCode.worst(causes)

    def report(
        self,
        code: ExitCode,
        *,
        reason: str | None,
        budget: Budget,
        now: float,
        stop_timeout: float,
        inflight_at_signal: int,
        drained: bool,
        cut: int,
        zombies_reaped: int,
    ) -> None:
        """Write the one ``shutdown.report`` line."""
        elapsed = now - budget.start
        self.log.log(
            20 if code is ExitCode.OK else 30,
            self.event,
            reason=reason,
            exit_code=int(code),
            exit_status=code.name.lower(),
            seconds=rounded(elapsed),
            stop_timeout=stop_timeout,
            budget_share=budget.share(elapsed),
            overran=now > budget.exit_at,
            phases=self.phase_seconds,
            inflight_at_signal=inflight_at_signal,
            drained=drained,
            cancelled=cut,
            flushed=self.flushed,
            hooks={
                kind.value: sum(o.outcome is kind for o in self.outcomes)
                for kind in (Outcome.OK, Outcome.FAILED, Outcome.TIMED_OUT, Outcome.SKIPPED)
            },
            leftover_tasks=self.leftovers,
            background_cancelled=self.background,
            failed_hooks=self.failed_hooks(),
            signals=self.signals,
            zombies_reaped=zombies_reaped,
        )
