"""The client against server-side limiters written in the test: never a 429, never a full window.

Runs on a virtual clock, so the real quota (60 per minute) is used unscaled and hundreds of
requests take milliseconds.
"""

from __future__ import annotations

import anyio
import httpx
import pytest

import clipnormals
from clipnormals.emulator import Emulator, EmulatorConfig, Latency, ServerLimit

from .fakeapi import KEY, FakeAPI, NginxBucket, lognormal, max_in_window, prepared

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


# -- lessons from 429s the client did not expect ----------------------------------------------


def _nginx_without_burst(api: FakeAPI) -> FakeAPI:
    api.limiter = NginxBucket(api.requests, api.per, burst=0)
    return api


def _quota_share(arrivals: list[float], statuses: list[int], requests: int, per: float) -> float:
    ok = [t for t, s in zip(arrivals, statuses, strict=True) if s == 200]
    return (len(ok) - 1) / (ok[-1] - ok[0]) * per / requests


async def test_nginx_without_burst_teaches_strict_spacing() -> None:
    # nginx limit_req without burst refuses any two arrivals closer than per / requests. The
    # default bucket lets the second start after a pause come 0.1 spacing early: one 429, after
    # which the limiter keeps strict spacing and the server never refuses again.
    api = _nginx_without_burst(FakeAPI(credits=None, requests=600, per=60.0, latency=lambda: 0.3))
    images = [prepared(seed=1)] * 250
    async with _client(api, rate_limit=clipnormals.RateLimit(requests=600, per=60.0)) as client:
        results = [item async for item in client.map(images)]
        learned = client.stats.learned
    assert all(item.ok for item in results)
    assert 1 <= api.statuses.count(429) <= 3
    assert learned is not None
    assert learned.strict
    # spacing was the whole lesson: 3% wider than the server's
    assert learned.spacing >= 1.03 * 60.0 / 600 > 0.99 * learned.spacing
    assert _quota_share(api.arrivals, api.statuses, 600, 60.0) >= 0.9
    # fed back as configuration, the lesson costs no 429 at all
    again = _nginx_without_burst(FakeAPI(credits=None, requests=600, per=60.0))
    async with _client(again, rate_limit=learned) as client:
        assert all([item.ok async for item in client.map(images)])
    assert 429 not in again.statuses


