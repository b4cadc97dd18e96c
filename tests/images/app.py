"""A stdlib-only service that follows the harness's HTTP contract, well or badly on purpose.

``APP_MODE`` picks the behaviour on a stop signal:

- ``good``: unready, close the listener, drain in-flight requests within the budget, cancel
  what is left at the deadline, close the database, log one ``shutdown.report``, exit 0 (3
  when work was cut). Writes are acknowledged after an fsynced SQLite commit.
- ``no-handler``: installs no handler; as PID 1 the kernel drops SIGTERM (docker stop → 137).
- ``exit-at-once``: exits 0 the moment SIGTERM arrives, dropping in-flight requests.
- ``early-ack``: acknowledges writes from memory and writes them down every 30 s (and on a
  graceful stop); a SIGKILL loses what was acknowledged since the last write-down.
- ``endless-drain``: drains without a deadline, waiting for in-flight work forever.
- ``wal-normal``: like ``good``, but commits with SQLite's ``synchronous=NORMAL`` (in WAL mode
  a commit is durable only at the next checkpoint): it survives SIGKILL, not a power cut.
- ``no-fsync``: like ``good``, but keeps items in a plain file and acknowledges after
  ``write()``, without ``fsync``: it survives SIGKILL, not a power cut.
- ``fake-done``: like ``good``, but at the stop every ``GET /work`` in flight is answered 200
  at once, as if its work were done; the drain then has nothing to wait for, and after a
  short flush it exits 0. Every other check of a stop passes it.
- ``ack-then-write``: like ``good``, but answers a write first and stores it after (an
  fsynced SQLite commit, a few milliseconds later, as over a database connection): a SIGKILL
  loses what was acknowledged and not yet written. The stop scenarios are not its business.
- ``abandon``: stops well (unready, drains, a slow flush, exits 0) but leaves its listener
  open: connections made after the stop began are accepted and never answered (each hangs
  until the process exits, then is reset).

``GET /stream`` is server-sent events, an event every 100 ms, until the stop begins; then a
last ``bye`` event and the end of the response (so the drain waits for no stream).

Only here to test the harness; the real examples use graceful's runtime on real servers.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
import time
from urllib.parse import parse_qs, urlsplit

MODE = os.environ.get("APP_MODE", "good")
PORT = int(os.environ.get("PORT", "8080"))
ADMIN_PORT = int(os.environ.get("ADMIN_PORT", "9090"))
STOP_TIMEOUT = float(os.environ.get("GRACEFUL_STOP_TIMEOUT", "10"))
STATE_PATH = os.environ.get("STATE_PATH", "/data/state.sqlite")
EARLY_ACK_FLUSH_S = 30.0
#: ``ack-then-write``: how long after the answer a write is stored (a database round trip).
ACK_THEN_WRITE_S = 0.005


def log(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


class Store:
    """Items by id in SQLite; ``durable`` commits every write with synchronous=FULL."""

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS items (id TEXT PRIMARY KEY)")
        if MODE == "wal-normal":
            # The table is durable (created under FULL); commits from here on are not.
            self.db.execute("PRAGMA synchronous=NORMAL")
        self.pending: list[str] = []
        self.log = UnsyncedLog(path + ".items") if MODE == "no-fsync" else None

    def put(self, item_id: str) -> None:
        if self.log is not None:
            self.log.append(item_id)
            return
        self.db.execute("INSERT OR IGNORE INTO items (id) VALUES (?)", (item_id,))

    def flush(self) -> int:
        n = len(self.pending)
        if n:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT OR IGNORE INTO items (id) VALUES (?)", [(i,) for i in self.pending]
            )
            self.db.execute("COMMIT")
            self.pending.clear()
        return n

    def ids(self) -> list[str]:
        if self.log is not None:
            return self.log.ids()
        stored = [row[0] for row in self.db.execute("SELECT id FROM items ORDER BY rowid")]
        return stored + [i for i in self.pending if i not in set(stored)]


class UnsyncedLog:
    """Item ids, one a line, appended to a plain file with ``write()`` and never fsynced (the
    file and its name are synced once, at start, so a power cut keeps the file itself)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.fsync(self.fd)
        directory = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def append(self, item_id: str) -> None:
        os.write(self.fd, f"{item_id}\n".encode())

    def ids(self) -> list[str]:
        with open(self.path) as f:
            return list(dict.fromkeys(line.strip() for line in f if line.strip()))


