"""An asyncio event loop whose clock is virtual: it jumps to the next timer instead of sleeping.

Timing tests then run in milliseconds and are exact: a test can push hundreds of requests through
a one-minute quota and check every window, with no real sleep and no flakiness from a busy
machine. Real file descriptors (the loop's self-pipe, which worker threads use to hand back
results) are still polled, and the loop blocks for real when nothing at all is scheduled.
Virtual time may run ahead while a worker thread computes; tests that use it make no claim
about how long thread work takes.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable
from typing import Any

_TICK = 1e-7  # seconds a poll of the loop takes, at the least


class _VirtualSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    def __init__(self, advance: Any) -> None:
        super().__init__()
        self._advance = advance

    def select(self, timeout: float | None = None) -> list[Any]:
        ready: list[Any] = super().select(0)
        if ready or (timeout is not None and timeout <= 0):
            # A real clock always moves a little between two polls. Without that, code that
            # re-arms a timer a rounding error ahead (aiolimiter does) would spin forever.
            self._advance(_TICK)
            return ready
        if timeout is None:  # nothing scheduled: only a thread or I/O can wake us
            return super().select(None)  # type: ignore[no-any-return]
        self._advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose clock starts at 0 and only moves when the loop is idle."""

    def __init__(self, *, lateness: Callable[[], float] | None = None) -> None:
        self._now = 0.0
        # Real timers fire late; ``lateness`` makes every wake-up that much later on purpose.
        self._lateness = lateness
        super().__init__(_VirtualSelector(self._advance))

    def time(self) -> float:
        return self._now

    def _advance(self, seconds: float) -> None:
        self._now += max(seconds, _TICK) + (self._lateness() if self._lateness else 0.0)
