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


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--admin-port", "0"], "random"),
        (["--admin-port", "nine"], "not a port number"),
        (["--work-url", "/slow"], "{ms} or {seconds}"),
        (["--ready-path", "admin:/readyz", "--admin-port", "off"], "no admin port"),
    ],
)
def test_run_rejects_a_workload_it_cannot_use(
    capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    """Refused before any engine is asked: exit 2 with the reason."""
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["run", "--image", "x", *options])
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err


def test_run_options_describe_the_workload() -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(
        [
            "run",
            "--image",
            "x",
            "--admin-port",
            "off",
            "--work-url",
            "/slow?s={seconds}",
            "--ready-path",
            "main:/health",
            "--stream-path",
            "",
            "--strict",
        ]
    )
    w = cli._config(args).workload
    assert (w.admin_port, w.ready_on, w.ready_path, w.has_stream) == (
        None,
        "main",
        "/health",
        False,
    )
    assert w.work_target(2000) == "/slow?s=2"
    assert args.strict
    old = cli._config(parser.parse_args(["run", "--image", "x", "--work-path", "/w"])).workload
    assert old.work_target(5) == "/w?ms=5"
