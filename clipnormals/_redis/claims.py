"""Claims by content hash, shared through Redis: an image is uploaded once, whichever process or
machine meets it first, and once more only when the one that claimed it died.

A claim is a small record per key (a content hash, such as the SHA-256 of the image file that a
batch manifest records) in one of two states:

- *held* by an owner: that process is working on it. Another process that asks gets ``held``
  and should come back later (or wait, :meth:`RedisClaims.wait`);
- *done*, with a short record the owner left (where the output is, say). Everyone who asks from
  then on gets ``done`` and the record: nobody uploads that image again.

An owner that fails without a result (not sent for credits, an error) releases the claim, and
the next process to ask gets it. An owner that dies cannot release it: its claims are held by a
lease, the same leases as :class:`RedisLedger`'s (one sorted set of owners per name, renewed in
the background every ``lease / 3`` seconds while the claims object is open). Once the lease has
lapsed, the next process to ask takes the claim over, and the :class:`Claim` it gets says so
(``taken_over``): the dead owner's upload may have been charged, so this second upload may be a
second charge, but no image is left undone. A lapsed lease is final: the owner, if it was only
frozen and comes back, continues under a new owner id; its ``done`` still records the result
(it returns ``False`` to say someone else had taken the claim meanwhile).

Keys: ``clipnormals:{name}:claim:<key>`` (a hash per claim) and ``clipnormals:{name}:owners``.
A claim expires ``ttl`` seconds after its last change (default a week: long enough for a job to
be resumed, short enough to be forgotten).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Literal, Self

import anyio
from anyio.abc import TaskGroup

from .._errors import ClientClosedError, ClipnormalsError
from .connection import LEASE_LUA, RedisConnection, aioredis, check_name, new_owner

__all__ = ["Claim", "RedisClaims"]

logger = logging.getLogger("clipnormals")

_US: Final = 1_000_000
_GRANTED, _HELD, _DONE, _LOST = 0, 1, 2, 4
_MAX_KEY: Final = 512
_MAX_RECORD: Final = 64 * 1024

_SCRIPT: Final = (
    """
-- KEYS: 1 the claim (hash: state, owner, record, takeovers), 2 owners (sorted set)
-- ARGV: 1 operation, 2 owner, 3 lease (us), 4 ttl (ms), 5.. operands
if redis.replicate_commands then redis.replicate_commands() end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local op, owner, lease, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local C, OWNERS = KEYS[1], KEYS[2]
local function int(x) return string.format('%.0f', x) end
"""
    + LEASE_LUA
    + """
local function field(f) return redis.call('HGET', C, f) or '' end

if op == 'claim' then
  if not renew(owner) then return {4, '', ''} end
  local state, holder = field('state'), field('owner')
  if state == 'done' then return {2, field('record'), holder} end
  if state == 'held' and holder ~= owner then
    if lease_state(holder) == 'alive' then return {1, '', holder} end
    -- its owner died holding it: take it over (its upload may have been charged)
    redis.call('HSET', C, 'owner', owner)
    redis.call('HINCRBY', C, 'takeovers', 1)
    redis.call('PEXPIRE', C, ttl)
    return {0, '', holder}
  end
  redis.call('HSET', C, 'state', 'held', 'owner', owner)
  redis.call('PEXPIRE', C, ttl)
  return {0, '', ''}

elseif op == 'done' then
  renew(owner)
  local mine = field('owner') == owner and 1 or 0
  redis.call('HSET', C, 'state', 'done', 'owner', owner, 'record', ARGV[5])
  redis.call('PEXPIRE', C, ttl)
  return {mine}

elseif op == 'release' then
  if field('state') == 'held' and field('owner') == owner then
    redis.call('DEL', C)
    return {1}
  end
  return {0}

elseif op == 'renew' then
  if renew(owner) then return {0} end
  return {4}

elseif op == 'leave' then
  leave(owner)
  return {0}

elseif op == 'peek' then
  return {field('state'), field('owner'), field('record'), field('takeovers')}
