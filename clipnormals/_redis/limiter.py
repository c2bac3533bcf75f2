"""A rate limiter shared through Redis: one quota for every process and machine using one key.

The guarantee is :class:`~clipnormals.LocalLimiter`'s, across every process that uses the same
``name``: no window of ``per`` seconds holds more than ``requests`` starts (a start is the moment
``acquire`` returns). The bucket is GCRA, the "theoretical arrival time" form of a token bucket,
with emission interval ``T = 1 / rate`` and tolerance ``tau = (capacity - 1) * T``: a start at
``t`` conforms when ``t >= TAT - tau``, and moves ``TAT`` to ``max(TAT, t) + T``. That is the
bucket of capacity ``burst + slack`` refilled at ``rate`` that LocalLimiter runs, with times
rounded to whole microseconds in the safe direction (``T`` up, ``tau`` down). With
``strict=True`` the tolerance is 0: slots are a whole spacing apart, though a start may still come
up to half a spacing after its slot (see below), so two starts may be closer than a spacing. This
limiter does not learn from 429s: it pauses every process on one and leaves the lessons to
:class:`~clipnormals.LocalLimiter`.

Every decision runs inside one Lua script (EVALSHA, atomic on the server) and reads the Redis
server's clock (``TIME``), so client clocks, which may disagree by seconds across machines, never
matter; clients only ever sleep for durations the server computed.

Reserved slots. A caller that may not start yet does not poll: the script hands it the next slot
on the schedule (``TAT`` advances at once) and the caller sleeps until then. Waiters are thus
served in the order they asked, and a waiter that wakes late does not push later ones back:
lateness never accumulates. Two rules keep the guarantee and bound what can go wrong:

- *Late slots are forfeited.* After sleeping, the caller claims its slot (one more round trip,
  which also reads the cooldown). A claim more than half a spacing after the slot fails and the
  caller queues again. Starts then lie within ``T / 2`` of their slots, and ``requests + 1``
  starts still span more than ``per``: the other half spacing is left for the reply to reach the
  caller and for arrival jitter at the API. (A start due now needs no claim: it starts on the
  reply that granted it.)
- *The queue has a horizon.* Slots are reserved at most one window (``per``, and at least four
  spacings) ahead; a caller further back gets a plain "ask again in x" and is not served in
  order: a caller that just started usually asks again first. Whatever goes wrong, at most one
  window of schedule is ever spoken for. (The client holds at most ``max_concurrency`` callers
  in ``acquire``, so the horizon is only reached with many processes on a small quota.)

Cancellation. A caller cancelled while it waits gives its slot back (a shielded round trip): if
it was the last one handed out, ``TAT`` steps back by ``T``, exactly as if it had never been
reserved; otherwise the slot is kept in a small sorted set and the next caller takes it over.
When the slot cannot be returned (the process was killed, Redis is unreachable, or the slot had
already passed), it is lost: throughput drops by one spacing (a crash loses at most the horizon),
and the guarantee is untouched, since a slot nobody uses can only leave windows emptier.

Cooldown. ``cooldown(seconds)`` stores the end of the pause in server time with a ``max()`` so
a pause is never shortened, and no slot is handed out before it ends. As in LocalLimiter, a
cooldown that begins while a caller waits voids its slot: the claim fails and the caller queues
again once the pause is over, so the senders held back do not all start at its end. Since every
outstanding slot is void, the cooldown also drops ``TAT`` to where one start at the cooldown's
beginning would put it (never lower), and forgets returned slots.

Keys: ``clipnormals:{name}:tat``, ``clipnormals:{name}:cooldown``, ``clipnormals:{name}:returned``.
Each expires about a second after the time it holds has passed, when it no longer says anything;
an idle quota leaves nothing behind. The braces make the three keys one Redis Cluster hash slot.

The connection (owned or borrowed, one process, one event loop, errors without the password) is
``connection``'s; users import the limiter from ``clipnormals.redis``.
"""

from __future__ import annotations

import logging
import math
from types import TracebackType
from typing import Final, Self

import anyio
import anyio.lowlevel

from .._core.limiter import RateLimit
from .._errors import ClipnormalsError
from .connection import RedisConnection, aioredis, check_name

__all__ = ["RedisLimiter"]

logger = logging.getLogger("clipnormals")

_HORIZON_MIN_SPACINGS: Final = 4
_US: Final = 1_000_000

# Reply kinds of the script, shared with the Lua text below.
_SLOT, _COOLDOWN, _FULL, _VOID, _EARLY, _LATE = 0, 1, 2, 3, 4, 5

