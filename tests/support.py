"""Child-process helpers for tests that send real signals to real services."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ServiceProcess:
    """A service in a child process, with its output lines collected as they come."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "GRACEFUL_LOG_FORMAT": "json"}
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd or ROOT,
            text=True,
        )
        self.lines: list[str] = []
        self._new: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @classmethod
    def python(cls, script: Path | str, **kwargs: Any) -> ServiceProcess:
        return cls([sys.executable, "-u", str(script)], **kwargs)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._new.put(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_for(self, needle: str, timeout: float = 20.0) -> str:
        """Wait for an output line containing ``needle`` (already seen lines count)."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for line in self.lines[seen:]:
                if needle in line:
                    return line
            seen = len(self.lines)
            left = deadline - time.monotonic()
            if left <= 0 or (self.proc.poll() is not None and self._new.empty()):
                if self.proc.poll() is not None:
                    self._reader.join(2)
                    for line in self.lines[seen:]:
                        if needle in line:
                            return line
                raise AssertionError(f"no line with {needle!r}; output:\n" + self.output())
            try:
                self._new.get(timeout=min(left, 0.2))
            except queue.Empty:
                pass

    def wait_event(self, event: str, timeout: float = 20.0) -> dict[str, Any]:
        return json.loads(self.wait_for(f'"event": "{event}"', timeout))  # type: ignore[no-any-return]

    def signal(self, sig: signal.Signals) -> None:
        os.kill(self.proc.pid, sig)

    def wait(self, timeout: float = 30.0) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.lines:
            if line.startswith("{"):
                try:
                    found.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return found

    def wait_count(self, event: str, count: int, timeout: float = 20.0) -> None:
        """Wait until ``event`` has been logged ``count`` times."""
        deadline = time.monotonic() + timeout
        while self.event_names().count(event) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{event} not logged {count} times:\n" + self.output())
            time.sleep(0.05)

    def event_names(self) -> list[str]:
        return [e.get("event", "") for e in self.events()]

    def output(self) -> str:
        return "\n".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)
        # Closing the pipe under a reader thread still blocked on it would deadlock; that
        # happens when a grandchild (a namespace's PID 1) outlives the child and holds it.
        if self.proc.stdout is not None and not self._reader.is_alive():
            self.proc.stdout.close()

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def http_status(url: str, timeout: float = 2.0) -> int:
    """Status of a GET; 0 when the connection fails."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def wait_http(url: str, status: int = 200, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http_status(url, timeout=1.0) == status:
            return
        time.sleep(0.05)
    raise AssertionError(f"{url} never answered {status}")
