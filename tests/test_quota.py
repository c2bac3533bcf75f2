"""The client against server-side limiters written in the test: never a 429, never a full window.

Runs on a virtual clock, so the real quota (60 per minute) is used unscaled and hundreds of
requests take milliseconds.
"""

from __future__ import annotations

import anyio
import httpx
import pytest

import clipnormals

from .fakeapi import KEY, FakeAPI, lognormal, max_in_window, prepared

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend(virtual_time_backend: object) -> object:
    return virtual_time_backend


def _client(api: FakeAPI, **kwargs: object) -> clipnormals.AsyncClient:
    options: dict[str, object] = {
        "api_key": KEY,
        "transport": api.transport(),
        "rate_limit": clipnormals.RateLimit(requests=api.requests, per=api.per),
    }
    options.update(kwargs)
    return clipnormals.AsyncClient(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize("policy", ["fixed", "sliding", "token", "nginx"])
async def test_never_trips_any_server_limiter(policy: str) -> None:
    # Latency with a median of three request spacings and a long tail keeps several requests in
    # flight; an uplink delay that varies by up to half a spacing moves arrivals around.
    api = FakeAPI(
        policy=policy,
        credits=None,
        latency=lognormal(median=3.0, sigma=0.8, seed=7),
    )
    images = [prepared(seed=i % 5) for i in range(300)]
    async with _client(api) as client:
        results = [item async for item in client.map(images)]
    assert all(item.ok for item in results)
    assert sorted(item.index for item in results) == list(range(300))
    assert 429 not in api.statuses
    assert len(api.arrivals) == 300
    assert max_in_window(api.arrivals, 60.0) <= 60
    assert api.max_in_flight > 1
    # and it is not timid: the steady state reaches the designed share of the quota
    span = api.arrivals[-1] - api.arrivals[0]
    assert 299 / span >= clipnormals.RateLimit().rate * 0.995  # starts per second


async def test_arrival_jitter_within_a_spacing_is_tolerated() -> None:
    # The server counts arrivals; the network delays each request by 0..0.5 s (half a spacing).
    jitter = lognormal(median=0.1, sigma=1.0, seed=3)
    api = FakeAPI(policy="sliding", credits=None, latency=lambda: 0.2)
    inner = api.handle

    async def handle(request: httpx.Request) -> httpx.Response:
        await anyio.sleep(min(jitter(), 0.5))
        return await inner(request)

    images = [prepared(seed=1)] * 240
    async with clipnormals.AsyncClient(
        api_key=KEY, transport=httpx.MockTransport(handle), rate_limit=clipnormals.RateLimit()
    ) as client:
        results = [item async for item in client.map(images)]
    assert all(item.ok for item in results)
    assert 429 not in api.statuses
    assert max_in_window(api.arrivals, 60.0) <= 60


async def test_every_attempt_takes_a_token() -> None:
    # Half the answers are 503: retries must stay inside the quota too.
    script: list[httpx.Response | Exception | None] = []
    for i in range(400):
        script.append(httpx.Response(503) if i % 2 == 0 else None)
    api = FakeAPI(policy="fixed", credits=None, script=script)
    async with _client(api, retry=clipnormals.RetryPolicy(initial=0.01, attempts=30)) as client:
        results = [item async for item in client.map([prepared()] * 150)]
    assert all(item.ok for item in results), {repr(i.error) for i in results if not i.ok}
    assert client.stats.retries >= 100
    assert 429 not in api.statuses
    assert max_in_window(api.arrivals, 60.0) <= 60


async def test_lower_server_quota_recovers_through_shared_cooldown() -> None:
    # The server allows only 30 a minute while the client believes 60: 429s happen, the client
    # pauses every sender, and no image is lost.
    api = FakeAPI(policy="sliding", credits=None, requests=30)
    async with _client(
        api,
        rate_limit=clipnormals.RateLimit(requests=60, per=60.0),
        retry=clipnormals.RetryPolicy(attempts=20, total=3600.0),
    ) as client:
        results = [item async for item in client.map([prepared()] * 80)]
    assert all(item.ok for item in results), [str(i.error) for i in results if not i.ok]
    assert client.stats.rate_limited == api.statuses.count(429) > 0
    assert api.charged == 80
