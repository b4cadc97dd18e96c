"""The connection prober's program: fresh connections to a service, one JSON line per probe.

Run as ``python3 -c <this file's text> PORT ADMIN_PORT WORK_PATH READY_PATH INTERVAL SECONDS``
(see :class:`graceful.harness.prober.Prober`), most often in a sidecar container that shares
the service's network namespace, with whatever ``python3`` that image has. So it imports
nothing but the standard library, nothing from ``graceful``, and stays valid on older Pythons
(no ``match``, no newer stdlib names).

Each probe is a fresh connection with one request (``Connection: close``), to the work path
(``main``) and to the readiness path on the admin port (``ready``; skipped when the admin port
is 0). It is printed as ``{"t", "kind", "outcome", "status"}``, stamped with
``CLOCK_MONOTONIC``, which containers share with the host. ``outcome`` is ``answered`` (with
the HTTP status), ``refused``, ``reset``, ``closed`` (FIN before any byte), ``timeout`` or
``error`` (then ``status`` carries the error's text).
"""

from __future__ import annotations

import json
import socket
import sys
import time

# One probe's bound: a connection that neither answers nor fails by then is a timeout.
PROBE_TIMEOUT_S = 1.0


def probe(port: int, path: str) -> tuple[str, int | str | None]:
    """One fresh connection to 127.0.0.1:``port`` with ``GET path``: (outcome, status)."""
    s = socket.socket()
    s.settimeout(PROBE_TIMEOUT_S)
    try:
        s.connect(("127.0.0.1", port))
    except ConnectionRefusedError:
        return "refused", None
    except OSError as e:
        return _failed(e)
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n".encode())
        data = s.recv(64)
    except ConnectionResetError:
        return "reset", None
    except OSError as e:
        return _failed(e)
    finally:
        s.close()
    if not data:
        return "closed", None
    try:
        return "answered", int(data.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return "error", "not HTTP"


def _failed(e: OSError) -> tuple[str, str | None]:
    # socket.timeout, not TimeoutError: before Python 3.10 it is no TimeoutError, and images
    # bring their own python3.
    if isinstance(e, socket.timeout):
        return "timeout", None
    return "error", str(e)


def main(argv: list[str]) -> int:
    """Probe every ``INTERVAL`` seconds for ``SECONDS``; print each probe as it ends."""
    port, admin, work, ready = int(argv[0]), int(argv[1]), argv[2], argv[3]
    interval, seconds = float(argv[4]), float(argv[5])
    end = time.monotonic() + seconds
    sep = "&" if "?" in work else "?"
    targets = (("ready", admin, ready), ("main", port, work + sep + "ms=0"))
    while time.monotonic() < end:
        for kind, p, path in targets:
            if p <= 0:
                continue
            t = time.monotonic()
            outcome, status = probe(p, path)
            event = {"t": t, "kind": kind, "outcome": outcome, "status": status}
            print(json.dumps(event), flush=True)
        time.sleep(interval)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
