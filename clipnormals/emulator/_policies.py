"""The four ways a server may count requests against a rate limit.

Each policy is a small, pure state machine: the caller passes the arrival time, nothing here
reads a clock. ``allow(now)`` admits (and counts) a request or refuses it; a refused request
leaves no trace. ``retry_after(now)``, asked right after a refusal at the same ``now``, is the
wait until the next request would be admitted.

Windows are half-open: a start at ``t`` and one at ``t + per`` never share a window. Float
arithmetic gets a tolerance of ``EPSILON`` seconds (or tokens) so hand-computed decimal times
(0.1, 0.3...) land on the side of a boundary they land on in exact arithmetic.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Final, Protocol

from ._config import ServerLimit

__all__ = [
    "EPSILON",
    "CountingPolicy",
    "FixedWindow",
    "LeakyBucket",
    "SlidingWindowLog",
    "TokenBucket",
    "make_policy",
]

EPSILON: Final = 1e-9


class CountingPolicy(Protocol):
    """What the emulator needs from a counting policy."""

    def allow(self, now: float) -> bool:
        """Admit (and count) a request arriving at ``now``, or refuse it."""
        ...

    def retry_after(self, now: float) -> float:
        """Seconds from ``now`` until a request would be admitted (0 when one would be now)."""
        ...

    def reset(self) -> None:
        """Forget every request seen."""
        ...


class FixedWindow:
    """At most ``requests`` per window ``[k*per, (k+1)*per)`` of the clock.

    Example:
        >>> p = FixedWindow(requests=2, per=60.0)
        >>> [p.allow(t) for t in (0.0, 1.0, 2.0, 60.0)]
        [True, True, False, True]
    """

    __slots__ = ("_count", "_window", "per", "requests")

    def __init__(self, *, requests: int, per: float) -> None:
        self.requests = requests
        self.per = per
        self._window: int | None = None
        self._count = 0

    def _index(self, now: float) -> int:
        return math.floor(now / self.per + EPSILON)

    def allow(self, now: float) -> bool:
        index = self._index(now)
        if index != self._window:
            self._window = index
            self._count = 0
        if self._count < self.requests:
            self._count += 1
            return True
        return False

    def retry_after(self, now: float) -> float:
        index = self._index(now)
        if index != self._window or self._count < self.requests:
            return 0.0
        return max(0.0, (index + 1) * self.per - now)

    def reset(self) -> None:
        self._window = None
        self._count = 0


class SlidingWindowLog:
    """At most ``requests`` admitted starts in any ``per`` seconds (an exact window log).

    Example:
        >>> p = SlidingWindowLog(requests=2, per=60.0)
        >>> [p.allow(t) for t in (0.0, 30.0, 59.0, 60.0)]
        [True, True, False, True]
    """

    __slots__ = ("_log", "per", "requests")

    def __init__(self, *, requests: int, per: float) -> None:
        self.requests = requests
        self.per = per
        self._log: deque[float] = deque()

    def _expire(self, now: float) -> None:
        cutoff = now - self.per + EPSILON
        log = self._log
        while log and log[0] <= cutoff:
            log.popleft()

    def allow(self, now: float) -> bool:
        self._expire(now)
        if len(self._log) < self.requests:
            self._log.append(now)
            return True
        return False

    def retry_after(self, now: float) -> float:
        self._expire(now)
        if len(self._log) < self.requests:
            return 0.0
        # The log holds exactly `requests` starts: the oldest leaving makes room.
        return max(0.0, self._log[0] + self.per - now)

    def reset(self) -> None:
        self._log.clear()


class TokenBucket:
    """A bucket of ``requests`` tokens, full at start, refilled at ``requests / per`` per second.

    Example:
        >>> p = TokenBucket(requests=2, per=2.0)
        >>> [p.allow(t) for t in (0.0, 0.0, 0.0, 1.0)]
        [True, True, False, True]
    """

    __slots__ = ("_last", "_tokens", "capacity", "rate")

    def __init__(self, *, requests: int, per: float) -> None:
        self.capacity = float(requests)
        self.rate = requests / per
        self._tokens = self.capacity
        self._last: float | None = None

    def _refill(self, now: float) -> None:
        if self._last is not None and now > self._last:
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        if self._last is None or now > self._last:
            self._last = now

    def allow(self, now: float) -> bool:
        self._refill(now)
        if self._tokens >= 1.0 - EPSILON:
            self._tokens = max(0.0, self._tokens - 1.0)
            return True
        return False

    def retry_after(self, now: float) -> float:
        self._refill(now)
        return max(0.0, (1.0 - self._tokens) / self.rate)

    def reset(self) -> None:
        self._tokens = self.capacity
        self._last = None


class LeakyBucket:
    """nginx ``limit_req`` with ``burst`` and ``nodelay``: the algorithm of
    ``ngx_http_limit_req_lookup``, in float seconds instead of integer milliseconds.

    ``excess`` drains at ``rate`` per second; a request adds one. The first request of a key
    starts at excess 0; a request is refused when its excess would exceed ``burst``, and a
    refused request does not change the state. So ``burst + 1`` requests pass at once, then one
    per ``1 / rate`` seconds.

    Example:
        >>> p = LeakyBucket(requests=1, per=1.0, burst=1)
        >>> [p.allow(t) for t in (0.0, 0.0, 0.0, 0.5, 1.0)]
        [True, True, False, False, True]
    """

    __slots__ = ("_excess", "_last", "burst", "rate")

    def __init__(self, *, requests: int, per: float, burst: int) -> None:
        self.rate = requests / per
        self.burst = float(burst)
        self._excess = 0.0
        self._last: float | None = None

    def _candidate(self, now: float, last: float) -> float:
        elapsed = max(0.0, now - last)
        return max(0.0, self._excess - self.rate * elapsed + 1.0)

    def allow(self, now: float) -> bool:
        last = self._last
        if last is None:
            self._last = now
            self._excess = 0.0
            return True
        excess = self._candidate(now, last)
        if excess > self.burst + EPSILON:
            return False
        self._excess = excess
        self._last = max(last, now)
        return True

    def retry_after(self, now: float) -> float:
        if self._last is None:
            return 0.0
        return max(0.0, (self._candidate(now, self._last) - self.burst) / self.rate)

    def reset(self) -> None:
        self._excess = 0.0
        self._last = None


def make_policy(limit: ServerLimit) -> CountingPolicy:
    """A fresh policy object for one key under ``limit``.

    Example:
        >>> type(make_policy(ServerLimit(policy="nginx"))).__name__
        'LeakyBucket'
    """
    if limit.policy == "fixed":
        return FixedWindow(requests=limit.requests, per=limit.per)
    if limit.policy == "sliding":
        return SlidingWindowLog(requests=limit.requests, per=limit.per)
    if limit.policy == "token":
        return TokenBucket(requests=limit.requests, per=limit.per)
    return LeakyBucket(requests=limit.requests, per=limit.per, burst=limit.burst)