_SCRIPT: Final = """
-- KEYS: 1 theoretical arrival time (TAT), 2 cooldown end, 3 returned slots (sorted set)
-- ARGV: 1 operation, 2 emission interval T, 3 tolerance tau, 4.. operands
-- Every time is an integer count of microseconds on the server clock.
if redis.replicate_commands then redis.replicate_commands() end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local op, T, tau = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])

local function int(x) return string.format('%.0f', x) end
local function num(key) return tonumber(redis.call('GET', key) or '0') end
-- A stored time says nothing once it has passed; the key outlives it by one second.
local function store(key, t)
  redis.call('SET', key, int(t), 'PX', int(math.max(t - now, 0) / 1000 + 1000))
end

if op == 'reserve' then
  local cooldown = num(KEYS[2])
  if cooldown > now then return {1, cooldown - now, 0, 0, cooldown} end
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. int(now))
  local returned = redis.call('ZRANGE', KEYS[3], 0, 0)
  if returned[1] then
    redis.call('ZREM', KEYS[3], returned[1])
    local slot = tonumber(returned[1])
    return {0, slot - now, slot, 0, cooldown}
  end
  local tat = math.max(num(KEYS[1]), now)
  local slot = math.max(tat - tau, now)
  local horizon = tonumber(ARGV[4])
  if slot - now > horizon then return {2, slot - now - horizon, 0, 0, cooldown} end
  store(KEYS[1], tat + T)
  return {0, slot - now, slot, tat + T, cooldown}

elseif op == 'claim' then
  local slot, seen, allowance = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
  if num(KEYS[2]) > seen then return {3, 0} end
  if now < slot then return {4, slot - now} end
  if now - slot > allowance then return {5, now - slot} end
  return {0, now - slot}

elseif op == 'release' then
  local slot, tat_after, seen = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
  -- a cooldown has voided the slot and rebuilt the schedule: nothing to give back
  if num(KEYS[2]) > seen then return {0} end
  if tat_after > 0 and num(KEYS[1]) == tat_after then
    store(KEYS[1], tat_after - T)
    return {1}
  end
  if slot <= now then return {0} end
  redis.call('ZADD', KEYS[3], int(slot), int(slot))
  local last = redis.call('ZRANGE', KEYS[3], -1, -1)
  redis.call('PEXPIRE', KEYS[3], int((tonumber(last[1]) - now) / 1000 + 1000))
  return {2}

elseif op == 'cooldown' then
  local ends = now + tonumber(ARGV[4])
  local current = num(KEYS[2])
  if ends <= current then return {0, current - now} end
  store(KEYS[2], ends)
  if num(KEYS[1]) > now + tau + T then store(KEYS[1], now + tau + T) end
  redis.call('DEL', KEYS[3])
  return {1, ends - now}

elseif op == 'remaining' then
  return {math.max(num(KEYS[2]) - now, 0)}
end
return redis.error_reply('clipnormals limiter: unknown operation ' .. tostring(op))
"""


