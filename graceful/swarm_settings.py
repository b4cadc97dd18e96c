"""The Docker Swarm settings that match a :class:`~graceful.config.Config` (``graceful config``).

Swarm stops a task the way ``docker stop`` does, after ``stop_grace_period``, and takes it out
of its DNS (``tasks.<service>``) about :data:`SWARM_WAIT_S` seconds before the signal. A
balancer in front must stop routing to the task before the service closes its listeners at the
end of ``GRACEFUL_DELAY``: through DNS within ``GRACEFUL_DELAY + SWARM_WAIT_S`` seconds of the
task leaving it, or through its readiness check within ``GRACEFUL_DELAY`` seconds of the
signal. ``docs/swarm.md`` explains the mapping; ``deploy/swarm/stack.yml`` applies it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from graceful.config import Config

__all__ = ["SWARM_WAIT_S", "swarm_lines", "swarm_settings"]

#: Seconds between Swarm dropping a task from DNS and sending it the stop signal, as measured
#: on Docker 20.10 (the engine deactivates the task's service binding, then waits).
SWARM_WAIT_S = 2.0


def swarm_settings(config: Config) -> dict[str, str | float]:
    """The service settings and balancer bounds that fit ``config``.

    Returns:
        ``stop_grace_period`` (a Swarm duration, at least the stop timeout), the health check,
        the update order, the endpoint mode, and the longest a balancer may take to stop
        routing to a stopping task: through DNS (``lb_dns_max_s``, from Swarm dropping it:
        ``hold obsolete`` + ``timeout resolve`` in HAProxy) and through its readiness check
        (``lb_check_max_s``, from the signal: ``inter`` x ``fall`` + ``timeout check``).

    The bounds use the delay graceful applies: ``GRACEFUL_DELAY``, shortened when the stop
    timeout would leave no drain (``delay_s``).

    .. versionadded:: 0.1
    """
    from graceful.budget import Budget

    delay = min(config.delay, Budget.plan(config, 0.0, log=False).delay_end)
    return {
        "stop_grace_period": f"{math.ceil(config.stop_timeout)}s",
        "healthcheck": "graceful probe readyz",
        "update_order": "start-first",
        "endpoint_mode": "dnsrr",
        "delay_s": round(delay, 3),
        "lb_dns_max_s": round(delay + SWARM_WAIT_S, 3),
        "lb_check_max_s": round(delay, 3),
    }


def swarm_lines(config: Config) -> list[str]:
    """:func:`swarm_settings` as the lines ``graceful config`` prints.

    .. versionadded:: 0.1
    """
    s = swarm_settings(config)
    if config.admin_port is None:
        health = "(needs ADMIN_PORT, unset here: no /readyz to probe; set it in the service)"
    else:
        health = f"(ADMIN_PORT {config.admin_port}; a task joins DNS once it passes)"
    lines = [
        "docker swarm (deploy/swarm/stack.yml, docs/swarm.md):",
        f"  stop_grace_period    {s['stop_grace_period']}  (GRACEFUL_STOP_TIMEOUT, rounded up)",
        f"  healthcheck          {s['healthcheck']}  {health}",
        f"  update_config.order  {s['update_order']}",
        f"  endpoint_mode        {s['endpoint_mode']}  (a balancer on tasks.<service>)",
        (
            f"  balancer: stop routing to a stopping task within {s['lb_dns_max_s']:g} s of it "
            f"leaving DNS (hold obsolete + timeout resolve) or within {s['lb_check_max_s']:g} s "
            "of its /readyz turning 503 (inter x fall + timeout check)"
        ),
    ]
    delay = float(s["delay_s"])
    if delay < config.delay:
        lines.append(
            f"  (these use the delay graceful applies, {delay:g} s: GRACEFUL_DELAY="
            f"{config.delay:g} is shortened so GRACEFUL_STOP_TIMEOUT leaves a drain)"
        )
    if config.admin_port is not None and config.admin_host in ("127.0.0.1", "::1", "localhost"):
        lines.append(
            f"  warning: ADMIN_HOST={config.admin_host}: the health check (inside the task) "
            "reaches /readyz, a balancer in another container cannot; set ADMIN_HOST=0.0.0.0"
        )
    return lines
