"""How fast the ``swarm-update`` scenario's load balancer learns, as a named profile.

HAProxy finds the tasks of a Swarm service through Docker's DNS (``tasks.<service>``) and
checks each one's readiness. Two things decide how long it keeps routing to a task Swarm is
replacing: how long it keeps an address that left the DNS answer (``hold obsolete``; it asks
again every ``timeout resolve``) and how fast its health check marks a task down (``inter`` x
``fall``). Swarm takes a task out of DNS about :data:`SWARM_WAIT_S` seconds before it sends the
stop signal, so the service must keep serving for::

    GRACEFUL_DELAY >= min(hold obsolete + timeout resolve - SWARM_WAIT_S,  # DNS forgets it
                          inter x fall + timeout check)                    # /readyz went 503

``hold valid`` is passed on too, but HAProxy 2.6 drops an address that left the answer at the
next resolution whatever it says (measured: ``docs/swarm.md``). The ``default`` profile is the
everyday one of HAProxy's documentation (``hold valid 10s``, ``hold obsolete 30s``, ``timeout
resolve 1s``, ``inter 2s``, ``fall 3``); ``fast`` is the harness's ``rolling-restart``
balancer (``hold valid 1s``, ``hold obsolete 1s``, ``timeout resolve 500ms``, ``inter 500ms``,
``fall 1``), fast enough that Swarm's own wait covers it.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass, replace

from graceful.harness.cluster import Detection
from graceful.swarm_settings import SWARM_WAIT_S

__all__ = ["PROFILES", "SWARM_WAIT_S", "LbProfile", "add_swarm_options", "parse_profile"]


# Bounds a profile value must stay within: beyond them the scenario would wait minutes for a
# balancer that never catches up, which is a typo, not a setting anyone runs.
_LIMITS = {
    "hold-valid": (0.1, 300.0),
    "hold-obsolete": (0.0, 300.0),
    "resolve": (0.1, 60.0),
    "inter": (0.1, 60.0),
    "check-timeout": (0.1, 60.0),
}
_MAX_FALL = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class LbProfile:
    """The load balancer's discovery and health-check settings, in seconds.

    Args:
        name: ``default``, ``fast``, or a description of explicit values.
        hold_valid: HAProxy ``hold valid``: how long a valid answer outweighs a failed one.
        hold_obsolete: HAProxy ``hold obsolete``: how long an address that left the answer is
            kept.
        resolve: HAProxy ``timeout resolve``: how often the resolver wakes up to re-ask.
        inter: HAProxy ``inter``: seconds between two health checks of a task.
        fall: failed checks in a row that mark a task ``DOWN``.
        check_timeout: HAProxy ``timeout check``: the longest one check may take.

    Raises:
        ValueError: a value out of its bounds (the message names it).

    .. versionadded:: 0.1
    """

    name: str
    hold_valid: float
    hold_obsolete: float
    resolve: float
    inter: float
    fall: int
    check_timeout: float = 1.0

    def __post_init__(self) -> None:
        for key, value in (
            ("hold-valid", self.hold_valid),
            ("hold-obsolete", self.hold_obsolete),
            ("resolve", self.resolve),
            ("inter", self.inter),
            ("check-timeout", self.check_timeout),
        ):
            low, high = _LIMITS[key]
            if not low <= value <= high:
                raise ValueError(f"{key}={value:g} s is out of range ({low:g} to {high:g} s)")
        if isinstance(self.fall, bool) or not 1 <= self.fall <= _MAX_FALL:
            raise ValueError(f"fall={self.fall} is out of range (1 to {_MAX_FALL})")

    @property
    def dns_seconds(self) -> float:
        """The longest the balancer keeps a task Swarm took out of DNS: ``hold obsolete``
        plus the resolver's wake-up interval."""
        return self.hold_obsolete + self.resolve

    @property
    def detection(self) -> Detection:
        """How fast a health check notices a task whose ``/readyz`` went 503."""
        return Detection(inter_s=self.inter, fall=self.fall, check_timeout_s=self.check_timeout)

    def needed_delay(self, swarm_wait: float = SWARM_WAIT_S) -> float:
        """The smallest ``GRACEFUL_DELAY`` this balancer needs: the balancer stops routing to
        a task once DNS has forgotten it (``swarm_wait`` seconds before the signal) or once
        its health check has seen ``/readyz`` answer 503 (from the signal), whichever comes
        first."""
        return max(0.0, min(self.dns_seconds - swarm_wait, self.detection.seconds))

    def delay(self) -> int:
        """The ``GRACEFUL_DELAY`` the scenario runs with: :meth:`needed_delay` rounded up,
        plus one second for a loaded machine."""
        return math.ceil(self.needed_delay()) + 1

    def env(self) -> dict[str, str]:
        """The settings as ``haproxy_swarm.conf`` reads them from its environment."""
        return {
            "LB_HOLD_VALID": _haproxy_time(self.hold_valid),
            "LB_HOLD_OBSOLETE": _haproxy_time(self.hold_obsolete),
            "LB_RESOLVE": _haproxy_time(self.resolve),
            "LB_INTER": _haproxy_time(self.inter),
            "LB_FALL": str(self.fall),
            "LB_CHECK_TIMEOUT": _haproxy_time(self.check_timeout),
        }

    def describe(self) -> str:
        """``default (hold valid 10s, hold obsolete 30s, timeout resolve 1s, ...)``."""
        e = self.env()
        return (
            f"{self.name} (hold valid {e['LB_HOLD_VALID']}, hold obsolete "
            f"{e['LB_HOLD_OBSOLETE']}, timeout resolve {e['LB_RESOLVE']}, "
            f"inter {e['LB_INTER']}, fall {self.fall}, timeout check {e['LB_CHECK_TIMEOUT']})"
        )

    def arithmetic(self) -> str:
        """Why :meth:`needed_delay` is what it is, in one sentence."""
        dns = self.dns_seconds - SWARM_WAIT_S
        return (
            f"the balancer forgets a task {self.dns_seconds:g} s after Swarm drops it from DNS "
            f"({dns:g} s after the signal, Swarm waiting about {SWARM_WAIT_S:g} s) and marks it "
            f"down {self.detection.seconds:g} s after its /readyz turns 503 "
            f"({self.detection.describe()}): GRACEFUL_DELAY >= {self.needed_delay():g} s"
        )


