"""Was the work done? A work request answered 2xx clearly sooner than it asked for was not.

An image can look perfect at a stop by lying: answer every ``GET /work?ms=N`` still in flight
with 200 at once, then exit 0. The clients saw answers, the exit code is clean, nothing was
cut, and yet the work they asked for never happened. The ledger knows what each work request
asked for (:attr:`~graceful.harness.load.Record.asked_ms`) and how long its answer took:
a success that came clearly sooner is that lie.

"Clearly": under 90 % of the time asked, less 20 ms. The client's clock starts before the
request leaves and stops after the answer arrives, so an honest answer always takes at least
what it asked for; the allowance only keeps timer granularity and a service's own rounding
(a sleep that wakes a little early) from ever counting.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from graceful.harness.context import Findings
from graceful.harness.load import Kind, Ledger, Record

__all__ = ["answered_too_soon", "judge_work_done", "too_soon"]

#: An answer under this share of the time asked, less :data:`SLACK_MS`, did not do the work.
SHARE = 0.9
SLACK_MS = 20.0


def too_soon(record: Record) -> bool:
    """A work request answered 2xx in clearly less time than the work it asked for."""
    asked = record.asked_ms
    return record.ok and asked is not None and record.took_ms < SHARE * asked - SLACK_MS


def answered_too_soon(ledger: Ledger) -> list[Record]:
    """The work requests of ``ledger`` that were answered 2xx without doing their work."""
    return [r for r in ledger.select((Kind.WORK, Kind.LONG)) if too_soon(r)]


def judge_work_done(
    f: Findings, ledger: Ledger, *, stop_began: float | None = None, prefix: str = ""
) -> None:
    """A problem for work requests answered 2xx clearly sooner than they asked for.

    Args:
        f: where findings go.
        ledger: the load's requests.
        stop_began: when the stop (or signal) was sent, monotonic: the finding then says how
            many of the early answers came after it.
        prefix: put before the finding.
    """
    early = answered_too_soon(ledger)
    if not early:
        return
    after = ""
    if stop_began is not None:
        at_stop = sum(1 for r in early if r.answered >= stop_began)
        after = f" ({at_stop} of them after the stop began)" if at_stop else ""
    f.problem(
        f"{prefix}{_by_asked(early)}{after}: the work was not done (a request answered 2xx "
        "sooner than the work it asked for; work cut at a stop must end in an error, not a "
        "success)"
    )


def _by_asked(records: Sequence[Record]) -> str:
    """``"8 requests asking for 3000 ms were answered in 2-15 ms"``, per time asked."""
    groups: dict[int, list[float]] = defaultdict(list)
    for r in records:
        assert r.asked_ms is not None  # too_soon() holds
        groups[r.asked_ms].append(r.took_ms)
    parts = []
    for asked, took in sorted(groups.items()):
        low, high = min(took), max(took)
        span = f"{low:.0f} ms" if round(low) == round(high) else f"{low:.0f}-{high:.0f} ms"
        many = len(took) != 1
        parts.append(
            f"{len(took)} request{'s' if many else ''} asking for {asked} ms "
            f"{'were' if many else 'was'} answered in {span}"
        )
    return "; ".join(parts)
