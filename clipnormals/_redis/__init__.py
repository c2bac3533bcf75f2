"""Sharing one key's quota, credits and work between processes and machines through Redis (the
``redis`` extra).

Owns :class:`RedisLimiter` (``limiter``: one quota), :class:`RedisLedger` (``ledger``: one
credit balance and budget; its Lua script in ``ledger_script``), :class:`RedisClaims`
(``claims``: each image uploaded once), the leases they share and their connection
(``connection``, the only importer of redis-py). Users import them from :mod:`clipnormals.redis`.

May import: the client core's limiter and credit interfaces (``clipnormals._core.limiter``,
``clipnormals._core.credits``) and ``clipnormals._errors``.
"""
