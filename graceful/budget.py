"""Deadline arithmetic: one stop timeout split into absolute phase deadlines.

Computed once, when the stop begins, on the event loop's clock. Every phase then waits until
``min(its own deadline, exit_at)``, so no phase can overspend and a timeout is never applied
twice (aiohttp's ``shutdown_timeout`` is, which doubles its budget).

::

    signal            delay_end          drain_end   cancel_end  flush_end  exit_at   SIGKILL
      |--- unready+delay --|---- drain --------|-- cancel --|-- flush --|- close -|- margin -|
                                               |<------------ reserve ---------->|
"""

from __future__ import annotations

from dataclasses import dataclass

from graceful.config import Config
from graceful.logs import get_logger

__all__ = ["Budget"]

_CANCEL_SHARE = 0.25
_CANCEL_MAX = 0.5
# Kept for close out of the reserve, so a flush hook that hangs cannot starve it.
_CLOSE_SHARE = 0.25
_CLOSE_MAX = 0.5
# Kept after the delay for stop_accept and the drain, out of what lies before the reserve: a
# delay as long as the budget would otherwise leave the listeners no time to close (their
# stop_accept is cut: exit 4) and the drain none to end (exit 3).
_AFTER_DELAY_SHARE = 0.25
_AFTER_DELAY_MAX = 1.0


@dataclass(frozen=True, slots=True)
class Budget:
    """Absolute deadlines (event-loop time) of one shutdown.

    .. versionadded:: 0.1
    """

    start: float
    delay_end: float
    drain_end: float
    cancel_end: float
    exit_at: float

    @classmethod
    def plan(
        cls, config: Config, start: float, *, exit_by: float | None = None, log: bool = True
    ) -> Budget:
        """Split ``config.stop_timeout`` into phase deadlines starting at ``start``.

        The delay ends early enough to leave the later phases their time: a quarter of what
        lies before the reserve, up to 1 s, is kept for ``stop_accept`` and the drain. A delay
        shortened for that is logged as ``budget.delay_shortened`` (asked and used).

        Args:
            config: the stop timeout, margin, reserve, delay and drain cap.
            start: when the stop began (event-loop time).
            exit_by: an exit deadline given from outside (a supervisor's, on the same clock
                as ``start``): ``exit_at`` is then ``exit_by`` (never before ``start``) instead
                of ``stop_timeout - margin`` after ``start``, and the phases split what is left.
            log: log a shortened delay (off for a plan that is only displayed).
        """
        if exit_by is None:
            exit_at = start + config.stop_timeout - config.effective_margin
        else:
            exit_at = max(exit_by, start)
        reserve = min(config.effective_reserve, exit_at - start)
        last_drain = exit_at - reserve
        after_delay = min(_AFTER_DELAY_MAX, (last_drain - start) * _AFTER_DELAY_SHARE)
        delay_end = min(start + config.delay, last_drain - after_delay)
        if log and delay_end < start + config.delay:
            get_logger().warning(
                "budget.delay_shortened",
                delay_asked_s=config.delay,
                delay_used_s=round(delay_end - start, 3),
                kept_for_stop_accept_and_drain_s=round(last_drain - delay_end, 3),
            )
        drain_end = last_drain
        if config.drain_timeout is not None:
            drain_end = min(drain_end, delay_end + config.drain_timeout)
        cancel_end = min(drain_end + min(_CANCEL_MAX, reserve * _CANCEL_SHARE), exit_at)
        return cls(start, delay_end, drain_end, cancel_end, exit_at)

    @property
    def flush_end(self) -> float:
        """When flush hooks are cut: close keeps a share of the reserve for itself."""
        close = min(_CLOSE_MAX, max(self.exit_at - self.drain_end, 0.0) * _CLOSE_SHARE)
        return max(self.exit_at - close, self.cancel_end)

    def skip_to_flush(self, now: float) -> Budget:
        """The budget after a second signal: drain ends now, cancel gets its short grace."""
        grace = min(self.cancel_end - self.drain_end, max(self.exit_at - now, 0.0))
        return Budget(self.start, min(self.delay_end, now), now, now + grace, self.exit_at)

    def offsets(self) -> dict[str, float]:
        """The deadlines as seconds after the start, as logged and as ``graceful config`` shows."""
        return {
            "delay_until_s": round(self.delay_end - self.start, 4),
            "drain_until_s": round(self.drain_end - self.start, 4),
            "cancel_until_s": round(self.cancel_end - self.start, 4),
            "exit_by_s": round(self.exit_at - self.start, 4),
        }

    def share(self, seconds: float) -> float:
        """Fraction of the whole budget that ``seconds`` represents."""
        total = self.exit_at - self.start
        return round(seconds / total, 3) if total > 0 else 0.0
