"""graceful.harness.report: the verdict table and the JSON report's contract."""

from __future__ import annotations

import json

from graceful.harness.report import Report, ScenarioResult, format_table


def result(name: str, passed: bool, *findings: str) -> ScenarioResult:
    return ScenarioResult(
        name=name,
        passed=passed,
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
    report = Report(image="img", scenarios=[result("stop-idle", True), result("x", False, "bad")])
    data = json.loads(report.to_json())
    assert set(data) == {"image", "scenarios"}
    entry = data["scenarios"][1]
    assert set(entry) == {
        "name",
        "passed",
        "exit_code",
        "stop_seconds",
        "requests",
        "acked",
        "lost",
        "findings",
    }
    assert entry["requests"] == {"sent": 10, "ok": 9, "failed": 1}
    assert entry["findings"] == ["bad"]
    assert entry["stop_seconds"] == 0.123
    assert not report.passed
    assert not Report(image="img").passed


def test_table_has_a_row_per_scenario_and_full_findings() -> None:
    long = "exited 137 after the full 3 s timeout: " + "x" * 200
    text = format_table(
        "img", [result("stop-idle", True), result("stop-under-load", False, long)], width=100
    )
    lines = text.splitlines()
    row = next(ln for ln in lines if ln.startswith("stop-under-load"))
    assert "FAIL" in row
    assert "137" in row
    assert len(row) <= 100
    assert row.endswith("…")
    assert f"  - {long}" in lines  # the full finding, below the table
    assert "1 of 2 scenarios passed" in text
