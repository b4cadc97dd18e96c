"""A soak's fault types and their seeded sequence; how a round is judged; the results: one
row per round, a table per fault type, and the JSON report.

The JSON shape is a contract (``docs/harness.md``)::

    {"image": "...", "seed": 1234, "faults": ["stop", ...], "passed": true,
     "rounds": [{"round", "fault", "exit_code", "stop_seconds", "sent", "acked", "lost",
                 "failed", "cut", "problems": [...], "note"}],
     "by_fault": {"stop": {"rounds", "sent", "failed", "cut", "acked", "lost",
                           "exit_codes": {"0": n}, "slowest_stop_seconds"}},
     "totals": {"rounds", "sent", "acked", "lost", "failed", "cut"},
     "contract": [...], "notes": [...]}
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from graceful.harness.container import StopResult
from graceful.harness.judges import describe_exit
from graceful.harness.load import Kind, Record, describe_failures

__all__ = [
    "FAULTS",
    "Fault",
    "FaultSummary",
    "RoundResult",
    "SoakReport",
    "fault_sequence",
    "judge_round",
]


class Fault(StrEnum):
    """A way a soak round ends its container.

    .. versionadded:: 0.1
    """

    STOP = "stop"  # docker stop -t <stop timeout>
    STOP_SHORT = "stop-short"  # docker stop with a short timeout (the service told so)
    KILL = "kill"  # docker kill (SIGKILL)
    SIGNAL_STORM = "signal-storm"  # the stop signal several times at once
    PAUSE_KILL = "pause-kill"  # docker pause, then docker kill
    POWER_LOSS = "power-loss"  # SIGKILL and the unsynced data dropped (FUSE volume)


#: Every fault type, in the order of the report's table.
FAULTS: tuple[Fault, ...] = tuple(Fault)


def fault_sequence(faults: Sequence[Fault], rounds: int, seed: int) -> list[Fault]:
    """``rounds`` faults: the chosen ones in a shuffled order, reshuffled each cycle, so each
    type gets its share and the same arguments give the same sequence.

    .. versionadded:: 0.1
    """
    rng = random.Random(seed)
    out: list[Fault] = []
    while len(out) < rounds:
        cycle = list(faults)
        rng.shuffle(cycle)
        out.extend(cycle)
    return out[:rounds]


# Faults that give the service its stop: every request sent before them must be answered.
_GRACEFUL = frozenset({Fault.STOP, Fault.STOP_SHORT, Fault.SIGNAL_STORM})
_EXPECTED_EXIT: dict[Fault, frozenset[int]] = {
    Fault.STOP: frozenset({0}),
    Fault.STOP_SHORT: frozenset({0}),
    Fault.SIGNAL_STORM: frozenset({0, 5}),  # 5: graceful's documented forced exit
    Fault.KILL: frozenset({137}),
    Fault.PAUSE_KILL: frozenset({137}),
    Fault.POWER_LOSS: frozenset({137}),
}
_LOAD = (Kind.WORK, Kind.LONG, Kind.WRITE)


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundResult:
    """One round of a soak.

    Attributes:
        index: the round's number, from 1.
        fault: what ended the round's container.
        exit_code: the container's exit code (None when it did not exit).
        stop_seconds: from the fault (the kill, for ``pause-kill``) to the exit.
        sent: load requests sent in the round.
        failed: accepted requests that failed: sent before a stop and not answered 2xx, or
            (for the kills) failed before the kill.
        cut: requests in flight when a kill ended the container (expected, not failures).
        acked: writes acknowledged in the round.
        lost: acknowledged writes (of any round so far) first found missing after this
            round's fault.
        problems: what failed the round, in plain words.
        note: what else is worth knowing (what a power cut dropped).

    .. versionadded:: 0.1
    """

    index: int
    fault: Fault
    exit_code: int | None
    stop_seconds: float | None
    sent: int = 0
    failed: int = 0
    cut: int = 0
    acked: int = 0
    lost: int = 0
    problems: tuple[str, ...] = ()
    note: str = ""

    @property
    def passed(self) -> bool:
        """Nothing failed the round."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """The round's entry in the JSON report."""
        return {
            "round": self.index,
            "fault": self.fault.value,
            "exit_code": self.exit_code,
            "stop_seconds": None if self.stop_seconds is None else round(self.stop_seconds, 3),
            "sent": self.sent,
            "acked": self.acked,
            "lost": self.lost,
            "failed": self.failed,
            "cut": self.cut,
            "problems": list(self.problems),
            "note": self.note,
        }

    def line(self, total: int) -> str:
        """``round 7/100 kill: exit 137 in 0.31 s, 45 sent, 0 failed, 12 acked, 0 lost``."""
        exit_text = "no exit" if self.exit_code is None else f"exit {self.exit_code}"
        took = "" if self.stop_seconds is None else f" in {self.stop_seconds:.2f} s"
        head = f"{'PASS' if self.passed else 'FAIL'} round {self.index}/{total} {self.fault}"
        text = (
            f"{head}: {exit_text}{took}, {self.sent} sent, {self.failed} failed, "
            f"{self.acked} acked, {self.lost} lost"
        )
        text += f" ({self.note})" if self.note else ""
        return text + "".join(f"\n  - {p}" for p in self.problems)


