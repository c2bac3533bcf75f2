"""Sharing one key's quota between processes and machines through Redis (the ``redis`` extra).

Owns :class:`RedisLimiter` (``limiter``). Users import it from :mod:`clipnormals.redis`.

May import: the client core's limiter interface (``clipnormals._core.limiter``) and
``clipnormals._errors``.
"""
