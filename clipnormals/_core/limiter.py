"""Client-side rate limiting: a token bucket that keeps every window under the quota.

The guarantee: no window of ``per`` seconds ever contains more than ``requests`` request starts,
whatever way the server counts (fixed calendar windows, a sliding log, a token bucket, an
nginx-style leaky bucket). A bucket of capacity ``C`` refilled at ``r`` tokens a second allows at
most ``C + r * T`` starts in any interval of length ``T``; with ``C = burst + slack`` and
``r = (requests - burst - slack) / per`` that is ``requests`` for ``T = per``.

Why ``slack``: timer wake-ups come late (a millisecond or more on a busy event loop). A bucket of
capacity exactly 1 is empty at every start, so a late start pushes every later one back and the
lost time is never recovered. With capacity ``1 + slack`` the bucket keeps the ideal schedule:
a start that comes ``d`` seconds late finds the bucket already ``d * r`` tokens fuller, and the
next start is due ``d`` seconds sooner, as long as ``d`` stays below ``slack`` spacings. The
price is ``slack`` tokens of sustained rate (default 0.1: 58.9/60 = 98.2% of the quota).

Why ``requests - burst`` and not ``requests``: the server counts arrivals, not sends, and
arrivals wander (connection set-up, upload time, network). At the full rate, 61 sends could
fit in a window a hair longer than ``per`` and a little jitter would put them all in one server
window. Holding back one token per window means ``requests + 1`` sends always span at least
``per + per / (requests - burst - slack)`` seconds (about one request spacing more than
``per``), so arrivals may wander by up to a spacing and no server window sees more than
``requests``.

Only this module imports aiolimiter (asyncio only: trio is not supported).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import anyio
from aiolimiter import AsyncLimiter

__all__ = ["Limiter", "LocalLimiter", "RateLimit"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimit:
    """The quota to stay under: ``requests`` request starts per ``per`` seconds.

    Args:
        requests: the quota (60 per key by default on Clipdrop).
        per: the window, in seconds.
        burst: how many requests may start back to back from an idle client. Each one of burst
            is taken from the sustained rate, so the guarantee holds for any value.
        slack: how late (in request spacings) a start may be before the lateness is lost. Timer
            wake-ups on a busy loop come late; with capacity ``burst + slack`` a late start is
            made up by the next one instead of pushing every later start back. 0 gives the
            textbook bucket, which loses about 1% of the quota to millisecond lateness.
        max_cooldown: the longest shared pause a 429 may impose, in seconds.

    Example:
        >>> rl = RateLimit(requests=60, per=60.0)
        >>> round(rl.sustained_fraction, 3)
        0.982
    """

    requests: int = 60
    per: float = 60.0
    burst: int = 1
    slack: float = 0.1
    max_cooldown: float = 120.0

    def __post_init__(self) -> None:
        if self.requests < 2:
            raise ValueError("RateLimit.requests must be at least 2 (one token is the margin)")
        if not (math.isfinite(self.per) and self.per > 0):
            raise ValueError("RateLimit.per must be a positive number of seconds")
        if not 1 <= self.burst < self.requests:
            raise ValueError("RateLimit.burst must be at least 1 and below requests")
        if not 0 <= self.slack < 1:
            raise ValueError("RateLimit.slack must be in [0, 1)")
        if self.requests - self.burst - self.slack <= 0:
            raise ValueError("RateLimit leaves no sustained rate: lower burst")
        if self.max_cooldown < 0:
            raise ValueError("RateLimit.max_cooldown must not be negative")

    @classmethod
    def parse(cls, text: str, *, burst: int = 1) -> RateLimit:
        """Parse ``"60/60"`` (requests/seconds) or ``"60/min"``.

        Example:
            >>> RateLimit.parse("600/6").requests
            600
        """
        try:
            count_text, _, per_text = text.partition("/")
            per_text = per_text.strip().lower()
            units = {"s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0, "hour": 3600.0}
            per = units[per_text] if per_text in units else float(per_text)
            return cls(requests=int(count_text), per=per, burst=burst)
        except (ValueError, KeyError) as exc:
            raise ValueError(
                f"invalid rate {text!r}: expected REQUESTS/SECONDS, e.g. 60/60"
            ) from exc

    @property
    def capacity(self) -> float:
        """Bucket capacity in tokens: ``burst + slack``."""
        return self.burst + self.slack

    @property
    def rate(self) -> float:
        """Sustained refill rate in tokens per second."""
        return (self.requests - self.burst - self.slack) / self.per

    @property
    def spacing(self) -> float:
        """Seconds between starts at the sustained rate."""
        return 1.0 / self.rate

    @property
    def sustained_fraction(self) -> float:
        """The sustained rate as a fraction of the quota (0.982 by default)."""
        return self.rate * self.per / self.requests


@runtime_checkable
class Limiter(Protocol):
    """What the client needs from a rate limiter; implement it to share a quota between processes.

    ``acquire`` returns when one request may start (every attempt calls it, retries included);
    ``cooldown`` asks every sender of the quota to pause, after the server answered 429.
    Cancelling ``acquire`` must not consume a token.
    """

    async def acquire(self) -> None:
        """Wait until one request may start."""
        ...

    async def cooldown(self, seconds: float) -> None:
        """Pause every sender for at least ``seconds`` from now."""
        ...


@dataclass(slots=True, eq=False)
class LocalLimiter:
    """The in-process limiter: an aiolimiter bucket plus one shared cooldown.

    Create one per event loop (the client does).

    Example:
        >>> limiter = LocalLimiter(RateLimit(requests=60, per=60.0))
        >>> # async: await limiter.acquire() before each request
    """

    rate_limit: RateLimit
    _bucket: AsyncLimiter = field(init=False, repr=False)
    _cooldown_until: float = field(init=False, default=-math.inf, repr=False)

    def __post_init__(self) -> None:
        rl = self.rate_limit
        # aiolimiter's max_rate is the capacity; time_period the time to drain a full bucket.
        self._bucket = AsyncLimiter(rl.capacity, rl.capacity / rl.rate)

    @property
    def cooldown_remaining(self) -> float:
        """Seconds left in the current cooldown (0 when none)."""
        return max(0.0, self._cooldown_until - anyio.current_time())

    async def acquire(self) -> None:
        """Wait for the cooldown, then for a token.

        A cooldown that begins while waiting for a token voids the token: sends held back by a
        cooldown must not all start at its end, so they queue for fresh tokens instead.
        """
        while True:
            wait = self._cooldown_until - anyio.current_time()
            if wait > 0:
                await anyio.sleep(wait)
                continue
            cooldown_seen = self._cooldown_until
            await self._bucket.acquire()
            if self._cooldown_until == cooldown_seen:
                return

    async def cooldown(self, seconds: float) -> None:
        """Pause every sender of this limiter for ``seconds`` (capped at ``max_cooldown``)."""
        seconds = min(max(seconds, 0.0), self.rate_limit.max_cooldown)
        until = anyio.current_time() + seconds
        if until > self._cooldown_until:
            self._cooldown_until = until
