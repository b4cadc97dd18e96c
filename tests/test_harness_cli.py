"""graceful.harness.cli: ``graceful harness list`` and ``run``'s argument checks (no engine)."""

from __future__ import annotations

import argparse

import pytest

from graceful.harness import cli
from graceful.harness.scenarios import SCENARIOS, make_scenarios


def test_every_scenario_is_listed_and_constructible(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.main(parser.parse_args(["list"])) == 0
    out = capsys.readouterr().out
    for name in SCENARIOS:
        assert name in out
    assert [s.name for s in make_scenarios(SCENARIOS)] == list(SCENARIOS)
    with pytest.raises(KeyError, match="unknown scenario"):
        make_scenarios(["nope"])


def test_run_rejects_unknown_scenarios_and_missing_image(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.main(parser.parse_args(["run", "--image", "x", "--scenario", "nope"])) == 2
    assert "unknown scenario nope" in capsys.readouterr().err
    assert cli.main(parser.parse_args(["run"])) == 2
    assert "--image" in capsys.readouterr().err
