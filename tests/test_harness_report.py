"""graceful.harness.report: verdicts, the verdict table and the JSON report's contract."""

from __future__ import annotations

import json

from graceful.harness.report import Report, ScenarioResult, Verdict, format_table, summary_line


def result(name: str, verdict: Verdict, *findings: str) -> ScenarioResult:
    passed = verdict is Verdict.PASS
    return ScenarioResult(
        name=name,
        verdict=verdict,
        exit_code=0 if passed else 137,
        stop_seconds=0.1234,
        sent=10,
        ok=9,
        failed=1,
        acked=5,
        lost=0 if passed else 2,
        findings=findings,
    )


def test_json_report_has_exactly_the_contract_keys() -> None:
    report = Report(
        image="img",
        scenarios=[result("stop-idle", Verdict.PASS), result("x", Verdict.FAIL, "bad")],
        contract=["work: yes: GET /work?ms=0 answered 200"],
    )
    data = json.loads(report.to_json())
    assert set(data) == {"image", "summary", "contract", "scenarios"}
    assert data["summary"] == {"PASS": 1, "FAIL": 1, "SKIPPED": 0, "INCONCLUSIVE": 0}
    assert data["contract"] == ["work: yes: GET /work?ms=0 answered 200"]
    entry = data["scenarios"][1]
    assert set(entry) == {
        "name",
        "verdict",
        "passed",
        "exit_code",
        "stop_seconds",
        "requests",
        "acked",
        "lost",
        "findings",
    }
    assert (entry["verdict"], entry["passed"]) == ("FAIL", False)
    assert entry["requests"] == {"sent": 10, "ok": 9, "failed": 1, "expected_cut": 0}
    assert entry["findings"] == ["bad"]
    assert entry["stop_seconds"] == 0.123
    assert not report.passed
    assert not Report(image="img").passed


def test_requests_cut_on_purpose_show_as_expected_not_as_failures() -> None:
    """stop-over-budget cuts its long requests on purpose: the row says so (the JSON keeps
    them in failed, and says how many of them were expected); a real failure beside them
    still shows as one (the control)."""
    import dataclasses

    over = dataclasses.replace(
        result("stop-over-budget", Verdict.PASS), sent=24, ok=20, failed=4, expected_cut=4
    )
    mixed = dataclasses.replace(over, name="mixed", ok=19, failed=5)
    plain = result("stop-idle", Verdict.FAIL)
    table = format_table("img", [over, mixed, plain], width=200)
    rows = {line.split()[0]: line for line in table.splitlines() if line.startswith(("s", "m"))}
    assert "cut 4 (expected)" in rows["stop-over-budget"]
    assert "failed" not in rows["stop-over-budget"]
    assert " 1 + cut 4 (expected)" in rows["mixed"]
    assert "(expected)" not in rows["stop-idle"]
    entry = over.to_dict()["requests"]
    assert entry == {"sent": 24, "ok": 20, "failed": 4, "expected_cut": 4}


def test_only_pass_is_passed_and_only_fail_fails_the_exit_code() -> None:
    """A scenario that did not run (or could not establish its point) is not a pass: the
    summary never says "all passed" then, and --strict turns it into a non-zero exit."""
    skipped = result("kill-under-load", Verdict.SKIPPED, "skipped: needs items: no items path")
    passed = result("stop-idle", Verdict.PASS)
    report = Report(image="img", scenarios=[passed, skipped])
    assert not skipped.passed
    assert skipped.problems == ()
    assert skipped.headline == "skipped: needs items: no items path"
    assert not report.passed
    assert not report.failed
    assert report.exit_code() == 0
    assert report.exit_code(strict=True) == 1
    assert summary_line(report.scenarios) == "1 passed, 1 skipped (of 2 scenarios)"
    assert "all" not in summary_line(report.scenarios)
    # Control: every scenario passed.
    assert summary_line([passed, passed]) == "all 2 scenarios passed"
    assert Report(image="img", scenarios=[passed]).exit_code(strict=True) == 0
    failing = Report(image="img", scenarios=[passed, result("x", Verdict.FAIL, "bad")])
    assert failing.exit_code() == 1
    inconclusive = result("y", Verdict.INCONCLUSIVE, "inconclusive: nothing was in flight")
    mixed = [passed, inconclusive, skipped, result("x", Verdict.FAIL, "bad")]
    assert summary_line(mixed) == "1 passed, 1 failed, 1 skipped, 1 inconclusive (of 4 scenarios)"


def test_table_has_a_row_per_scenario_and_full_findings() -> None:
    long = "exited 137 after the full 3 s timeout: " + "x" * 200
    text = format_table(
        "img",
        [
            result("stop-idle", Verdict.PASS),
            result("stop-under-load", Verdict.FAIL, long),
            result("kill-under-load", Verdict.SKIPPED, "skipped: needs items: no items path"),
        ],
        width=100,
        contract=["items: no: no items path (--items-path)"],
    )
    lines = text.splitlines()
    row = next(ln for ln in lines if ln.startswith("stop-under-load"))
    assert "FAIL" in row
    assert "137" in row
    assert len(row) <= 100
    assert row.endswith("…")
    assert f"  - {long}" in lines  # the full finding, below the table
    skipped = next(ln for ln in lines if ln.startswith("kill-under-load"))
    assert "SKIPPED" in skipped
    assert "skipped: needs items" in skipped
    assert "1 passed, 1 failed, 1 skipped (of 3 scenarios)" in text
    assert "  - items: no: no items path (--items-path)" in lines
