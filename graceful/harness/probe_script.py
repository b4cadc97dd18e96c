"""The connection prober's program: fresh connections to a service, one JSON line per probe.

Run as ``python3 -c <this file's text> PORT READY_PORT MAIN_PATH READY_PATH INTERVAL SECONDS``
(see :class:`graceful.harness.prober.Prober`), most often in a sidecar container that shares
the service's network namespace, with whatever ``python3`` that image has. So it imports
nothing but the standard library, nothing from ``graceful``, and stays valid on older Pythons
(no ``match``, no newer stdlib names).

For ``SECONDS``, every ``INTERVAL`` a new probe starts for each target, whether or not
earlier ones have ended (the last ones then get their full time): a fresh connection with one
request (``Connection: close``) to ``MAIN_PATH`` on the service's port (``main``) and to
``READY_PATH`` on ``READY_PORT`` (``ready``; skipped when it is 0). Probes run side by side
(non-blocking sockets), so a listener that accepts connections and never answers them shows
as many timeouts, not as one probe stuck for a
second. Each probe is printed when it ends, as ``{"t", "kind", "outcome", "status",
"connected"}``, ``t`` its start on ``CLOCK_MONOTONIC`` (which containers share with the
host). ``outcome`` is ``answered`` (with the HTTP status), ``refused``, ``reset``, ``closed``
(FIN before any byte), ``timeout`` (no answer within ``PROBE_TIMEOUT_S``) or ``error`` (then
``status`` carries the error's text); ``connected`` says whether the TCP handshake had
completed, i.e. whether somebody's listener took the connection.
"""

from __future__ import annotations

import errno
import json
import selectors
import socket
import sys
import time

# One probe's bound: a connection that neither answers nor fails by then is a timeout.
PROBE_TIMEOUT_S = 1.0
# The most probes open at once (a hang guard against a listener that takes everything).
MAX_OPEN = 200


class Probe:
    """One connection with one request, driven by the selector."""

    def __init__(self, kind: str, port: int, path: str) -> None:
        self.kind = kind
        self.t = time.monotonic()
        self.connected = False
        self.request = f"GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"
        self.sock = socket.socket()
        self.sock.setblocking(False)
        self.result: tuple[str, int | str | None] | None = None
        code = self.sock.connect_ex(("127.0.0.1", port))
        if code not in (0, errno.EINPROGRESS):
            self._fail(code)

    def _fail(self, code: int) -> None:
        if code == errno.ECONNREFUSED:
            self.result = ("refused", None)
        elif code in (errno.ECONNRESET, errno.EPIPE):
            self.result = ("reset", None)
        else:
            self.result = ("error", errno.errorcode.get(code, str(code)))

    def on_writable(self) -> None:
        """The connect finished (or failed): send the request."""
        code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._fail(code)
            return
        self.connected = True
        try:
            self.sock.sendall(self.request.encode())
        except OSError as e:
            self._fail(e.errno or 0)

    def on_readable(self) -> None:
        """Read the status line, or learn how the connection ended."""
        try:
            data = self.sock.recv(64)
        except BlockingIOError:
            return
        except OSError as e:
            self._fail(e.errno or 0)
            return
        if not data:
            self.result = ("closed", None)
            return
        try:
            self.result = ("answered", int(data.split(b" ", 2)[1]))
        except (IndexError, ValueError):
            self.result = ("error", "not HTTP")

    def event(self) -> dict[str, object]:
        outcome, status = self.result or ("timeout", None)
        return {
            "t": self.t,
            "kind": self.kind,
            "outcome": outcome,
            "status": status,
            "connected": self.connected,
        }


def main(argv: list[str]) -> int:
    """Probe every ``INTERVAL`` seconds for ``SECONDS``; print each probe as it ends."""
    port, ready_port, main_path, ready_path = int(argv[0]), int(argv[1]), argv[2], argv[3]
    interval, seconds = float(argv[4]), float(argv[5])
    targets = [("ready", ready_port, ready_path), ("main", port, main_path)]
    targets = [t for t in targets if t[1] > 0]
    selector = selectors.DefaultSelector()
    open_probes: dict[socket.socket, Probe] = {}
    end = time.monotonic() + seconds
    next_start = time.monotonic()

    def finish(probe: Probe) -> None:
        if probe.sock in open_probes:
            selector.unregister(probe.sock)
            del open_probes[probe.sock]
        probe.sock.close()
        print(json.dumps(probe.event()), flush=True)

    # After SECONDS no probe starts; the ones open still get their full time.
    while time.monotonic() < end or open_probes:
        now = time.monotonic()
        if now >= next_start and now < end:
            next_start = now + interval
            for kind, p, path in targets:
                if len(open_probes) >= MAX_OPEN:
                    break
                probe = Probe(kind, p, path)
                if probe.result is not None:
                    finish(probe)
                    continue
                open_probes[probe.sock] = probe
                selector.register(probe.sock, selectors.EVENT_WRITE, probe)
        timeout = max(min(next_start, end) - time.monotonic(), 0.0)
        if time.monotonic() >= end and open_probes:
            timeout = min(p.t for p in open_probes.values()) + PROBE_TIMEOUT_S - time.monotonic()
            timeout = max(timeout, 0.0)
        for key, mask in selector.select(timeout):
            probe = key.data
            if mask & selectors.EVENT_WRITE and not probe.connected:
                probe.on_writable()
                if probe.result is None:
                    selector.modify(probe.sock, selectors.EVENT_READ, probe)
            elif mask & selectors.EVENT_READ:
                probe.on_readable()
            if probe.result is not None:
                finish(probe)
        now = time.monotonic()
        for probe in [p for p in open_probes.values() if now - p.t >= PROBE_TIMEOUT_S]:
            finish(probe)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
