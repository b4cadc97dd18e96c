"""The public API is exactly what ``__all__`` says, and each name is documented."""

from __future__ import annotations

import importlib

import pytest

import graceful

MODULES = [
    "graceful",
    "graceful.config",
    "graceful.closing",
    "graceful.draining",
    "graceful.exceptions",
    "graceful.health",
    "graceful.hooks",
    "graceful.runtime",
    "graceful.signals",
    "graceful.testing",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist_and_are_documented(name: str) -> None:
    module = importlib.import_module(name)
    for attr in module.__all__:
        obj = getattr(module, attr)
        if callable(obj) or isinstance(obj, type):
            assert obj.__doc__, f"{name}.{attr} has no docstring"


def test_package_reexports_only_what_it_lists() -> None:
    public = {n for n in dir(graceful) if not n.startswith("_")}  # with the lazy ones
    modules = {n for n in public if type(getattr(graceful, n)).__name__ == "module"}
    assert public - modules - {"__version__"} == set(graceful.__all__)