class RedisLimiter:
    """A :class:`~clipnormals.Limiter` whose quota is shared by every process using ``name``.

    Give each process (or each client) its own instance, all with the same ``rate_limit`` and
    ``name``; together they stay under the quota. See the module docstring for the algorithm.

    Args:
        rate_limit: the quota, as for the in-process limiter.
        redis: a ``redis.asyncio.Redis`` client to use (left open by :meth:`aclose`).
        url: a Redis URL (``redis://``, ``rediss://`` or ``unix://``) to connect to instead;
            default ``redis://localhost:6379/0``. The password it may carry is never shown.
        name: the quota's name: every limiter with the same name shares one bucket.
        timeout: seconds to wait for each answer from Redis.

    Raises:
        ClipnormalsError: from ``acquire``/``cooldown`` when Redis cannot be reached or fails.

    Example:
        >>> import clipnormals
        >>> from clipnormals.redis import RedisLimiter
        >>> async def main() -> None:
        ...     rl = clipnormals.RateLimit(requests=60, per=60.0)
        ...     async with RedisLimiter(rl, url="redis://cache:6379/0", name="team-key") as lim:
        ...         async with clipnormals.AsyncClient(rate_limit=rl, limiter=lim) as client:
        ...             await client.surface_normals("portrait.jpg")
    """

    __slots__ = (
        "_allowance",
        "_conn",
        "_emission",
        "_horizon",
        "_keys",
        "_name",
        "_script",
        "_tolerance",
        "rate_limit",
    )

    def __init__(
        self,
        rate_limit: RateLimit,
        *,
        redis: aioredis.Redis | None = None,
        url: str | None = None,
        name: str = "default",
        timeout: float = 5.0,
    ) -> None:
        if not isinstance(rate_limit, RateLimit):
            raise TypeError("rate_limit must be a clipnormals.RateLimit")
        self._name = check_name(name)
        self.rate_limit = rate_limit
        self._conn = RedisConnection(kind="RedisLimiter", redis=redis, url=url, timeout=timeout)
        self._script = self._conn.script(_SCRIPT)
        self._keys = tuple(f"clipnormals:{{{name}}}:{k}" for k in ("tat", "cooldown", "returned"))
        # Rounded in the safe direction: spacing up, tolerance down.
        self._emission = math.ceil(_US / rate_limit.rate)
        capacity = 1.0 if rate_limit.strict else rate_limit.capacity
        self._tolerance = math.floor((capacity - 1) * _US / rate_limit.rate)
        self._horizon = max(math.ceil(rate_limit.per * _US), _HORIZON_MIN_SPACINGS * self._emission)
        self._allowance = self._emission // 2

    def __repr__(self) -> str:
        return (
            f"RedisLimiter(name={self._name!r}, server={self._conn.where!r}, "
            f"rate_limit={self.rate_limit!r})"
        )

    @property
    def name(self) -> str:
        """The quota's name; limiters with the same name share one bucket."""
        return self._name

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection if this limiter opened it (a client passed in is left open).

        In a forked child, or from another event loop, it only lets go of the connections:
        they belong to the parent, or to a loop that is gone.
        """
        await self._conn.aclose()

    async def acquire(self) -> float:
        """Wait until one request may start: for the cooldown, then for a slot on the schedule;
        return the start time (``anyio.current_time()``).

        Cancelling it gives the reserved slot back (see the module docstring).
        """
        while True:
            # Shielded: once the server has reserved a slot, the reply must reach us so that
            # a cancellation can give the slot back instead of losing it.
            with anyio.CancelScope(shield=True):
                kind, wait, slot, tat_after, seen = await self._run("reserve", self._horizon)
            if kind != _SLOT:  # a cooldown, or the queue is full up to the horizon
                await anyio.sleep(wait / _US)
                continue
            try:
                if wait <= 0:
                    await anyio.lowlevel.checkpoint_if_cancelled()
                    return anyio.current_time()
                await anyio.sleep(wait / _US)
                if await self._claim(slot, seen):
                    return anyio.current_time()
            except BaseException:
                await self._give_back(slot, tat_after, seen)
                raise

    async def cooldown(self, seconds: float) -> None:
        """Pause every sender sharing the quota for ``seconds`` (the client has capped them at
        ``RetryPolicy.max_retry_after``; the deprecated ``RateLimit.max_cooldown`` applies too
        when set).

        A longer pause already under way is kept: a cooldown is never shortened.
        """
        if math.isnan(seconds):
            raise ValueError("cooldown seconds must be a number")
        seconds = max(seconds, 0.0)
        if self.rate_limit.max_cooldown is not None:
            seconds = min(seconds, self.rate_limit.max_cooldown)
        await self._run("cooldown", math.ceil(seconds * _US))

    async def rate_limited(
        self, *, started: float, pause: float, retry_after: float | None = None
    ) -> None:
        """The server answered 429: pause every sender sharing the quota for ``pause`` seconds.

        This limiter does not learn from 429s (the lessons of :class:`~clipnormals.LocalLimiter`
        are not shared through Redis): give every process the settings a lesson taught, e.g.
        ``RateLimit(..., strict=True)`` or a lower ``requests``.
        """
        await self.cooldown(pause)

    async def admitted(self, *, started: float) -> None:
        """Nothing to do: this limiter does not learn."""

    @property
    def learned(self) -> RateLimit | None:
        """Always ``None``: this limiter does not learn from 429s."""
        return None

    async def cooldown_remaining(self) -> float:
        """Seconds left in the shared cooldown (0 when none), by the server's clock."""
        (left,) = await self._run("remaining")
        return left / _US

    async def _claim(self, slot: int, seen: int) -> bool:
        """Confirm a reserved slot once it is due; False when it was voided or missed."""
        while True:
            kind, late = await self._run("claim", slot, seen, self._allowance)
            if kind == _EARLY:  # woke before the server's clock reached the slot
                await anyio.sleep(late / _US)
                continue
            if kind == _LATE:
                logger.debug("rate-limit slot missed by %.1f ms; queueing again", late / 1000)
            return kind == _SLOT

    async def _give_back(self, slot: int, tat_after: int, seen: int) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await self._run("release", slot, tat_after, seen)
            except ClipnormalsError as exc:
                logger.debug("could not give a rate-limit slot back: %s", exc.message)

    async def _run(self, op: str, *operands: int) -> list[int]:
        """Run one operation of the script; Redis failures become ClipnormalsError."""
        args: list[str | int] = [op, self._emission, self._tolerance, *operands]
        reply = await self._conn.run(self._script, list(self._keys), args)
        return [int(v) for v in reply]
