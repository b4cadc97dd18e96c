"""One owner of the stop signals from the command's first line until the runtime's handlers.

``StartupSignals.capture()`` is the ``graceful`` command's first step (before asyncio,
structlog or the app are imported); ``take()`` hands the same handlers to ``serve``/``run``
once the configuration says which signals stop it, with what they caught. Before issue 18 a
separate recorder (``graceful._early``) re-raised what it caught for a second set of handlers:
three owners from ``exec`` to serving, now two (this one, then the runtime's ``StopSignals``).

In-process: each test puts back the handlers it found.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from graceful import Config, Runtime
from graceful.signals import LoadingStopped, StartupSignals


@pytest.fixture(autouse=True)
def handlers_put_back() -> Iterator[None]:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    StartupSignals._captured = None
    for sig, handler in before.items():
        signal.signal(sig, handler)


def runtime() -> Runtime:
    return Runtime(Config(), registry=CollectorRegistry())


def test_a_signal_caught_at_the_first_line_stops_the_runtime_it_is_handed_to() -> None:
    """SIGTERM before the command has read its configuration: recorded by the captured
    handlers, kept through ``take``, and the runtime stops at once when handed over. Control:
    without the capture the same signal finds the default handler (a dropped signal as PID 1,
    a killed process here: so it is checked, not sent)."""
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    StartupSignals.capture()
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    signal.raise_signal(signal.SIGTERM)
    startup = StartupSignals.take(["SIGTERM", "SIGINT"])
    assert startup.received == "SIGTERM"
    served = runtime()
    startup.hand_over(served)
    assert served.stopping
    assert served.stop_reason == "signal SIGTERM"
    startup.restore()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_the_captured_handlers_raise_loading_stopped_during_the_import() -> None:
    """The same handlers, inside ``importing()``: the import is aborted where it is, and the
    signal is recorded too, so an import that swallows the exception still stops the runtime
    it is handed to (tests/test_startup_faults.py runs it end to end)."""
    StartupSignals.capture()
    startup = StartupSignals.take(["SIGTERM"])
    with pytest.raises(LoadingStopped, match="SIGTERM"), startup.importing():
        signal.raise_signal(signal.SIGTERM)
    assert not startup.in_import
    served = runtime()
    startup.hand_over(served)
    assert served.stopping
    startup.restore()


def test_a_captured_signal_the_config_does_not_stop_on_reaches_its_own_handler() -> None:
    """GRACEFUL_SIGNALS=SIGTERM: a SIGINT caught before the configuration was read is raised
    again for Python's own handler (KeyboardInterrupt), not kept as a stop; SIGINT's handler
    is Python's again afterwards."""
    StartupSignals.capture()
    signal.raise_signal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        StartupSignals.take(["SIGTERM"])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_commands_that_stop_on_nothing_get_every_default_back() -> None:
    """``graceful config``, ``probe``, ``harness``: ``take(())`` puts back what was there."""
    StartupSignals.capture()
    startup = StartupSignals.take(())
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert startup.signals == ()


def test_a_handler_installed_over_them_is_left_in_place() -> None:
    """A handler that replaced ours (a library's, the runtime's own) is not undone when a
    signal is dropped from the set; ``restore`` at the very end still puts the original
    back."""

    def other(_signum: int, _frame: object) -> None:
        pass

    StartupSignals.capture()
    signal.signal(signal.SIGINT, other)
    startup = StartupSignals.take(["SIGTERM"])
    assert signal.getsignal(signal.SIGINT) is other
    startup.restore()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_signal_after_the_hand_over_still_stops_the_owner() -> None:
    """Between the hand-over and the runtime's own handlers (the runtime is being built, the
    supervisor has not started its loop): the signal asks the owner to stop."""
    startup = StartupSignals.take(["SIGTERM"])
    served = runtime()
    startup.hand_over(served)
    assert not served.stopping
    signal.raise_signal(signal.SIGTERM)
    assert served.stopping
    startup.restore()