def judge_round(
    records: Sequence[Record], fault: Fault, began: float, stop: StopResult | None
) -> RoundResult:
    """Judge a round's requests and exit (``index`` and ``lost`` are the caller's).

    Every request sent before a stop (``stop``, ``stop-short``, ``signal-storm``) must be
    answered 2xx. For the kills, those in flight when the kill came (answered after
    ``began``) are *cut*, and only a request that failed before it is a failure. The exit
    code must be the one the fault explains.

    Args:
        records: the round's ledger records (reads are left out).
        fault: the round's fault.
        began: when the fault began (the load stopped then), monotonic.
        stop: the container's exit, None when it never exited.

    .. versionadded:: 0.1
    """
    load = [r for r in records if r.kind in _LOAD]
    graceful = fault in _GRACEFUL
    accepted = [r for r in load if graceful or r.answered <= began]
    failed = [r for r in accepted if not r.ok]
    problems: list[str] = []
    if stop is None:
        problems.append("the container did not exit")
    elif stop.exit_code not in _EXPECTED_EXIT[fault]:
        expected = " or ".join(str(c) for c in sorted(_EXPECTED_EXIT[fault]))
        said = describe_exit(stop.exit_code, stop)
        if graceful and stop.exit_code == 137:
            said = (
                f"exited 137 after {stop.seconds:.2f} s: the stop did not end in time, SIGKILL did"
            )
        problems.append(f"{said} (expected {expected})")
    if failed:
        leads = sorted((began - r.sent) * 1000 for r in failed)
        when = f", sent {leads[0]:.0f}-{leads[-1]:.0f} ms before the {fault}" if graceful else ""
        problems.append(
            f"{len(failed)} of {len(accepted)} accepted requests failed "
            f"({describe_failures(failed)}{when})"
        )
    return RoundResult(
        index=0,
        fault=fault,
        exit_code=None if stop is None else stop.exit_code,
        stop_seconds=None if stop is None else stop.seconds,
        sent=len(load),
        failed=len(failed),
        cut=sum(1 for r in load if not r.ok and not graceful and r.answered > began),
        acked=sum(1 for r in load if r.acked),
        problems=tuple(problems),
    )


@dataclass(frozen=True, slots=True)
class FaultSummary:
    """The rounds of one fault type, added up.

    .. versionadded:: 0.1
    """

    rounds: int
    sent: int
    failed: int
    cut: int
    acked: int
    lost: int
    exit_codes: Counter[int | None]
    slowest_stop: float | None

    @classmethod
    def of(cls, rounds: Iterable[RoundResult]) -> FaultSummary:
        """Add up ``rounds``."""
        chosen = list(rounds)
        stops = [r.stop_seconds for r in chosen if r.stop_seconds is not None]
        return cls(
            rounds=len(chosen),
            sent=sum(r.sent for r in chosen),
            failed=sum(r.failed for r in chosen),
            cut=sum(r.cut for r in chosen),
            acked=sum(r.acked for r in chosen),
            lost=sum(r.lost for r in chosen),
            exit_codes=Counter(r.exit_code for r in chosen),
            slowest_stop=max(stops, default=None),
        )

    def exit_text(self) -> str:
        """``0 x17, 137 x1`` (``none`` for a container that did not exit)."""
        parts = sorted(self.exit_codes.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))
        return ", ".join(f"{'none' if c is None else c} x{n}" for c, n in parts) or "-"

    def to_dict(self) -> dict[str, Any]:
        """The fault type's entry in the JSON report."""
        return {
            "rounds": self.rounds,
            "sent": self.sent,
            "failed": self.failed,
            "cut": self.cut,
            "acked": self.acked,
            "lost": self.lost,
            "exit_codes": {str(c): n for c, n in self.exit_codes.items()},
            "slowest_stop_seconds": (
                None if self.slowest_stop is None else round(self.slowest_stop, 3)
            ),
        }


