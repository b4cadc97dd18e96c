"""``graceful.reaper``: finding zombie children in /proc, and reaping only the forgotten ones.

Zombies here are real: a child that exited, waited for with ``WNOWAIT`` (which blocks until
it exits and leaves it a zombie), so no test polls for the state.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from graceful.reaper import ZombieReaper, zombie_children


def exited_child(code: int = 0, *, comm: str | None = None) -> subprocess.Popen[bytes]:
    """A child that has exited and is a zombie: nobody has collected its status yet."""
    script = f"import sys; sys.exit({code})"
    if comm is not None:
        script = f"open('/proc/self/comm', 'w').write({comm!r}); " + script
    child = subprocess.Popen([sys.executable, "-c", script])
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
    return child


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Children to collect at the end, whoever reaped them (Popen.wait copes with that)."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for child in started:
        if child.poll() is None:
            child.kill()
        child.wait()


def test_zombie_child_is_found_and_gone_once_collected(
    children: list[subprocess.Popen[bytes]],
) -> None:
    child = exited_child()
    children.append(child)
    assert child.pid in zombie_children()
    assert child.pid not in zombie_children(parent=1)  # only children of the given parent
    assert child.wait() == 0
    assert child.pid not in zombie_children()


def test_running_child_is_not_a_zombie(children: list[subprocess.Popen[bytes]]) -> None:
    running = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    children.append(running)
    assert running.pid not in zombie_children()
    assert running.stdin is not None
    running.stdin.close()


def test_command_name_with_parentheses_and_spaces_is_parsed(
    children: list[subprocess.Popen[bytes]],
) -> None:
    """The name ``x) Z 1 (y`` makes a naive split read state Z and parent 1 from the name."""
    child = exited_child(comm="x) Z 1 (y")
    children.append(child)
    with open(f"/proc/{child.pid}/stat", "rb") as f:
        stat = f.read()
    assert stat.split()[3] == b"1"  # control: the naive parse names the wrong parent
    assert child.pid in zombie_children()
    assert child.pid not in zombie_children(parent=1)


def test_zombie_is_reaped_only_at_the_second_sweep_that_sees_it(
    children: list[subprocess.Popen[bytes]],
) -> None:
    reaped: list[tuple[int, int]] = []
    reaper = ZombieReaper(on_reaped=lambda pid, status: reaped.append((pid, status)))
    child = exited_child(7)
    children.append(child)

    reaper.sweep()
    assert child.pid in zombie_children()  # one sweep: left for its owner
    assert reaper.reaped == 0
    reaper.sweep()
    assert child.pid not in zombie_children()
    assert (child.pid, 7) in reaped
    assert reaper.reaped == len(reaped)


def test_status_collected_by_its_owner_between_sweeps_is_not_stolen(
    children: list[subprocess.Popen[bytes]],
) -> None:
    """1. A sweep sees the zombie. 2. Its owner (``subprocess``) waits for it.
    3. The next sweep finds it gone. Result: the owner has the real status; nothing reaped."""
    reaped: list[int] = []
    reaper = ZombieReaper(on_reaped=lambda pid, status: reaped.append(pid))
    child = exited_child(5)
    children.append(child)
    reaper.sweep()
    assert child.wait() == 5
    reaper.sweep()
    assert child.pid not in reaped


def test_reaper_never_touches_a_child_that_is_still_running(
    children: list[subprocess.Popen[bytes]],
) -> None:
    reaper = ZombieReaper()
    running = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    children.append(running)
    for _ in range(3):
        reaper.sweep()
    assert running.poll() is None
    assert running.stdin is not None
    running.stdin.close()
    assert running.wait() == 0  # its status is still there for subprocess


async def test_running_reaper_reaps_by_itself_and_stop_sweeps_once_more(
    children: list[subprocess.Popen[bytes]],
) -> None:
    loop = asyncio.get_running_loop()
    reaped = asyncio.Event()
    pids: list[int] = []

    def on_reaped(pid: int, status: int) -> None:
        pids.append(pid)
        reaped.set()

    reaper = ZombieReaper(interval=0.01, on_reaped=on_reaped)
    child = await loop.run_in_executor(None, exited_child, 3)
    children.append(child)
    reaper.start()
    try:
        await asyncio.wait_for(reaped.wait(), timeout=10)
    finally:
        await reaper.stop()
    assert child.pid in pids

    # stop() sweeps a last time: a zombie seen by the previous sweep is reaped at stop.
    last = ZombieReaper(on_reaped=lambda pid, status: pids.append(pid))
    straggler = await loop.run_in_executor(None, exited_child, 0)
    children.append(straggler)
    last.sweep()
    await last.stop()
    assert straggler.pid in pids


def test_a_child_its_owner_collects_late_is_never_reaped(
    children: list[subprocess.Popen[bytes]],
) -> None:
    """The supervisor's zygote, which can take longer than two sweeps to be collected at the
    stop, was reported as an orphan (``zombie.reaped``, found by a new user). A pid in
    ``owned`` stays for its owner however many sweeps see it; the other zombie beside it
    (the control) is reaped as before."""
    owned = exited_child(3)
    orphan = exited_child(4)
    children.extend([owned, orphan])
    reaper = ZombieReaper(owned=lambda: {owned.pid})
    for _ in range(3):
        reaper.sweep()
    assert owned.pid in zombie_children()
    assert orphan.pid not in zombie_children()
    assert reaper.reaped == 1
    assert owned.wait() == 3  # its owner gets its status
