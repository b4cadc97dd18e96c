"""``graceful.status``: the exit codes, each put in words once, and the lifecycle states."""

from __future__ import annotations

import re

import pytest

from graceful.status import ExitCode, LifecycleState
from tests.support import ROOT


def readme_exit_code_table() -> dict[int, str]:
    """``code -> meaning`` from the README's "Exit codes" table."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Exit codes") :].split("\n\n")[1]
    rows = re.findall(r"^\| (\d+) \| (.+) \|$", section, flags=re.MULTILINE)
    assert rows, section
    return {int(code): meaning for code, meaning in rows}


@pytest.mark.parametrize("code", list(ExitCode), ids=lambda code: code.name)
def test_every_exit_code_has_a_one_line_description(code: ExitCode) -> None:
    description = code.description
    assert description
    assert description == description.strip()
    assert "\n" not in description
    assert not description.endswith(".")  # read inside sentences and table cells


def test_descriptions_are_distinct() -> None:
    descriptions = [code.description for code in ExitCode]
    assert len(set(descriptions)) == len(descriptions)


def test_exit_code_values_are_the_documented_numbers() -> None:
    assert {code.name: int(code) for code in ExitCode} == {
        "OK": 0,
        "ERROR": 1,
        "WORK_CUT": 3,
        "HOOK_FAILED": 4,
        "FORCED": 5,
        "OVERRAN": 6,
        "WORKER_FAILED": 7,
    }


def test_readme_table_quotes_every_description_exactly() -> None:
    table = readme_exit_code_table()
    for code in ExitCode:
        assert table.get(int(code)) == code.description, code.name
    # Only Docker's own codes are described in the README's words.
    assert set(table) - {int(code) for code in ExitCode} == {137}


def test_lifecycle_states_in_order() -> None:
    assert [state.value for state in LifecycleState] == [
        "starting",
        "serving",
        "stopping",
        "stopped",
    ]
    assert LifecycleState("stopping") is LifecycleState.STOPPING
