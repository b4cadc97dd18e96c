"""Test child: ``run_supervisor`` for a target, with options and settings from the environment.

Usage: ``python tests/apps/supervise.py module:attr [--naive]`` with ``HOST``, ``PORT``,
``WEB_CONCURRENCY``, ``ADMIN_PORT``, ``GRACEFUL_STOP_TIMEOUT``, ... as ``graceful serve`` reads
them.

``--naive`` runs the control for the backlog tests: a supervisor that keeps its copy of the
listener until it exits, with workers that close theirs without draining the backlog (what a
supervisor does when it shares a socket without thinking about who closes it last).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any

from graceful.config import Config
from graceful.serve.control import WorkerStart
from graceful.serve.options import ServeOptions
from graceful.serve.stopping import SupervisorSettings
from graceful.serve.supervisor import Supervisor


class NaiveSupervisor(Supervisor):
    """The control: the supervisor's copy outlives the workers', and nobody drains the backlog.

    Its workers (``tests/apps/naive_worker.py``) close their listeners as peers do: no filter
    on new connections, two loop iterations for the backlog.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pool.worker_module = "tests.apps.naive_worker"

    def _release_listener(self) -> None:
        pass  # kept until the supervisor exits

    def _worker_start(self, index: int) -> WorkerStart:
        return replace(super()._worker_start(index), backlog_guard=False)


def main() -> int:
    spec = sys.argv[1]
    options = ServeOptions.from_env()
    config = Config.from_env(**options.config_overrides())
    kind = NaiveSupervisor if "--naive" in sys.argv[2:] else Supervisor
    return kind(spec, options, config, SupervisorSettings.from_env()).run()


if __name__ == "__main__":
    raise SystemExit(main())
