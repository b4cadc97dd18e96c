"""graceful.harness.context without an engine: findings become a verdict, and load tasks are
waited for with a bound."""

from __future__ import annotations

import asyncio

from graceful.harness.container import StopResult
from graceful.harness.context import Findings, gather_bounded
from graceful.harness.load import Kind, Ledger, Record, RequestOutcome


def test_findings_become_the_scenario_result() -> None:
    ledger = Ledger()
    ledger.add(Record(kind=Kind.WRITE, sent=1, answered=2, outcome=RequestOutcome.OK, item_id="a"))
    ledger.add(Record(kind=Kind.WORK, sent=1, answered=2, outcome=RequestOutcome.RESET))
    f = Findings()
    f.note("seen")
    assert f.result("x", stop=StopResult(0, 0.5), ledger=ledger).passed
    f.problem("broken")
    result = f.result("x", stop=StopResult(137, 3.2), ledger=ledger, lost=1)
    assert not result.passed
    assert result.findings == ("broken", "note: seen")  # problems first
    assert result.problems == ("broken",)
    assert (result.exit_code, result.stop_seconds) == (137, 3.2)
    assert (result.sent, result.ok, result.failed, result.acked, result.lost) == (2, 1, 1, 1, 1)
    empty = Findings().result("y")
    assert (empty.exit_code, empty.stop_seconds, empty.sent) == (None, None, 0)


async def test_gather_bounded_cancels_what_outlives_the_guard() -> None:
    done = asyncio.Event()
    quick = asyncio.create_task(done.wait())
    stuck = asyncio.create_task(asyncio.Event().wait())  # never set
    done.set()
    await gather_bounded([quick, stuck], timeout=0.05)
    assert quick.done()
    assert not quick.cancelled()
    assert stuck.cancelled()
    await gather_bounded([])  # nothing to wait for
