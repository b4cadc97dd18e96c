"""Verdicts: one result per scenario, as a plain-text table and as the JSON report.

A scenario ends in one of four verdicts (:class:`Verdict`): ``PASS`` (it ran and every check held),
``FAIL`` (a check did not hold), ``SKIPPED`` (it did not run: the image does not offer what it
needs, say an items endpoint) or ``INCONCLUSIVE`` (it ran, but the harness could not establish
what it had to, say work in flight at the stop). Only ``PASS`` counts as passed.

The JSON shape is a contract (``docs/harness.md``)::

    {"image": "...",
     "summary": {"PASS": n, "FAIL": n, "SKIPPED": n, "INCONCLUSIVE": n},
     "contract": [...],
     "scenarios": [{"name", "verdict", "passed", "exit_code", "stop_seconds",
                    "requests": {"sent", "ok", "failed", "expected_cut"}, "acked", "lost",
                    "findings": [...]}]}

Findings are plain sentences. Problems come first, then what was skipped (``skipped: ...``)
or could not be established (``inconclusive: ...``), then observations (``note: ...``).
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

__all__ = [
    "INCONCLUSIVE",
    "NOTE",
    "SKIPPED",
    "Report",
    "ScenarioResult",
    "Verdict",
    "format_table",
    "summary_line",
]

NOTE = "note: "
SKIPPED = "skipped: "
INCONCLUSIVE = "inconclusive: "
_NOT_PROBLEMS = (NOTE, SKIPPED, INCONCLUSIVE)


class Verdict(StrEnum):
    """How a scenario ended.

    .. versionadded:: 0.1
    """

    PASS = "PASS"  # it ran, and every check held
    FAIL = "FAIL"  # a check did not hold
    SKIPPED = "SKIPPED"  # it did not run: the image does not offer what it needs
    INCONCLUSIVE = "INCONCLUSIVE"  # it ran, but what it had to establish could not be


@dataclass(frozen=True, slots=True, kw_only=True)
class ScenarioResult:
    """The verdict of one scenario.

    Attributes:
        name: the scenario's name.
        verdict: PASS, FAIL, SKIPPED or INCONCLUSIVE.
        exit_code: the container's exit code at the end of the scenario (None when it
            never ran to an exit).
        stop_seconds: from the stop (or kill) request to the container's exit.
        sent: load requests sent.
        ok: load requests answered 2xx.
        failed: load requests that failed (any other outcome), including ``expected_cut``.
        expected_cut: of ``failed``, the requests the scenario cut on purpose (requests
            longer than the stop timeout, in ``stop-over-budget``): not failures of the
            service; the table shows them as ``cut N (expected)``.
        acked: writes the service acknowledged.
        lost: acknowledged writes missing after a restart on the same volume.
        findings: problems first, then reasons (``skipped: ...``, ``inconclusive: ...``),
            then notes (``note: ...``), in plain words.

    .. versionadded:: 0.1
    """

    name: str
    verdict: Verdict
    exit_code: int | None = None
    stop_seconds: float | None = None
    sent: int = 0
    ok: int = 0
    failed: int = 0
    expected_cut: int = 0
    acked: int = 0
    lost: int = 0
    findings: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        """The scenario ran and every check held (SKIPPED and INCONCLUSIVE are not passes)."""
        return self.verdict is Verdict.PASS

    @property
    def problems(self) -> tuple[str, ...]:
        """Findings that failed the scenario."""
        return tuple(f for f in self.findings if not f.startswith(_NOT_PROBLEMS))

    @property
    def reasons(self) -> tuple[str, ...]:
        """Why it was skipped, or what could not be established."""
        return tuple(f for f in self.findings if f.startswith((SKIPPED, INCONCLUSIVE)))

    @property
    def headline(self) -> str:
        """The finding that explains the verdict: the first problem, else the first reason,
        else the first note ("" when there is none)."""
        return next(iter(self.problems + self.reasons + self.findings), "")

    def to_dict(self) -> dict[str, Any]:
        """The scenario's entry in the JSON report."""
        return {
            "name": self.name,
            "verdict": self.verdict.value,
            "passed": self.passed,
            "exit_code": self.exit_code,
            "stop_seconds": None if self.stop_seconds is None else round(self.stop_seconds, 3),
            "requests": {
                "sent": self.sent,
                "ok": self.ok,
                "failed": self.failed,
                "expected_cut": self.expected_cut,
            },
            "acked": self.acked,
            "lost": self.lost,
            "findings": list(self.findings),
        }


