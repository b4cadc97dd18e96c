"""The container harness: proves on a real Docker engine that an image stops correctly.

``graceful harness run --image IMAGE`` runs every scenario (see ``graceful harness list``);
from Python, :func:`graceful.harness.scenarios.run_scenarios`; from pytest, the fixtures of
:mod:`graceful.harness.pytest_plugin`.

Nothing is imported here, so loading the pytest plugin (in every pytest run) stays cheap and
never needs the ``docker`` package.
"""

from __future__ import annotations

__all__: list[str] = []
