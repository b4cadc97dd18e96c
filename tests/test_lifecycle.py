"""``graceful.lifecycle.Closers``: one LIFO stack of everything a service must close."""

from __future__ import annotations

import inspect
from types import TracebackType

import pytest

from graceful.lifecycle import Closer, Closers


async def close_all(closers: list[Closer]) -> None:
    """Run what ``unwind`` handed back, in its order (what the close phase does)."""
    for closer in closers:
        assert closer.func is not None
        result = closer.func()
        if inspect.isawaitable(result):
            await result


class Resource:
    """A real async context manager that writes what happens to it into a shared journal."""

    def __init__(self, name: str, journal: list[str], *, fail_enter: bool = False) -> None:
        self.name = name
        self.journal = journal
        self.fail_enter = fail_enter
        self.exit_args: tuple[object, ...] | None = None

    async def __aenter__(self) -> str:
        if self.fail_enter:
            raise OSError(f"{self.name} would not open")
        self.journal.append(f"open {self.name}")
        return f"{self.name} handle"

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.exit_args = (exc_type, exc, tb)
        self.journal.append(f"close {self.name}")


def test_closers_unwind_last_pushed_first() -> None:
    closers = Closers()
    noop = lambda: None  # noqa: E731
    for name in ("db", "cache", "queue"):
        closers.push(name, noop, timeout=1.5 if name == "cache" else None)
    unwound = closers.unwind()
    assert [c.name for c in unwound] == ["queue", "cache", "db"]
    assert [c.timeout for c in unwound] == [None, 1.5, None]


def test_unwind_empties_the_stack() -> None:
    closers = Closers()
    closers.push("db", lambda: None)
    assert len(closers.unwind()) == 1
    assert closers.unwind() == []


def test_empty_reserved_slots_are_skipped() -> None:
    closers = Closers()
    closers.push("first", lambda: None)
    slot = closers.reserve("never entered")
    closers.push("last", lambda: None)
    assert slot.func is None
    assert [c.name for c in closers.unwind()] == ["last", "first"]


async def test_reserved_slot_keeps_its_registration_order() -> None:
    """1. ``a`` is pushed, a slot is reserved for ``ctx``, ``b`` is pushed.
    2. ``ctx`` is entered into its slot afterwards (at startup).
    Result: ``ctx`` closes between ``b`` and ``a``, not first; control: without the slot it
    would close first, as the last thing entered."""
    journal: list[str] = []
    closers = Closers()
    closers.push("a", lambda: journal.append("close a"))
    slot = closers.reserve("ctx")
    closers.push("b", lambda: journal.append("close b"))
    assert await closers.enter(Resource("ctx", journal), name="ctx", slot=slot) == "ctx handle"
    assert [c.name for c in closers.unwind()] == ["b", "ctx", "a"]

    control = Closers()
    control.push("a", lambda: None)
    control.push("b", lambda: None)
    await control.enter(Resource("ctx", []), name="ctx")
    assert [c.name for c in control.unwind()] == ["ctx", "b", "a"]


async def test_enter_opens_now_and_closes_in_lifo_order_with_plain_closers() -> None:
    journal: list[str] = []
    closers = Closers()
    first = Resource("store", journal)
    assert await closers.enter(first, name="store") == "store handle"
    closers.push("hook", lambda: journal.append("close hook"))
    second = Resource("client", journal)
    await closers.enter(second, name="client")
    assert journal == ["open store", "open client"]  # entered at once, not at close

    await close_all(closers.unwind())
    assert journal == ["open store", "open client", "close client", "close hook", "close store"]
    assert first.exit_args == (None, None, None)  # a clean exit, as AsyncExitStack does


async def test_enter_that_fails_pushes_nothing() -> None:
    journal: list[str] = []
    closers = Closers()
    with pytest.raises(OSError, match="would not open"):
        await closers.enter(Resource("broken", journal, fail_enter=True), name="broken")
    assert closers.unwind() == []
    # Control: the same resource that opens is pushed.
    await closers.enter(Resource("fine", journal), name="fine")
    assert [c.name for c in closers.unwind()] == ["fine"]