class _Recorder(httpx.AsyncBaseTransport):
    """Arrival times and statuses of what passes through an in-process transport."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.arrivals: list[float] = []
        self.statuses: list[int] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        arrived = anyio.current_time()
        response = await self.inner.handle_async_request(request)
        self.arrivals.append(arrived)
        self.statuses.append(response.status_code)
        return response


def _half_quota_server(server: str, policy: str) -> _Recorder:
    if server == "fakeapi":
        api = FakeAPI(
            policy=policy, credits=None, requests=30, per=6.0, latency=lognormal(0.3, 0.5)
        )
        return _Recorder(api.transport())
    limit = ServerLimit(requests=30, per=6.0, policy=policy, burst=3, retry_after="seconds")  # type: ignore[arg-type]
    emulator = Emulator(
        EmulatorConfig(
            keys={KEY: 10**6},
            limit=limit,
            latency=Latency.lognormal(0.3, 0.5),
            synth="canned",
            verify_images=False,
            clock=anyio.current_time,
            seed=1,
        )
    )
    return _Recorder(emulator.transport())


@pytest.mark.parametrize("server", ["fakeapi", "emulator"])
@pytest.mark.parametrize("policy", ["fixed", "sliding", "token", "nginx"])
async def test_a_quota_half_the_configured_one_is_learned(server: str, policy: str) -> None:
    # The key allows 30 per 6 s; the client is told 60. Within three windows the limiter has
    # settled after at most five 429s, and from then on it uses at least 90% of the real quota.
    recorder = _half_quota_server(server, policy)
    images = [prepared(seed=1)] * 400
    async with clipnormals.AsyncClient(
        api_key=KEY,
        base_url="http://127.0.0.1",
        transport=recorder,
        rate_limit=clipnormals.RateLimit(requests=60, per=6.0),
        retry=clipnormals.RetryPolicy(attempts=20, initial=0.05, max_backoff=3.0),
    ) as client:
        results = [item async for item in client.map(images)]
        learned = client.stats.learned
    assert all(item.ok for item in results)
    pairs = list(zip(recorder.arrivals, recorder.statuses, strict=True))
    refused = [t for t, s in pairs if s == 429]
    assert refused
    assert len([t for t in refused if t < 18.0]) <= 5, refused
    # at most two probes back up refused in the 10+ windows that follow
    assert len([t for t in refused if t >= 18.0]) <= 2, refused
    ok = [t for t, s in pairs if s == 200 and t >= 18.0]
    share = (len(ok) - 1) / (ok[-1] - ok[0]) * 6.0 / 30
    assert share >= 0.9, share
    assert learned is not None
    assert learned.requests <= 40


async def test_429s_sent_before_a_lesson_teach_nothing_more() -> None:
    # Four requests in flight are refused at once (a storm the server injects): the first
    # teaches, the three others were sent under the same settings and change nothing.
    limiter = clipnormals.LocalLimiter(clipnormals.RateLimit(requests=60, per=60.0))
    starts = [await limiter.acquire() for _ in range(5)]
    await limiter.admitted(started=starts[0])
    await limiter.rate_limited(started=starts[2], pause=0.0)
    after_first = limiter.current
    for started in (starts[1], starts[3], starts[4]):
        await limiter.rate_limited(started=started, pause=0.0)
    assert limiter.lessons == 1
    assert limiter.current == after_first
    assert after_first.rate <= limiter.rate_limit.rate  # a lesson lowers, never raises


async def test_429s_before_anything_was_admitted_teach_nothing() -> None:
    # A window still full of an earlier run's requests (or another user of the key) refuses
    # the first requests of a new client: that says nothing about the quota.
    limiter = clipnormals.LocalLimiter(clipnormals.RateLimit(requests=60, per=60.0))
    starts = [await limiter.acquire() for _ in range(3)]
    for started in starts:
        await limiter.rate_limited(started=started, pause=0.0)
    assert limiter.lessons == 0
    assert limiter.learned is None
    assert limiter.current == limiter.rate_limit


async def test_probes_never_go_above_the_configured_quota() -> None:
    rl = clipnormals.RateLimit(requests=60, per=60.0, strict=True)
    limiter = clipnormals.LocalLimiter(rl)
    first = await limiter.acquire()
    await limiter.admitted(started=first)
    second = await limiter.acquire()
    await limiter.rate_limited(started=second, pause=0.0)
    assert limiter.current.requests < 60
    for _ in range(3000):  # an hour of clean windows
        await limiter.admitted(started=await limiter.acquire())
        assert limiter.current.rate <= rl.rate
    assert limiter.current == rl


class _NoHooks(httpx.AsyncHTTPTransport):
    """Looks like httpx's own transport but answers without httpcore: no trace hook is called."""

    def __init__(self, api: FakeAPI) -> None:
        super().__init__()
        self.api = api

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.api.handle(request)


async def test_a_transport_that_skips_the_trace_hook_still_takes_slots(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The client expects httpx's transport to call the hook that takes the slot on the wire.
    # This one never does: after the first answer the client says so once and takes its slots
    # before sending; every attempt is counted and every window stays under the quota.
    api = FakeAPI(policy="sliding", credits=None, latency=lambda: 0.5)
    async with _client(api, transport=_NoHooks(api)) as client:
        results = [item async for item in client.map([prepared()] * 150)]
    assert all(item.ok for item in results)
    assert 429 not in api.statuses
    assert max_in_window(api.arrivals, 60.0) <= 60
    assert client.stats.attempts == 150
    assert caplog.text.count("without calling httpcore's trace hook") == 1
