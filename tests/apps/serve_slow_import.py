"""Test target whose import takes long (a framework, a model): a stop may come meanwhile."""

import sys
import time

print("importing", file=sys.stderr, flush=True)
time.sleep(60)

app = None
