"""Test target whose module ends the import with a ``BaseException`` (``APP_RAISE``):

- ``exit``: ``sys.exit(3)`` (3 is also graceful's "work cut" code);
- ``interrupt``: ``raise KeyboardInterrupt`` (as if Ctrl-C, but none was pressed);
- ``base``: a ``BaseException`` subclass of the app's own.
"""

import os
import sys


class AppAbort(BaseException):
    pass


how = os.environ.get("APP_RAISE", "exit")
if how == "exit":
    sys.exit(3)
if how == "interrupt":
    raise KeyboardInterrupt
raise AppAbort("the app gave up")
