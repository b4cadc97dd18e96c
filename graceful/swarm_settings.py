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

    .. versionadded:: 0.1
    """
    return {
        "stop_grace_period": f"{math.ceil(config.stop_timeout)}s",
        "healthcheck": "graceful probe readyz",
        "update_order": "start-first",
        "endpoint_mode": "dnsrr",
        "lb_dns_max_s": round(config.delay + SWARM_WAIT_S, 3),
        "lb_check_max_s": round(config.delay, 3),
    }


def swarm_lines(config: Config) -> list[str]:
    """:func:`swarm_settings` as the lines ``graceful config`` prints.

    .. versionadded:: 0.1
    """
    s = swarm_settings(config)
    return [
        "docker swarm (deploy/swarm/stack.yml, docs/swarm.md):",
        f"  stop_grace_period    {s['stop_grace_period']}  (GRACEFUL_STOP_TIMEOUT, rounded up)",
        f"  healthcheck          {s['healthcheck']}  (ADMIN_PORT; a task joins DNS once it passes)",
        f"  update_config.order  {s['update_order']}",
        f"  endpoint_mode        {s['endpoint_mode']}  (a balancer on tasks.<service>)",
        (
            f"  balancer: stop routing to a stopping task within {s['lb_dns_max_s']:g} s of it "
            f"leaving DNS (hold obsolete + timeout resolve) or within {s['lb_check_max_s']:g} s "
            "of its /readyz turning 503 (inter x fall + timeout check)"
        ),
    ]