PROFILES: dict[str, LbProfile] = {
    # The resolvers example of HAProxy's configuration manual, and its default checks.
    "default": LbProfile(
        name="default", hold_valid=10.0, hold_obsolete=30.0, resolve=1.0, inter=2.0, fall=3
    ),
    # The harness's rolling-restart balancer (graceful/harness/haproxy.cfg).
    "fast": LbProfile(
        name="fast", hold_valid=1.0, hold_obsolete=1.0, resolve=0.5, inter=0.5, fall=1
    ),
}

_KEYS = {
    "hold-valid": "hold_valid",
    "hold-obsolete": "hold_obsolete",
    "resolve": "resolve",
    "inter": "inter",
    "fall": "fall",
    "check-timeout": "check_timeout",
}


def parse_profile(text: str) -> LbProfile:
    """A profile from its command-line form: a name (``default``, ``fast``), explicit values
    (``hold-valid=5s,inter=1s,fall=2``, the others from ``default``), or both (``fast,fall=2``).

    Times take HAProxy's units (``500ms``, ``2s``; a bare number is seconds here); ``fall`` is
    a whole number.

    Raises:
        ValueError: an unknown name or key, a value that is not a time or a number, a value
            out of its bounds (the message names it).

    .. versionadded:: 0.1
    """
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in parts):
        raise ValueError(f"{text!r} is empty or has an empty item; known: {_known()}")
    base = PROFILES["default"]
    if "=" not in parts[0]:
        name = parts.pop(0)
        if name not in PROFILES:
            raise ValueError(f"unknown profile {name!r}; known: {_known()}")
        base = PROFILES[name]
    changes: dict[str, float | int] = {}
    for part in parts:
        key, _, value = part.partition("=")
        key = key.strip().lower()
        if key not in _KEYS:
            raise ValueError(f"unknown setting {key!r} in {text!r}; known: {_known()}")
        if key in changes:
            raise ValueError(f"{key} is given twice in {text!r}")
        changes[key] = _fall(value) if key == "fall" else _seconds(key, value)
    if not changes:
        return base
    described = ",".join(f"{k}={v:g}" for k, v in changes.items())
    return replace(
        base,
        name=f"{base.name}+{described}",
        **{_KEYS[k]: v for k, v in changes.items()},  # type: ignore[arg-type]
    )


def _known() -> str:
    return f"{', '.join(PROFILES)}, or KEY=VALUE items ({', '.join(_KEYS)})"


def _seconds(key: str, text: str) -> float:
    # ASCII digits only: re's \d takes any script's, which HAProxy would not.
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*", text, re.ASCII)
    if match is None:
        raise ValueError(f"{key}={text!r} is not a time (e.g. 500ms, 2s)")
    value = float(match.group(1)) / (1000.0 if match.group(2) == "ms" else 1.0)
    if not math.isfinite(value):
        raise ValueError(f"{key}={text!r} is not a time (e.g. 500ms, 2s)")
    return value


def _fall(text: str) -> int:
    value = text.strip()
    if not value.isascii() or not value.isdigit():
        raise ValueError(f"fall={text!r} is not a whole number of checks")
    return int(value)


def _haproxy_time(seconds: float) -> str:
    """HAProxy's time format, in whole milliseconds unless a whole number of seconds (its
    parser takes no fractions)."""
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def add_swarm_options(parser: argparse.ArgumentParser) -> None:
    """The ``swarm-update`` options of ``graceful harness run``.

    .. versionadded:: 0.1
    """
    parser.add_argument(
        "--swarm-lb",
        metavar="PROFILE",
        default="default",
        help="swarm-update: the balancer's discovery and check settings: default (HAProxy's "
        "everyday ones: hold valid 10s, hold obsolete 30s, inter 2s, fall 3), fast (hold valid "
        "1s, hold obsolete 1s, inter 500ms, fall 1), "
        "or KEY=VALUE items (hold-valid, hold-obsolete, resolve, inter, fall, check-timeout), "
        "after a "
        "profile name or alone (default: default)",
    )
    parser.add_argument(
        "--swarm-delay",
        metavar="S",
        help="swarm-update: the tasks' GRACEFUL_DELAY (default: what the profile needs + 1 s)",
    )