@dataclass(slots=True)
class SoakReport:
    """Every round of a soak on one image.

    .. versionadded:: 0.1
    """

    image: str
    seed: int
    faults: tuple[Fault, ...]
    rounds: list[RoundResult] = field(default_factory=list)
    #: What the preflight established about the image.
    contract: list[str] = field(default_factory=list)
    #: Observations about the whole soak (what was left out, what was not checked).
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Every round ran and passed (and there was at least one)."""
        return bool(self.rounds) and all(r.passed for r in self.rounds)

    def exit_code(self) -> int:
        """0 when every round passed, else 1."""
        return 0 if self.passed else 1

    def by_fault(self) -> dict[Fault, FaultSummary]:
        """A summary per fault type that ran, in :data:`FAULTS` order."""
        return {
            fault: FaultSummary.of(r for r in self.rounds if r.fault is fault)
            for fault in FAULTS
            if any(r.fault is fault for r in self.rounds)
        }

    def totals(self) -> FaultSummary:
        """Every round added up."""
        return FaultSummary.of(self.rounds)

    def replay(self) -> str:
        """The options that replay this soak's sequence."""
        faults = ",".join(self.faults)
        return f"--seed {self.seed} --rounds {len(self.rounds)} --faults {faults}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON report as a dict."""
        totals = self.totals()
        return {
            "image": self.image,
            "seed": self.seed,
            "faults": [f.value for f in self.faults],
            "passed": self.passed,
            "rounds": [r.to_dict() for r in self.rounds],
            "by_fault": {f.value: s.to_dict() for f, s in self.by_fault().items()},
            "totals": {
                "rounds": totals.rounds,
                "sent": totals.sent,
                "acked": totals.acked,
                "lost": totals.lost,
                "failed": totals.failed,
                "cut": totals.cut,
            },
            "contract": list(self.contract),
            "notes": list(self.notes),
        }

    def write_json(self, path: str | Path) -> None:
        """Write the JSON report, creating parent directories."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def table(self) -> str:
        """The per-fault table, the verdict, and every failed round's problems."""
        rows = [(f.value, s) for f, s in self.by_fault().items()]
        rows.append(("total", self.totals()))
        head = ("fault", "rounds", "sent", "failed", "cut", "acked", "lost", "exit codes")
        cells = [
            (
                name,
                str(s.rounds),
                str(s.sent),
                str(s.failed),
                str(s.cut),
                str(s.acked),
                str(s.lost),
                s.exit_text(),
                "-" if s.slowest_stop is None else f"{s.slowest_stop:.2f}",
            )
            for name, s in rows
        ]
        out = [
            f"graceful harness soak: {self.image}",
            f"seed {self.seed} (replay: {self.replay()})",
            "",
            *_columns((*head, "slowest stop s"), cells, left={0, 7}),
            "",
            "cut: requests in flight when a kill ended the container (expected, not failures)",
            "",
            self.summary(),
        ]
        failed = [r for r in self.rounds if not r.passed]
        if failed:
            out.append("")
            out.extend(r.line(len(self.rounds)) for r in failed)
        out.extend(f"note: {n}" for n in self.notes)
        return "\n".join(out) + "\n"

    def summary(self) -> str:
        """``PASS: 100 rounds, 0 of 1700 acknowledged writes lost, 0 of 9000 requests
        failed``."""
        t = self.totals()
        verdict = "PASS" if self.passed else "FAIL"
        failed_rounds = sum(1 for r in self.rounds if not r.passed)
        tail = f" ({failed_rounds} of them failed)" if failed_rounds else ""
        return (
            f"{verdict}: {t.rounds} rounds, {t.lost} of {t.acked} acknowledged writes lost, "
            f"{t.failed} of {t.sent} requests failed{tail}"
        )


def _columns(head: Sequence[str], rows: Sequence[Sequence[str]], *, left: set[int]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(head), line(["-" * w for w in widths]), *(line(r) for r in rows)]