class App:
    def __init__(self) -> None:
        self.store = Store(STATE_PATH)
        self.ready = False
        self.stopping = False
        self.signals = 0
        self.inflight: set[asyncio.Task[None]] = set()
        self.idle_writers: set[asyncio.StreamWriter] = set()
        self.drained = asyncio.Event()
        self.stop_event = asyncio.Event()
        self.server: asyncio.Server | None = None

    # --- HTTP plumbing (HTTP/1.1, keep-alive, Content-Length bodies only) -----------------

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.stopping and MODE == "abandon":
            # Taken after the stop began, by a listener left open: never answered.
            await asyncio.Event().wait()
        try:
            while True:
                self.idle_writers.add(writer)
                head = await reader.readuntil(b"\r\n\r\n")
                self.idle_writers.discard(writer)
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for h in lines[1:]:
                    if ":" in h:
                        k, v = h.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                task = asyncio.current_task()
                assert task is not None
                self.inflight.add(task)
                try:
                    if method == "GET" and urlsplit(target).path == "/stream":
                        await self.stream(writer)
                        break
                    status, payload, write_after = await self.route(method, target, body)
                finally:
                    self.inflight.discard(task)
                    if not self.inflight:
                        self.drained.set()
                close = self.stopping or headers.get("connection", "").lower() == "close"
                data = json.dumps(payload).encode()
                writer.write(
                    (
                        f"HTTP/1.1 {status} {'OK' if status < 400 else 'Error'}\r\n"
                        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                        f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n"
                    ).encode()
                    + data
                )
                await writer.drain()
                if write_after is not None:  # ack-then-write: the answer is out, now store it
                    await asyncio.sleep(ACK_THEN_WRITE_S)
                    self.store.put(write_after)
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            self.idle_writers.discard(writer)
            writer.close()

    async def stream(self, writer: asyncio.StreamWriter) -> None:
        """Server-sent events until the stop begins, then a last event and the last chunk."""
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        n = 0
        while not self.stopping:
            event = f"data: tick {n}\n\n".encode()
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            n += 1
            try:
                await asyncio.wait_for(self.stop_event.wait(), 0.1)
            except TimeoutError:
                pass
        event = b"data: bye\n\n"
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event))
        await writer.drain()

    async def route(self, method: str, target: str, body: bytes) -> tuple[int, object, str | None]:
        """The status and body of the answer, and an item id to store once it has been sent."""
        url = urlsplit(target)
        if method == "GET" and url.path == "/work":
            ms = int(parse_qs(url.query).get("ms", ["0"])[0])
            if MODE == "fake-done":  # the lie: a stop ends the work and still says "done"
                sleep = asyncio.ensure_future(asyncio.sleep(ms / 1000))
                stop = asyncio.ensure_future(self.stop_event.wait())
                await asyncio.wait({sleep, stop}, return_when=asyncio.FIRST_COMPLETED)
                sleep.cancel()
                stop.cancel()
            else:
                await asyncio.sleep(ms / 1000)
            return 200, {"slept_ms": ms}, None
        if method == "POST" and url.path == "/items":
            try:
                item_id = json.loads(body or b"{}")["id"]
            except (ValueError, KeyError, TypeError):
                return 400, {"error": "a JSON body with an id is required"}, None
            if MODE == "early-ack":
                self.store.pending.append(str(item_id))
            elif MODE == "ack-then-write":
                return 200, {"id": item_id}, str(item_id)
            else:
                self.store.put(str(item_id))
            return 200, {"id": item_id}, None
        if method == "GET" and url.path == "/items":
            ids = self.store.ids()
            return 200, {"ids": ids, "count": len(ids)}, None
        return 404, {"error": "not found"}, None

    async def admin(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.decode("latin-1").split(" ", 2)[1]
            if path == "/readyz":
                status = 200 if self.ready and not self.stopping else 503
            elif path in ("/livez", "/metrics"):
                status = 200
            else:
                status = 404
            text = f"inflight {len(self.inflight)}\n" if path == "/metrics" else ""
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Length: {len(text)}\r\n"
                f"Connection: close\r\n\r\n{text}".encode()
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    # --- lifecycle ---------------------------------------------------------------------------

    def on_signal(self, signum: int) -> None:
        self.signals += 1
        if MODE == "exit-at-once":
            os._exit(0)
        if self.signals == 1:
            self.stopping = True
            self.stop_event.set()
        elif self.signals >= 3:
            log("shutdown.forced", signal=signal.Signals(signum).name)
            os._exit(5)

    async def flusher(self) -> None:
        while True:
            await asyncio.sleep(EARLY_ACK_FLUSH_S)
            self.store.flush()

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        if MODE != "no-handler":
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.on_signal, sig)
        admin = await asyncio.start_server(self.admin, "0.0.0.0", ADMIN_PORT)
        self.server = await asyncio.start_server(self.connection, "0.0.0.0", PORT)
        flusher = loop.create_task(self.flusher()) if MODE == "early-ack" else None
        self.ready = True
        log("serving", mode=MODE, port=PORT)
        await self.stop_event.wait()
        started = time.monotonic()
        deadline = started + STOP_TIMEOUT - 1.0  # margin for flush, exit and a busy machine
        # stop accepting: new connections are refused from here on (not so when abandoning)
        if MODE != "abandon":
            self.server.close()
        for w in list(self.idle_writers):
            w.close()
        at_signal = len(self.inflight)
        cut = 0
        if self.inflight:
            self.drained.clear()
            if MODE == "endless-drain":
                await self.drained.wait()
            else:
                try:
                    await asyncio.wait_for(self.drained.wait(), max(deadline - time.monotonic(), 0))
                except TimeoutError:
                    cut = len(self.inflight)
                    for task in list(self.inflight):
                        task.cancel()
                    await asyncio.sleep(0)
        if flusher is not None:
            flusher.cancel()
        if MODE == "abandon":
            await asyncio.sleep(1.2)  # a slow flush: what the open listener took hangs meanwhile
        if MODE == "fake-done":
            await asyncio.sleep(0.5)  # a flush: /readyz answers 503 meanwhile, as a good stop's
        flushed = self.store.flush()
        self.store.db.close()
        admin.close()
        code = 3 if cut else 0
        if MODE != "no-handler":
            # Late signals of a storm must not reach a closed loop's wakeup fd, nor kill us.
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
                signal.signal(sig, signal.SIG_IGN)
        log(
            "shutdown.report",
            inflight_at_signal=at_signal,
            cancelled=cut,
            flushed=flushed,
            exit_code=code,
            seconds=round(time.monotonic() - started, 3),
        )
        return code


if __name__ == "__main__":
    sys.exit(asyncio.run(App().main()))