@dataclass(slots=True)
class Report:
    """All scenario results for one image.

    .. versionadded:: 0.1
    """

    image: str
    scenarios: list[ScenarioResult] = field(default_factory=list)
    #: What the preflight established about the image, one line per check.
    contract: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Every scenario passed (and there was at least one)."""
        return bool(self.scenarios) and all(s.passed for s in self.scenarios)

    @property
    def failed(self) -> bool:
        """A scenario failed."""
        return any(s.verdict is Verdict.FAIL for s in self.scenarios)

    def counts(self) -> dict[Verdict, int]:
        """How many scenarios ended in each verdict (every verdict present, in order)."""
        seen = Counter(s.verdict for s in self.scenarios)
        return {v: seen[v] for v in Verdict}

    def exit_code(self, *, strict: bool = False) -> int:
        """0, or 1 when a scenario failed (with ``strict``, also when one was skipped or
        inconclusive, or none ran)."""
        if self.failed or (strict and not self.passed):
            return 1
        return 0

    def to_dict(self) -> dict[str, Any]:
        """The JSON report as a dict."""
        return {
            "image": self.image,
            "summary": {v.value: n for v, n in self.counts().items()},
            "contract": list(self.contract),
            "scenarios": [s.to_dict() for s in self.scenarios],
        }

    def to_json(self) -> str:
        """The JSON report as text."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def write_json(self, path: str | Path) -> None:
        """Write the JSON report, creating parent directories."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(self.to_json())

    def table(self, *, width: int | None = None) -> str:
        """The verdict table, then every finding of every scenario in full."""
        return format_table(self.image, self.scenarios, width=width, contract=self.contract)


_COLUMNS = ("scenario", "verdict", "exit", "stop s", "sent", "ok", "failed", "acked", "lost")


def summary_line(results: Sequence[ScenarioResult]) -> str:
    """``all 7 scenarios passed``, or the count of each verdict: ``5 passed, 1 failed,
    1 skipped (of 7 scenarios)``; never "all passed" unless every one did.

    .. versionadded:: 0.1
    """
    total = len(results)
    seen = Counter(r.verdict for r in results)
    if total and seen[Verdict.PASS] == total:
        return f"all {total} scenario{'s' * (total != 1)} passed"
    words = {
        Verdict.PASS: "passed",
        Verdict.FAIL: "failed",
        Verdict.SKIPPED: "skipped",
        Verdict.INCONCLUSIVE: "inconclusive",
    }
    parts = [f"{seen[v]} {word}" for v, word in words.items() if seen[v] or v is Verdict.PASS]
    return f"{', '.join(parts)} (of {total} scenario{'s' * (total != 1)})"


def _failed_cell(r: ScenarioResult) -> str:
    """``3``, or ``cut 4 (expected)`` / ``1 + cut 4 (expected)`` when the scenario cut
    requests on purpose."""
    cut = min(r.expected_cut, r.failed)
    if not cut:
        return str(r.failed)
    other = r.failed - cut
    return f"{other} + cut {cut} (expected)" if other else f"cut {cut} (expected)"


def format_table(
    image: str,
    results: Sequence[ScenarioResult],
    *,
    width: int | None = None,
    contract: Sequence[str] = (),
) -> str:
    """A plain-text table, one row per scenario, the finding that explains its verdict in the
    last column, followed by the full findings.

    Args:
        image: the image the scenarios ran against.
        results: the verdicts.
        width: the line width to fit the first-finding column in (the terminal's by default).
        contract: what the preflight established, shown above the table.
    """
    width = width or shutil.get_terminal_size((120, 24)).columns
    rows = [
        (
            r.name,
            r.verdict.value,
            "-" if r.exit_code is None else str(r.exit_code),
            "-" if r.stop_seconds is None else f"{r.stop_seconds:.2f}",
            str(r.sent),
            str(r.ok),
            _failed_cell(r),
            str(r.acked),
            str(r.lost),
        )
        for r in results
    ]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(_COLUMNS)]
    numeric = set(range(2, len(_COLUMNS)))

    def line(cells: Sequence[str], last: str) -> str:
        parts = [
            cell.rjust(w) if i in numeric else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ]
        head = "  ".join(parts)
        room = max(width - len(head) - 2, 20)
        if len(last) > room:
            last = last[: room - 1] + "…"
        return f"{head}  {last}".rstrip()

    out = [f"graceful harness: {image}", ""]
    if contract:
        out.append("contract (preflight):")
        out.extend(f"  - {c}" for c in contract)
        out.append("")
    out.append(line(_COLUMNS, "first finding"))
    out.append(line(["-" * w for w in widths], "-" * 13))
    for r, row in zip(results, rows, strict=True):
        out.append(line(row, r.headline or "-"))
    out.append("")
    out.append(summary_line(results))
    detailed = [r for r in results if r.findings]
    if detailed:
        out.append("")
        for r in detailed:
            out.append(f"{r.name} ({r.verdict.value}):")
            out.extend(f"  - {f}" for f in r.findings)
    return "\n".join(out) + "\n"
