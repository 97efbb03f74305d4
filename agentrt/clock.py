"""One clock for the whole stack: engine, scheduler, policies, runtime and tool calls read it.

The default is the monotonic wall clock (what asyncio's own loop reads). A `VirtualClock` moves
only when told to; a `VirtualTimeLoop` is an asyncio event loop on that clock that, instead of
blocking while it waits for a timer, jumps the clock to the timer. Under it `asyncio.sleep(30)`
takes no wall time, so a run with minute-long tool pauses finishes as fast as its compute allows.

>>> clock = VirtualClock()
>>> loop = VirtualTimeLoop(clock)
>>> loop.run_until_complete(asyncio.sleep(30.0)); clock.now()
30.0
"""
from __future__ import annotations

import asyncio
import selectors
import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    def now(self) -> float:
        """Seconds on this clock (only differences mean anything)."""


class MonotonicClock:
    """The wall clock: `time.monotonic()`."""
    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()

    def __repr__(self) -> str:
        return "MonotonicClock()"


MONOTONIC = MonotonicClock()


class VirtualClock:
    """A clock that stands still until `advance` (or `advance_to`) moves it."""
    __slots__ = ("_t",)

    def __init__(self, start: float = 0.0):
        self._t = float(start)

    def now(self) -> float:
        return self._t

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError(f"a clock does not go back: advance({seconds})")
        self._t += seconds
        return self._t

    def advance_to(self, t: float) -> float:
        """Move to `t` if it is later (an earlier time leaves the clock where it is)."""
        self._t = max(self._t, t)
        return self._t

    def __repr__(self) -> str:
        return f"VirtualClock(t={self._t:.6f})"


class _JumpingSelector(selectors.DefaultSelector):
    """A selector that never sleeps: a wait for the next timer becomes a jump of the clock.
    Real file descriptors (the loop's self-pipe, sockets) are still polled, without blocking."""

    def __init__(self, clock: VirtualClock):
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None):
        if timeout is None:                     # no timer at all: only a thread or a socket can wake us
            return super().select(None)
        events = super().select(0)
        if not events and timeout > 0:
            self._clock.advance(timeout)
        return events


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose time is `clock`'s. With nothing ready it moves the clock to the next
    timer. Executor work (`asyncio.to_thread`: a blocking workflow step or tool) runs inline: it
    takes no virtual time and nothing runs beside it, so a run never depends on a thread's speed
    (in a thread, the clock would jump to the next timer while it worked)."""

    def __init__(self, clock: VirtualClock):
        self._clock = clock
        super().__init__(_JumpingSelector(clock))

    def time(self) -> float:
        return self._clock.now()

    def run_in_executor(self, executor, func, *args):
        future = self.create_future()
        try:
            future.set_result(func(*args))
        except Exception as exc:                # as from a thread: the awaiting coroutine gets it
            future.set_exception(exc)
        return future


def run_virtual(main, clock: VirtualClock | None = None):
    """Run coroutine `main` on a fresh VirtualTimeLoop (on `clock`, or a new one from 0)."""
    loop = VirtualTimeLoop(clock or VirtualClock())
    try:
        return loop.run_until_complete(main)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
