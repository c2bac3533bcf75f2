"""Share one Clipdrop quota between processes and machines through Redis.

Needs the ``redis`` extra (``pip install 'clipnormals[redis]'``). Every process creates its own
:class:`RedisLimiter` with the same :class:`~clipnormals.RateLimit` and ``name`` and hands it to
its client; together they never start more than ``requests`` requests in any window of ``per``
seconds, and a 429 seen by one pauses them all.

Example:
    >>> import clipnormals
    >>> from clipnormals.redis import RedisLimiter
    >>> async def main() -> None:
    ...     quota = clipnormals.RateLimit(requests=60, per=60.0)
    ...     limiter = RedisLimiter(quota, url="redis://cache.internal:6379/0", name="prod-key")
    ...     async with limiter, clipnormals.AsyncClient(rate_limit=quota, limiter=limiter) as c:
    ...         nm = await c.surface_normals("portrait.jpg")
"""

from ._redis.limiter import RedisLimiter

__all__ = ["RedisLimiter"]
