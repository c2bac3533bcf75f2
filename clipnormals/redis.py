"""Share one Clipdrop key between processes and machines through Redis: its quota, its credits,
and the work.

Needs the ``redis`` extra (``pip install 'clipnormals[redis]'``). Every process creates its own
objects with the same ``name`` and hands them to its client:

- :class:`RedisLimiter` (``AsyncClient(limiter=...)``): together the processes never start more
  than ``requests`` requests in any window of ``per`` seconds, and a 429 seen by one pauses all;
- :class:`RedisLedger` (``AsyncClient(ledger=...)``): one credit balance and one budget; with
  the balance reported by the server, no process ever gets a 402, and the budget caps what the
  server charges them all together. The reservations of a process that dies expire after a
  lease, counted as possibly charged;
- :class:`RedisClaims`: claims by content hash, so that an image met by several processes is
  uploaded once.

A Redis server that cannot be reached or fails raises :class:`~clipnormals.SharedStateError`
(a :class:`~clipnormals.ClipnormalsError`), before the request that needed it is sent.

The ledger and the claims renew their leases in the background: open them with ``async with``
(a blocking :class:`~clipnormals.Client` opens the ledger given to it).

Example:
    >>> import clipnormals
    >>> from clipnormals.redis import RedisLedger, RedisLimiter
    >>> async def main() -> None:
    ...     quota = clipnormals.RateLimit(requests=60, per=60.0)
    ...     url, name = "redis://cache.internal:6379/0", "prod-key"
    ...     async with (
    ...         RedisLimiter(quota, url=url, name=name) as limiter,
    ...         RedisLedger(clipnormals.CreditPolicy(budget=1000), url=url, name=name) as ledger,
    ...         clipnormals.AsyncClient(rate_limit=quota, limiter=limiter, ledger=ledger) as c,
    ...     ):
    ...         nm = await c.surface_normals("portrait.jpg")
"""

from ._redis.claims import Claim, RedisClaims
from ._redis.ledger import RedisLedger
from ._redis.limiter import RedisLimiter

__all__ = ["Claim", "RedisClaims", "RedisLedger", "RedisLimiter"]
