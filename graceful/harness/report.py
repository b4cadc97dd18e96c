"""Verdicts: one result per scenario, as a plain-text table and as the JSON report.

The JSON shape is a contract (``docs/harness.md``)::

    {"image": "...",
     "scenarios": [{"name", "passed", "exit_code", "stop_seconds",
                    "requests": {"sent", "ok", "failed"}, "acked", "lost",
                    "findings": [...]}]}

Findings are plain sentences. Problems come first; a finding that starts with ``note:`` is
an observation that did not fail the scenario.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["NOTE", "Report", "ScenarioResult", "format_table"]

NOTE = "note: "


@dataclass(frozen=True, slots=True, kw_only=True)
class ScenarioResult:
    """The verdict of one scenario.

    Attributes:
        name: the scenario's name.
        passed: every assertion held.
        exit_code: the container's exit code at the end of the scenario (None when it
            never ran to an exit).
        stop_seconds: from the stop (or kill) request to the container's exit.
        sent: load requests sent.
        ok: load requests answered 2xx.
        failed: load requests that failed (any other outcome).
        acked: writes the service acknowledged.
        lost: acknowledged writes missing after a restart on the same volume.
        findings: problems first, then notes (``note: ...``), in plain words.

    .. versionadded:: 0.1
    """

    name: str
    passed: bool
    exit_code: int | None = None
    stop_seconds: float | None = None
    sent: int = 0
    ok: int = 0
    failed: int = 0
    acked: int = 0
    lost: int = 0
    findings: tuple[str, ...] = ()

    @property
    def problems(self) -> tuple[str, ...]:
        """Findings that failed the scenario."""
        return tuple(f for f in self.findings if not f.startswith(NOTE))

    def to_dict(self) -> dict[str, Any]:
        """The scenario's entry in the JSON report."""
        return {
            "name": self.name,
            "passed": self.passed,
            "exit_code": self.exit_code,
            "stop_seconds": None if self.stop_seconds is None else round(self.stop_seconds, 3),
            "requests": {"sent": self.sent, "ok": self.ok, "failed": self.failed},
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

    @property
    def passed(self) -> bool:
        """Every scenario passed (and there was at least one)."""
        return bool(self.scenarios) and all(s.passed for s in self.scenarios)

    def to_dict(self) -> dict[str, Any]:
        """The JSON report as a dict."""
        return {"image": self.image, "scenarios": [s.to_dict() for s in self.scenarios]}

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
        return format_table(self.image, self.scenarios, width=width)


_COLUMNS = ("scenario", "verdict", "exit", "stop s", "sent", "ok", "failed", "acked", "lost")


def format_table(image: str, results: Sequence[ScenarioResult], *, width: int | None = None) -> str:
    """A plain-text table, one row per scenario, the first finding in the last column,
    followed by the full findings.

    Args:
        image: the image the scenarios ran against.
        results: the verdicts.
        width: the line width to fit the first-finding column in (the terminal's by default).
    """
    width = width or shutil.get_terminal_size((120, 24)).columns
    rows = [
        (
            r.name,
            "PASS" if r.passed else "FAIL",
            "-" if r.exit_code is None else str(r.exit_code),
            "-" if r.stop_seconds is None else f"{r.stop_seconds:.2f}",
            str(r.sent),
            str(r.ok),
            str(r.failed),
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
    out.append(line(_COLUMNS, "first finding"))
    out.append(line(["-" * w for w in widths], "-" * 13))
    for r, row in zip(results, rows, strict=True):
        out.append(line(row, r.findings[0] if r.findings else "-"))
    passed = sum(1 for r in results if r.passed)
    out.append("")
    out.append(f"{passed} of {len(results)} scenarios passed")
    detailed = [r for r in results if r.findings]
    if detailed:
        out.append("")
        for r in detailed:
            out.append(f"{r.name} ({'PASS' if r.passed else 'FAIL'}):")
            out.extend(f"  - {f}" for f in r.findings)
    return "\n".join(out) + "\n"
