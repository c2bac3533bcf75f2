"""Test your own code against a local emulator of the API: pytest fixtures and plain helpers.

Installed with clipnormals, its pytest plugin (entry point ``pytest11`` named ``clipnormals``)
puts these fixtures in every test session. It imports nothing of clipnormals until a test asks
for one of them, so a project that never does pays nothing for it at start-up; ``-p
no:clipnormals`` turns it off. A test of your code in three lines::

    @pytest.mark.anyio
    async def test_relight(clipnormals_client):
        image = await my_app.relight(clipnormals_client, "portrait.jpg")  # your code
        assert image.size == (512, 512)

Fixtures:

- ``clipnormals_emulator``: a fresh :class:`~clipnormals.emulator.Emulator` per test, with
  the key ``"test-key"``, 100 credits and the real 60-per-minute limit sped up 100 times
  (60 per 0.6 s). Read ``.stats``, change ``.set_credits()``, ``.revoke()``...
- ``clipnormals_client``: an opened :class:`clipnormals.AsyncClient` wired to that emulator in
  process (``httpx.ASGITransport``), with the emulator's rate limit. Async: mark the test
  ``@pytest.mark.anyio`` (and give anyio an ``anyio_backend`` fixture returning "asyncio").
- ``clipnormals_server``: the same emulator on a real loopback socket (``.url``), for code that
  needs a URL rather than a transport.
- ``clipnormals_emulator_config``: the base configuration; override it in a ``conftest.py``
  for a project-wide default.

Per test, change the emulator with the marker (arguments as :func:`emulator_config`) or an
indirect parameter, and the client with its own marker::

    @pytest.mark.clipnormals_emulator(credits=0)
    @pytest.mark.clipnormals_client(max_concurrency=1)
    async def test_out_of_credits(clipnormals_client): ...

    @pytest.mark.parametrize("clipnormals_emulator", [{"policy": "token"}], indirect=True)
    async def test_with_token_bucket(clipnormals_client): ...

Without pytest: :func:`emulated` opens a client on a fresh emulator; :func:`client_for` wires
a client to an emulator you built; :func:`emulator_config` builds test configurations. Nothing
here imports starlette until a fixture or helper runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from clipnormals import AsyncClient, RateLimit
    from clipnormals.emulator import Emulator, EmulatorConfig

__all__ = [
    "TEST_BASE_URL",
    "TEST_CREDITS",
    "TEST_KEY",
    "TEST_RATE",
    "client_for",
    "client_rate_limit",
    "emulated",
    "emulator_config",
]

#: The API key of the test emulator.
TEST_KEY: Final = "test-key"
#: Its starting balance: the free tier's 100 credits.
TEST_CREDITS: Final = 100
#: Its limit, (requests, per seconds): the real 60 per minute, a hundred times faster.
TEST_RATE: Final = (60, 0.6)
#: Where test clients believe they connect (a loopback URL: the client refuses plain http
#: elsewhere; in process no socket is opened at all).
TEST_BASE_URL: Final = "http://127.0.0.1"

_UNLIMITED_RATE: Final = (100_000, 1.0)


def emulator_config(
    base: EmulatorConfig | None = None,
    /,
    *,
    key: str | None = None,
    credits: int | None = None,
    rate: tuple[int, float] | str | None = None,
    policy: str | None = None,
    **fields: Any,
) -> EmulatorConfig:
    """A test configuration: ``base`` (default: :data:`TEST_KEY` with :data:`TEST_CREDITS`
    credits, :data:`TEST_RATE` sliding window, decimal ``Retry-After``) with changes.

    ``key`` / ``credits`` replace the single key of the base (or its first key's balance);
    ``rate`` (``(60, 0.6)`` or ``"60/0.6"``) and ``policy`` change its limit; any other keyword
    is an :class:`~clipnormals.emulator.EmulatorConfig` field (``limit=None`` for no limit,
    ``faults=...``, ``latency=...``).

    Example:
        >>> cfg = emulator_config(credits=3, policy="token", seed=7)
        >>> dict(cfg.keys), cfg.limit.policy, cfg.limit.requests, cfg.seed
        ({'test-key': 3}, 'token', 60, 7)
    """
    from clipnormals.emulator import EmulatorConfig, ServerLimit, parse_rate

    if base is None:
        requests, per = TEST_RATE
        base = EmulatorConfig(
            keys={TEST_KEY: TEST_CREDITS},
            limit=ServerLimit(requests=requests, per=per, retry_after="precise"),
        )
    changes = dict(fields)
    if key is not None or credits is not None:
        old_key, old_credits = next(iter(base.keys.items()), (TEST_KEY, TEST_CREDITS))
        changes.setdefault(
            "keys", {key or old_key: credits if credits is not None else old_credits}
        )
        changes.setdefault("revoked", frozenset())
    if rate is not None or policy is not None:
        limit = changes.get("limit", base.limit) or ServerLimit()
        if rate is not None:
            requests, per = parse_rate(rate) if isinstance(rate, str) else rate
            limit = dataclasses.replace(limit, requests=requests, per=per)
        if policy is not None:
            limit = dataclasses.replace(limit, policy=policy)
        changes["limit"] = limit
    return dataclasses.replace(base, **changes)


def client_rate_limit(emulator: Emulator) -> RateLimit:
    """The client-side :class:`clipnormals.RateLimit` matching the emulator's limit.

    Example:
        >>> from clipnormals.emulator import Emulator
        >>> client_rate_limit(Emulator(emulator_config(rate=(10, 1.0)))).requests
        10
    """
    from clipnormals import RateLimit

    limit = emulator.config.limit
    if limit is None:
        requests, per = _UNLIMITED_RATE
    elif limit.requests < 2:
        # The client keeps one token as margin, so it needs 2 per window: the same rate.
        requests, per = 2, limit.per * 2
    else:
        requests, per = limit.requests, limit.per
    return RateLimit(requests=requests, per=per)


def client_for(emulator: Emulator, **options: Any) -> AsyncClient:
    """An :class:`clipnormals.AsyncClient` talking to ``emulator`` in process (not opened).

    Defaults: the emulator's first key, its rate limit, an ``httpx.ASGITransport`` into its
    app; ``options`` override any :class:`~clipnormals.AsyncClient` argument.

    Example:
        >>> from clipnormals.emulator import Emulator
        >>> async def main() -> None:
        ...     emulator = Emulator(emulator_config())
        ...     async with client_for(emulator, max_concurrency=4) as client:
        ...         nm = await client.surface_normals("portrait.jpg")
    """
    from clipnormals import AsyncClient

    options.setdefault("api_key", emulator.default_key)
    options.setdefault("base_url", TEST_BASE_URL)
    options.setdefault("rate_limit", client_rate_limit(emulator))
    options.setdefault("transport", emulator.transport())
    return AsyncClient(**options)


@contextlib.asynccontextmanager
async def emulated(
    config: EmulatorConfig | None = None, /, **options: Any
) -> AsyncIterator[tuple[AsyncClient, Emulator]]:
    """Open a client on a fresh emulator (``config`` or :func:`emulator_config`'s default).

    Example:
        >>> async def main() -> None:
        ...     async with emulated(emulator_config(credits=5)) as (client, emulator):
        ...         await client.surface_normals("portrait.jpg")
        ...         assert emulator.credits("test-key") == 4
    """
    from clipnormals.emulator import Emulator

    emulator = Emulator(config if config is not None else emulator_config())
    async with client_for(emulator, **options) as client:
        yield client, emulator


if importlib.util.find_spec("pytest") is not None:  # the helpers work without pytest
    # The plugin lives in the top-level module _clipnormals_pytest, so that pytest can load it
    # in every project without importing this package (see that module). Re-exported here,
    # the hooks and fixtures still load with ``-p clipnormals.testing``.
    from _clipnormals_pytest import (  # noqa: F401
        clipnormals_client,
        clipnormals_emulator,
        clipnormals_emulator_config,
        clipnormals_server,
        pytest_configure,
    )
