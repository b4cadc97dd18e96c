"""Test child: a worker of the naive control (``tests/apps/supervise.py --naive``).

A graceful worker whose listener closes as a single process's would without a filter on new
connections (what every peer does): ``close_listeners`` gives the backlog two loop iterations,
and the kernel goes on queueing connections into the socket the supervisor still holds.
"""

from __future__ import annotations

import socket

import graceful.closing
from graceful.serve.worker import main


def _not_filtered(sock: socket.socket) -> bool:
    return False


if hasattr(graceful.closing, "refuse_new_connections"):
    graceful.closing.refuse_new_connections = _not_filtered  # type: ignore[assignment]

if __name__ == "__main__":
    raise SystemExit(main())
