"""Counters the emulator keeps, overall and per key, for tests and benchmarks to read.

``max_in_window`` is exact: the largest number of arrivals inside any half-open window of the
configured length, found with a deque sweep over arrival times (each arrival is pushed once and
popped once, so the cost is O(1) amortised and the memory is what one window holds).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from ._policies import EPSILON

__all__ = ["Counters", "Stats"]


class _WindowMax:
    __slots__ = ("_times", "max", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        self._times: deque[float] = deque()
        self.max = 0

    def add(self, now: float) -> None:
        cutoff = now - self.window + EPSILON
        times = self._times
        while times and times[0] <= cutoff:
            times.popleft()
        times.append(now)
        self.max = max(self.max, len(times))


class Counters:
    """One set of counters (for all traffic, or for one key).

    Attributes:
        requests: arrivals (every attempt, whatever its answer).
        max_in_window: most arrivals seen in any window of the limit's length.
        rate_limited: 429s sent by the limiter (injected 429s are counted in ``faults``;
            ``statuses[429]`` counts both).
        successes: complete 200 responses with an intact map (not truncated by a fault).
        credits_charged: credits taken (truncated answers included: the work was done).
        statuses: responses sent, by HTTP status.
        faults: injected faults, by step (``"500"``, ``"429"``, ``"reset"``, ``"stall"``...).
        abandoned: requests whose client went away before the answer (stalls cut short).

    Example:
        >>> c = Counters(window=60.0)
        >>> c.requests, c.statuses
        (0, {})
    """

    __slots__ = (
        "_sweep",
        "abandoned",
        "credits_charged",
        "faults",
        "rate_limited",
        "requests",
        "statuses",
        "successes",
    )

    def __init__(self, *, window: float) -> None:
        self._zero(window)

    def _zero(self, window: float) -> None:
        self._sweep = _WindowMax(window)
        self.requests = 0
        self.rate_limited = 0
        self.successes = 0
        self.credits_charged = 0
        self.abandoned = 0
        self.statuses: dict[int, int] = {}
        self.faults: dict[str, int] = {}

    @property
    def window(self) -> float:
        """The window length ``max_in_window`` is measured over, in seconds."""
        return self._sweep.window

    @property
    def max_in_window(self) -> int:
        """The most arrivals seen in any half-open window of ``window`` seconds."""
        return self._sweep.max

    def snapshot(self) -> dict[str, Any]:
        """The counters as plain JSON-ready data."""
        return {
            "requests": self.requests,
            "max_in_window": self.max_in_window,
            "window": self.window,
            "rate_limited": self.rate_limited,
            "successes": self.successes,
            "credits_charged": self.credits_charged,
            "abandoned": self.abandoned,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "faults": dict(sorted(self.faults.items())),
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(requests={self.requests}, "
            f"max_in_window={self.max_in_window}, rate_limited={self.rate_limited}, "
            f"successes={self.successes}, credits_charged={self.credits_charged})"
        )


class Stats(Counters):
    """The emulator's counters: totals (the attributes of :class:`Counters`) plus per key.

    Requests without a key, or with an unknown one, count only in the totals. All updates take
    a lock, so a test thread can read while a server thread serves.

    Example:
        >>> s = Stats(window=60.0)
        >>> s.record_arrival("k", 0.0); s.record_arrival("k", 1.0); s.record_arrival("k", 61.0)
        >>> s.requests, s.max_in_window, s.key("k").requests
        (3, 2, 3)
    """

    __slots__ = ("_keys", "_lock")

    def __init__(self, *, window: float) -> None:
        super().__init__(window=window)
        self._keys: dict[str, Counters] = {}
        self._lock = threading.Lock()

    def clear(self) -> None:
        """Set every counter back to zero and forget all keys."""
        with self._lock:
            self._zero(self.window)
            self._keys.clear()

    def key(self, key: str) -> Counters:
        """The counters of one key (all zero for a key never seen)."""
        with self._lock:
            found = self._keys.get(key)
        return found if found is not None else Counters(window=self.window)

    @property
    def requests_per_key(self) -> dict[str, int]:
        """Arrivals per key."""
        with self._lock:
            return {k: c.requests for k, c in self._keys.items()}

    def _targets(self, key: str | None) -> tuple[Counters, ...]:
        if key is None:
            return (self,)
        counters = self._keys.get(key)
        if counters is None:
            counters = self._keys[key] = Counters(window=self.window)
        return (self, counters)

    def record_arrival(self, key: str | None, now: float) -> None:
        """Count an arrival at ``now``; ``key`` is None unless it is a configured key."""
        with self._lock:
            for c in self._targets(key):
                c.requests += 1
                c._sweep.add(now)

    def record_status(self, key: str | None, status: int) -> None:
        """Count a response status sent."""
        with self._lock:
            for c in self._targets(key):
                c.statuses[status] = c.statuses.get(status, 0) + 1

    def record_success(self, key: str) -> None:
        """Count a complete, untampered 200."""
        with self._lock:
            for c in self._targets(key):
                c.successes += 1

    def record_rate_limited(self, key: str) -> None:
        """Count a 429 sent by the limiter (its status is recorded separately)."""
        with self._lock:
            for c in self._targets(key):
                c.rate_limited += 1

    def record_fault(self, key: str, step: str) -> None:
        """Count an injected fault."""
        with self._lock:
            for c in self._targets(key):
                c.faults[step] = c.faults.get(step, 0) + 1

    def record_charge(self, key: str, credits: int) -> None:
        """Count credits taken from ``key``."""
        with self._lock:
            for c in self._targets(key):
                c.credits_charged += credits

    def record_abandoned(self, key: str) -> None:
        """Count a request whose client left before its answer."""
        with self._lock:
            for c in self._targets(key):
                c.abandoned += 1

    def snapshot(self) -> dict[str, Any]:
        """Totals and per-key counters as plain JSON-ready data."""
        with self._lock:
            data = Counters.snapshot(self)
            data["keys"] = {k: c.snapshot() for k, c in sorted(self._keys.items())}
        return data
