"""A fault soak over real loopback sockets: a thousand images through an emulator that fails one
request in ten (5xx, resets, truncated bodies, stalls) after a 429 storm.

What must hold: no image lost, no 402, not one credit the client did not count, and every
result a whole normal map. The figures are printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

import clipnormals
from clipnormals.emulator import EmulatorConfig, Faults, RunningServer, ServerLimit, start_in_thread

from .fakeapi import prepared

pytestmark = [pytest.mark.anyio, pytest.mark.loopback, pytest.mark.slow]

KEY = "soak-key"
QUOTA = clipnormals.RateLimit(requests=6000, per=60.0)
FAULTS = Faults(
    script=("429",) * 20,  # the storm, first
    server_error=0.04,
    reset=0.02,
    truncate=0.015,
    truncate_jpeg=0.015,
    stall=0.01,
    stall_seconds=5.0,
    rate_limited=0.01,
    retry_after=0.2,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _server(credits: int, seed: int) -> RunningServer:
    config = EmulatorConfig(
        keys={KEY: credits},
        limit=ServerLimit(requests=QUOTA.requests, per=QUOTA.per, policy="sliding"),
        faults=FAULTS,
        seed=seed,
    )
    return start_in_thread(config)


@pytest.fixture
def soak_server() -> Iterator[RunningServer]:
    with _server(credits=5000, seed=11) as server:
        yield server


def _client(url: str) -> clipnormals.AsyncClient:
    return clipnormals.AsyncClient(
        api_key=KEY,
        base_url=url,
        rate_limit=QUOTA,
        max_concurrency=16,
        timeout=1.0,  # a stall is noticed after a second
        retry=clipnormals.RetryPolicy(attempts=10, initial=0.05, max_backoff=0.5),
    )


def _report(title: str, server: RunningServer, client: clipnormals.AsyncClient, t: float) -> None:
    stats = server.emulator.stats
    print(
        f"\n{title}: {t:.1f}s, {stats.requests} requests, faults {dict(stats.faults)}, "
        f"statuses {dict(stats.statuses)}; charged {stats.credits_charged}, client counted "
        f"{client.credits.consumed} (+{client.credits.uncertain} uncertain), "
        f"retries {client.stats.retries}, 429s {client.stats.rate_limited}"
    )


async def test_a_thousand_images_through_faults(soak_server: RunningServer) -> None:
    images = [prepared(i) for i in range(1000)]
    started = time.monotonic()
    async with _client(soak_server.url) as client:
        items = [item async for item in client.map(images)]
        _report("soak", soak_server, client, time.monotonic() - started)
        stats = soak_server.emulator.stats
        lost = [(repr(i.error), f"{i.attempts} attempts") for i in items if not i.ok]
        assert lost == []  # no image lost
        assert len(items) == 1000
        assert stats.statuses.get(402, 0) == 0
        assert client.credits.consumed == stats.credits_charged
        assert stats.faults.get("429", 0) >= 20  # the storm did happen
        for item in items:  # every result whole: a normal map of the image's own size
            result = item.unwrap()
            assert result.normals.shape == (24, 32, 3)


async def test_a_balance_that_runs_out_midway_under_faults() -> None:
    with _server(credits=200, seed=12) as server:
        async with _client(server.url) as client:
            started = time.monotonic()
            items = [item async for item in client.map([prepared(i) for i in range(300)])]
            _report("soak, 200 credits", server, client, time.monotonic() - started)
            stats = server.emulator.stats
            assert stats.statuses.get(402, 0) == 0
            charged = stats.credits_charged
            assert client.credits.consumed == charged
            # Every credit is spent, except those the client had to assume spent: requests
            # left unanswered that the server may have charged (it did not, here).
            assert 200 - client.credits.uncertain <= charged <= 200
            unsent = [i for i in items if isinstance(i.error, clipnormals.CreditBudgetError)]
            done = [i for i in items if i.ok]
            assert len(done) + len(unsent) == 300  # nothing else went wrong
            truncated = stats.faults.get("truncate", 0) + stats.faults.get("truncate-jpeg", 0)
            assert len(done) == charged - truncated  # the rest paid for bodies cut short
