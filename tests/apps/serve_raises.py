"""Test target whose module fails while importing: an app bug, shown with its traceback."""

raise RuntimeError("the app's own import failed")
