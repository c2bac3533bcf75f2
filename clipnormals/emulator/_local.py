"""A throwaway emulator for one run: one fresh key, a free loopback port, stopped on exit.

What ``clipnormals batch --emulator`` and ``clipnormals demo`` run against; usable from any
asyncio program that wants a real HTTP server for a moment.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread

from ._config import EmulatorConfig, Policy, ServerLimit
from ._server import start_in_thread

__all__ = ["local_emulator"]


@asynccontextmanager
async def local_emulator(
    *,
    requests: int | None = 60,
    per: float = 60.0,
    credits: int = 1000,
    policy: Policy = "sliding",
) -> AsyncIterator[tuple[str, str]]:
    """Serve a fresh emulator on a free loopback port; yield ``(base_url, api_key)``.

    Args:
        requests, per: the server-side limit (``requests`` per ``per`` seconds); ``None``: none.
        credits: the key's balance, in credits.
        policy: how the server counts (``"sliding"``, ``"fixed"``, ``"token"``, ``"nginx"``).

    The key is made up here and lives only in this process. The server is started and stopped
    in a worker thread, so the event loop never blocks on it.

    Example:
        >>> async def main() -> None:
        ...     async with local_emulator(credits=10) as (url, key):
        ...         print(url.startswith("http://127.0.0.1:"))
    """
    key = "local-" + secrets.token_urlsafe(12)
    limit = None
    if requests is not None:
        limit = ServerLimit(requests=requests, per=per, policy=policy, retry_after="precise")
    config = EmulatorConfig(keys={key: credits}, limit=limit)
    server = await anyio.to_thread.run_sync(lambda: start_in_thread(config))
    try:
        yield server.url, key
    finally:
        await anyio.to_thread.run_sync(server.stop)
