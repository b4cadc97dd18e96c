"""Test target whose module imports a package that is not installed."""

import not_installed_dependency_for_graceful_tests  # noqa: F401

app = None
