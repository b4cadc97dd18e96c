"""graceful.harness.context without an engine: findings become a verdict, and load tasks are
waited for with a bound."""

from __future__ import annotations

import asyncio

from graceful.harness.container import StopResult
from graceful.harness.context import Findings, gather_bounded, not_ready_diagnosis
from graceful.harness.load import Kind, Ledger, Record, RequestOutcome
from graceful.harness.report import Verdict
from graceful.harness.workload import Workload


def test_findings_become_the_scenario_result() -> None:
    ledger = Ledger()
    ledger.add(Record(kind=Kind.WRITE, sent=1, answered=2, outcome=RequestOutcome.OK, item_id="a"))
    ledger.add(Record(kind=Kind.WORK, sent=1, answered=2, outcome=RequestOutcome.RESET))
    f = Findings()
    f.note("seen")
    assert f.result("x", stop=StopResult(0, 0.5), ledger=ledger).passed
    f.inconclusive("nothing was in flight")
    assert f.result("x").verdict is Verdict.INCONCLUSIVE
    f.problem("broken")
    result = f.result("x", stop=StopResult(137, 3.2), ledger=ledger, lost=1)
    assert not result.passed
    assert result.verdict is Verdict.FAIL  # a problem outweighs what was not established
    # Problems first, then what could not be established, then notes.
    assert result.findings == ("broken", "inconclusive: nothing was in flight", "note: seen")
    assert result.problems == ("broken",)
    assert (result.exit_code, result.stop_seconds) == (137, 3.2)
    assert (result.sent, result.ok, result.failed, result.acked, result.lost) == (2, 1, 1, 1, 1)
    empty = Findings().result("y")
    assert (empty.exit_code, empty.stop_seconds, empty.sent) == (None, None, 0)
    skipped = Findings()
    skipped.skip("needs items: no items path")
    assert skipped.result("z").verdict is Verdict.SKIPPED
    assert not skipped.result("z").passed


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


LISTENING = (
    '{"host": "%s", "port": 9090, "level": "info", '
    '"timestamp": "2026-11-28T04:37:49.467881Z", "event": "admin.listening"}'
)


def test_an_admin_server_on_loopback_is_diagnosed() -> None:
    """The admin port never answers when the server binds the container's loopback; the log
    line graceful writes says where it listens (here as a real container wrote it)."""
    logs = '{"event": "service.starting"}\n' + LISTENING % "127.0.0.1" + "\n"
    text = not_ready_diagnosis(logs, Workload())
    assert "listens on 127.0.0.1 inside the container" in text
    assert "ADMIN_HOST=0.0.0.0" in text
    console = "2026-11-28 04:37:49 [info     ] admin.listening   host=127.0.0.1 port=9090"
    assert "127.0.0.1" in not_ready_diagnosis(console, Workload())
    # Controls: listening on every address; readiness not on the admin port.
    assert not_ready_diagnosis(LISTENING % "0.0.0.0", Workload()) == ""
    assert not_ready_diagnosis(logs, Workload(admin_port=None, ready_path="/health")) == ""


def test_no_admin_server_at_all_is_diagnosed() -> None:
    """An image with no graceful admin server (plain uvicorn) never answers /readyz on 9090:
    the finding says how to judge it instead."""
    logs = "INFO:     Uvicorn running on http://0.0.0.0:8080 (Press CTRL+C to quit)\n"
    text = not_ready_diagnosis(logs, Workload())
    assert "no admin server" in text
    assert "--admin-port off" in text
