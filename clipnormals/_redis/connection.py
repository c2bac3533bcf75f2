"""One Redis connection as every shared object here uses it: owned or borrowed, bound to one
process and one event loop, its failures turned into :class:`SharedStateError` without the
password, each script call under a deadline.

The only importer of redis-py in the package, with the Lua helpers the scripts share.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import uuid
from typing import Any, Final

import anyio

from .._errors import ClientClosedError, SharedStateError

try:
    import redis.asyncio as aioredis
    from redis.commands.core import AsyncScript
    from redis.exceptions import RedisError
except ImportError as exc:
    raise ImportError(
        "clipnormals.redis needs the redis package: pip install 'clipnormals[redis]'"
    ) from exc

__all__ = ["LEASE_LUA", "RedisConnection", "aioredis", "check_name", "new_owner"]

_DEFAULT_URL: Final = "redis://localhost:6379/0"

# Leases of the processes sharing a name, for the scripts that need to know who is alive.
# OWNERS is a sorted set: owner id -> the end of its lease, in server microseconds. A lease that
# has lapsed is final: the owner is dead and stays listed (so that it cannot come back and be
# mistaken for alive) until ``ttl`` after the lapse. Expects ``now``, ``lease`` (microseconds),
# ``ttl`` (milliseconds), ``OWNERS`` and ``int`` to be defined by the script that includes it.
LEASE_LUA: Final = """
local function lease_state(o)
  local s = redis.call('ZSCORE', OWNERS, o)
  if not s then return 'unknown' end
  if tonumber(s) < now then return 'dead' end
  return 'alive'
end
-- Extend o's lease; false (and nothing changed) when it has lapsed already.
local function renew(o)
  if lease_state(o) == 'dead' then return false end
  redis.call('ZADD', OWNERS, int(now + lease), o)
  redis.call('ZREMRANGEBYSCORE', OWNERS, '-inf', '(' .. int(now - ttl * 1000))
  redis.call('PEXPIRE', OWNERS, int(ttl + lease / 1000))
  return true
end
-- End o's lease now (a clean exit): what it still held is treated as a dead owner's.
local function leave(o)
  if redis.call('ZSCORE', OWNERS, o) then redis.call('ZADD', OWNERS, int(now - 1), o) end
end
"""


def check_name(name: str) -> str:
    """The shared name, checked: printable, non-empty, no braces (they make the hash tag)."""
    if not (isinstance(name, str) and name.isprintable() and name) or {"{", "}"} & set(name):
        raise ValueError("name must be a non-empty printable string without '{' or '}'")
    return name


def new_owner() -> str:
    """An owner id that says where it lives (host and process) and is never reused."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class RedisConnection:
    """A ``redis.asyncio.Redis`` client, owned (made from ``url``) or borrowed (``redis``)."""

    __slots__ = ("_kind", "_loop", "_owned", "_pid", "_secret", "_timeout", "redis", "where")

    def __init__(
        self,
        *,
        kind: str,
        redis: aioredis.Redis | None,
        url: str | None,
        timeout: float,
    ) -> None:
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError("timeout must be a positive number of seconds")
        if redis is not None and url is not None:
            raise ValueError("pass either redis= or url=, not both")
        self._kind = kind
        self._pid = os.getpid()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timeout = float(timeout)
        self._owned = redis is None
        if redis is None:
            redis = aioredis.Redis.from_url(
                url or _DEFAULT_URL,
                socket_connect_timeout=self._timeout,
                socket_timeout=self._timeout,
            )
        self.redis = redis
        kwargs = redis.connection_pool.connection_kwargs
        self.where = _describe(kwargs)
        password = kwargs.get("password")
        self._secret = str(password) if password else None

    @property
    def timeout(self) -> float:
        """Seconds to wait for each answer from Redis."""
        return self._timeout

    def script(self, text: str) -> AsyncScript:
        """Register a Lua script (EVALSHA, loaded on first use)."""
        return self.redis.register_script(text)

    def usable_here(self) -> bool:
        """False in a forked child or in another event loop than the one this was first used in."""
        if self._pid != os.getpid():
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        return self._loop is None or self._loop is loop

    def check_usable(self) -> None:
        """Its connections belong to one process and one event loop: say so before any I/O."""
        if self._pid != os.getpid():
            raise ClientClosedError(
                f"this {self._kind} was created in process {self._pid}, and this is process "
                f"{os.getpid()} (a fork): its connections stayed with the parent. Create one "
                f"{self._kind} per process, after the fork"
            )
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise ClientClosedError(
                f"this {self._kind}'s connections belong to the event loop it was first used "
                f"in; create one {self._kind} per event loop (with the same name to share)"
            )

    async def run(self, script: AsyncScript, keys: list[str], args: list[str | int]) -> Any:
        """Run ``script``; Redis failures and timeouts become :class:`SharedStateError` (a
        :class:`ClipnormalsError`)."""
        self.check_usable()
        try:
            with anyio.fail_after(self._timeout):
                return await script(keys=keys, args=args)
        except TimeoutError as exc:
            raise SharedStateError(
                f"Redis at {self.where} did not answer within {self._timeout:g} s"
            ) from exc
        except RedisError as exc:
            raise SharedStateError(
                self.scrub(f"Redis at {self.where} failed: {type(exc).__name__}: {exc}")
            ) from exc

    def scrub(self, text: str) -> str:
        """``text`` without the password."""
        return text.replace(self._secret, "***") if self._secret else text

    async def aclose(self) -> None:
        """Close the connection pool if it was made here (a client passed in is left open).

        In a forked child, or from another event loop, it only lets go of the connections:
        they belong to the parent, or to a loop that is gone.
        """
        if not self._owned or not self.usable_here():
            return
        await self.redis.aclose()


def _describe(kwargs: dict[str, Any]) -> str:
    """host:port/db (or the socket path): where the server is, without any credential."""
    db = kwargs.get("db", 0)
    if kwargs.get("path"):
        return f"unix:{kwargs['path']}?db={db}"
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{db}"
