"""graceful.harness.container: what the harness reads about images and PID 1, without an
engine: shell-form detection, signal names, /proc signal masks, Docker's timestamps."""

from __future__ import annotations

import pytest

from graceful.harness.container import (
    ImageInfo,
    _mask,
    _parse_time,
    signal_name,
    signal_number_or_none,
)


def image(
    cmd: tuple[str, ...] = ("python3", "app.py"), entrypoint: tuple[str, ...] = ()
) -> ImageInfo:
    return ImageInfo(ref="x", id="sha", entrypoint=entrypoint, cmd=cmd, stop_signal="SIGTERM")


def test_shell_form_is_detected() -> None:
    assert image(("/bin/sh", "-c", "python3 app.py")).shell_form
    assert image((), entrypoint=("sh", "-c", "exec app")).shell_form
    assert not image(("python3", "app.py")).shell_form
    assert not image(("/bin/sh", "start.sh")).shell_form


def test_signal_helpers_and_masks() -> None:
    assert signal_name("15") == "SIGTERM"
    assert signal_name("QUIT") == "SIGQUIT"
    # bits 2 (SIGINT) and 15 (SIGTERM) of SigCgt
    status = "Name:\tpython3\nSigIgn:\t0000000001001000\nSigCgt:\t0000000000004002\n"
    assert _mask(status, "SigCgt") == frozenset({2, 15})
    assert _mask(status, "SigIgn") == frozenset({13, 25})
    assert _parse_time("2025-01-02T03:04:05.5Z") == pytest.approx(1735787045.5)
    assert _parse_time("0001-01-01T00:00:00Z") is None


def test_unknown_signal_names_are_none() -> None:
    assert signal_number_or_none("SIGTERM") == 15
    assert signal_number_or_none("NOPE") is None
    assert signal_number_or_none("") is None
