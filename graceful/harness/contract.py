"""What an image was found to honour: the capabilities scenarios need, each established or not.

The preflight (:mod:`graceful.harness.preflight`) starts the image once before the scenarios
and tries each part of the workload: does a long request really take long, does the items
endpoint store and list, is there a stream that stays open, does readiness answer. A scenario
names the capabilities it cannot run without (``needs``); one that is missing makes it
SKIPPED, with the preflight's words for why, instead of a pass that tested nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from graceful.harness.workload import Workload

__all__ = ["Capability", "Check", "Contract"]


class Capability(StrEnum):
    """A part of the HTTP contract a scenario can rely on.

    .. versionadded:: 0.1
    """

    WORK = "work"  # the work URL answers 2xx (steady load)
    LONG_WORK = "long work"  # a request for N s takes N s (work in flight across a stop)
    ITEMS = "items"  # POST stores an id, GET lists it (acknowledged writes)
    STREAM = "stream"  # the stream path answers and stays open (streams across a stop)
    ADMIN_READY = "admin readiness"  # graceful's /readyz on an admin port (load balancers)


@dataclass(frozen=True, slots=True)
class Check:
    """One capability as the preflight found it.

    Attributes:
        capability: what was checked.
        established: whether the image honours it.
        detail: what was seen, in plain words (why not, when it does not).

    .. versionadded:: 0.1
    """

    capability: Capability
    established: bool
    detail: str

    def line(self) -> str:
        """``long work: yes: GET /work?ms=1000 took 1.00 s``."""
        return f"{self.capability.value}: {'yes' if self.established else 'no'}: {self.detail}"


@dataclass(frozen=True, slots=True)
class Contract:
    """The capabilities of one image, as established (or assumed, without a preflight).

    .. versionadded:: 0.1
    """

    checks: Mapping[Capability, Check] = field(default_factory=dict)

    @classmethod
    def assumed(cls, workload: Workload) -> Contract:
        """What the workload's settings promise, unchecked (used when no preflight ran)."""
        configured = {
            Capability.WORK: True,
            Capability.LONG_WORK: True,
            Capability.ITEMS: workload.has_items,
            Capability.STREAM: workload.has_stream,
            Capability.ADMIN_READY: workload.has_admin,
        }
        return cls(
            {
                cap: Check(cap, ok, "assumed from the settings" if ok else "not configured")
                for cap, ok in configured.items()
            }
        )

    def has(self, capability: Capability) -> bool:
        """Whether ``capability`` was established (unchecked ones count as not)."""
        check = self.checks.get(capability)
        return check is not None and check.established

    def why_not(self, capability: Capability) -> str:
        """Why ``capability`` is missing, in plain words."""
        check = self.checks.get(capability)
        if check is None:
            return f"{capability.value} was not checked"
        return f"{capability.value}: {check.detail}"

    def missing(self, needs: Iterable[Capability]) -> list[Capability]:
        """Which of ``needs`` were not established."""
        return [c for c in needs if not self.has(c)]

    def lines(self) -> list[str]:
        """One line per check, in the order they were made."""
        return [check.line() for check in self.checks.values()]