end
return redis.error_reply('clipnormals claims: unknown operation ' .. tostring(op))
"""
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Claim:
    """What :meth:`RedisClaims.claim` found.

    Attributes:
        state: ``"granted"`` (yours: do the work, then :meth:`RedisClaims.done` or
            :meth:`RedisClaims.release`), ``"held"`` (another live process is on it: come back
            later) or ``"done"`` (finished: ``record`` says what its owner left).
        record: the record left by ``done``; ``None`` unless ``state == "done"``.
        holder: the owner id of the process holding it (``held``), that finished it (``done``)
            or that died holding it (``granted`` with ``taken_over``).
        taken_over: granted because its previous owner died holding it: that owner's upload
            may have been charged.

    Example:
        >>> Claim(state="granted").granted
        True
    """

    state: Literal["granted", "held", "done"]
    record: str | None = None
    holder: str | None = None
    taken_over: bool = False

    @property
    def granted(self) -> bool:
        """True when the claim is yours now."""
        return self.state == "granted"


class RedisClaims:
    """Claims by content hash shared by every process and machine using ``name``, so that each
    image is uploaded once (see the module docstring).

    Open it with ``async with`` (it renews its lease in the background, so that the claims of a
    process that dies can be taken over); one instance per process and event loop.

    Args:
        redis: a ``redis.asyncio.Redis`` client to use (left open by :meth:`aclose`).
        url: a Redis URL to connect to instead; default ``redis://localhost:6379/0``.
        name: the claims' namespace; use the ledger's name to keep a job's keys together.
        lease: seconds after which a process that stopped renewing its lease loses its claims.
        ttl: seconds a claim (held or done) is kept after its last change (default a week).
        timeout: seconds to wait for each answer from Redis.

    Raises:
        ClipnormalsError: when Redis cannot be reached or fails.
        ClientClosedError: used before ``async with``, after closing, from another event loop
            or in a forked child; nothing is sent.

    Example:
        >>> from clipnormals.redis import RedisClaims
        >>> async def upload_once(digest: str) -> str:
        ...     async with RedisClaims(url="redis://cache:6379/0", name="team-key") as claims:
        ...         claim = await claims.wait(digest)
        ...         if claim.state == "done":
        ...             return claim.record or ""
        ...         await claims.done(digest, f"out/{digest}.jpg")  # after the upload
        ...         return f"out/{digest}.jpg"
    """

    __slots__ = (
        "_closed",
        "_conn",
        "_held",
        "_lease",
        "_name",
        "_owner",
        "_owners",
        "_prefix",
        "_registered",
        "_script",
        "_tg",
        "_ttl",
    )

    def __init__(
        self,
        *,
        redis: aioredis.Redis | None = None,
        url: str | None = None,
        name: str = "default",
        lease: float = 30.0,
        ttl: float = 7 * 86_400.0,
        timeout: float = 5.0,
    ) -> None:
        if not (math.isfinite(lease) and lease > 0):
            raise ValueError("lease must be a positive number of seconds")
        if not (math.isfinite(ttl) and ttl > lease):
            raise ValueError("ttl must be a number of seconds longer than the lease")
        self._name = check_name(name)
        self._conn = RedisConnection(kind="RedisClaims", redis=redis, url=url, timeout=timeout)
        self._script = self._conn.script(_SCRIPT)
        self._prefix = f"clipnormals:{{{name}}}:claim:"
        self._owners = f"clipnormals:{{{name}}}:owners"
        self._lease = float(lease)
        self._ttl = float(ttl)
        self._owner = new_owner()
        self._registered = False
        self._held: set[str] = set()
        self._tg: TaskGroup | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"RedisClaims(name={self._name!r}, server={self._conn.where!r})"

    @property
    def name(self) -> str:
        """The claims' namespace."""
        return self._name

    @property
    def owner(self) -> str:
        """This instance's owner id in Redis (``host:pid:random``)."""
        return self._owner

    async def claim(self, key: str) -> Claim:
        """Try to claim ``key`` (a content hash) for this process.

        Raises:
            ValueError: ``key`` is empty, not printable or over 512 characters.
        """
        self._check_open()
        while True:
            # Shielded: a claim granted on the server must be known here, to be released.
            with anyio.CancelScope(shield=True):
                code, record, holder = await self._call("claim", key)
            if code == _LOST:
                self._lease_lost()
                continue
            if code == _DONE:
                self._held.discard(key)
                return Claim(state="done", record=str(record), holder=str(holder) or None)
            if code == _HELD:
                return Claim(state="held", holder=str(holder))
            self._held.add(key)
            return Claim(state="granted", holder=str(holder) or None, taken_over=bool(holder))

    async def wait(self, key: str, *, poll: float = 0.25) -> Claim:
        """Claim ``key``, waiting while another live process holds it: returns a ``granted`` or
        a ``done`` claim (after at most about ``lease`` seconds if the holder died)."""
        while True:
            found = await self.claim(key)
            if found.state != "held":
                return found
            await anyio.sleep(poll)

    async def done(self, key: str, record: str = "") -> bool:
        """Mark ``key`` finished, leaving ``record`` (at most 64 KiB) for later askers.

        Returns False when this process no longer held the claim (its lease lapsed and another
        took it over): the record is written all the same.
        """
        self._check_open()
        if len(record) > _MAX_RECORD:
            raise ValueError("a claim's record is at most 64 KiB")
        with anyio.CancelScope(shield=True):
            (mine,) = await self._call("done", key, record)
        self._held.discard(key)
        return bool(int(mine))

    async def release(self, key: str) -> None:
        """Give ``key`` back unfinished (the work failed, or was not sent): the next to ask gets
        it. Does nothing if this process does not hold it."""
        self._check_open()
        with anyio.CancelScope(shield=True):
            await self._call("release", key)
        self._held.discard(key)

    async def peek(self, key: str) -> dict[str, str]:
        """The claim's fields as stored (``state``, ``owner``, ``record``, ``takeovers``); empty
        strings when absent. Does not claim anything."""
        values = await self._call("peek", key)
        return dict(zip(("state", "owner", "record", "takeovers"), map(str, values), strict=True))

    async def __aenter__(self) -> Self:
        if self._closed:
            raise ClientClosedError("this RedisClaims is closed")
        if self._tg is not None:
            raise ClientClosedError("this RedisClaims is open already")
        self._conn.check_usable()
        tg = anyio.create_task_group()
        await tg.__aenter__()
        tg.start_soon(self._keepalive)
        self._tg = tg
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tg, self._tg = self._tg, None
        try:
            if tg is not None:
                tg.cancel_scope.cancel()
                await tg.__aexit__(None, None, None)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Release the claims still held, end the lease, and close the connection if this
        object opened it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
        if not self._conn.usable_here():
            return
        with anyio.CancelScope(shield=True):
            try:
                for key in sorted(self._held):
                    await self._call("release", key)
                self._held.clear()
                if self._registered:
                    await self._call("leave", "")
            except ClipnormalsError as exc:
                logger.warning("RedisClaims %r: could not leave cleanly: %s", self._name, exc)
            finally:
                await self._conn.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError("this RedisClaims is closed")
        if self._tg is None:
            raise ClientClosedError(
                "this RedisClaims is not open: use it inside `async with RedisClaims(...)` "
                "(it renews its lease in the background)"
            )

    async def _keepalive(self) -> None:
        while True:
            await anyio.sleep(self._lease / 3)
            if not self._registered:
                continue
            try:
                (code,) = await self._call("renew", "")
                if int(code) == _LOST:
                    self._lease_lost()
            except ClipnormalsError as exc:
                logger.warning("RedisClaims %r: could not renew its lease: %s", self._name, exc)

    def _lease_lost(self) -> None:
        logger.warning(
            "RedisClaims %r: the lease of %s lapsed; its claims may have been taken over; "
            "continuing under a new owner id",
            self._name,
            self._owner,
        )
        self._owner = new_owner()
        self._registered = False

    async def _call(self, op: str, key: str, *operands: str) -> list[int | str]:
        if op not in ("renew", "leave") and not (
            isinstance(key, str) and key and key.isprintable() and len(key) <= _MAX_KEY
        ):
            raise ValueError("a claim key is a non-empty printable string of at most 512 chars")
        args: list[str | int] = [
            op,
            self._owner,
            math.ceil(self._lease * _US),
            math.ceil(self._ttl * 1000),
            *operands,
        ]
        reply = await self._conn.run(self._script, [self._prefix + key, self._owners], args)
        if op in ("claim", "renew"):
            self._registered = True
        return [v.decode() if isinstance(v, bytes) else v for v in reply]
