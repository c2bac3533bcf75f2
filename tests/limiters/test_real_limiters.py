"""The client against real, independently written rate limiters on loopback, in real time.

nginx ``limit_req`` and an HAProxy stick table stand in front of the emulator (see
``servers.py``). Time is scaled by 10: 600 requests per minute (10 per second, a start every
100 ms) for nginx, 100 per 10 s for HAProxy, 250 images per run (about 25 s). The proxies' own
logs count what they refused; the share of the quota is the successes per second between the
second start (the first is the credit probe, sent alone) and the last, over the quota's rate.
nginx without burst refuses any two arrivals closer than 100 ms, and a loaded machine moves
arrivals by milliseconds: against it these tests allow one 429 and five points of share more
than the target (at most 3 429s, at least 90%), which ``benchmarks/saturation.py`` measures on
a quieter machine. The other bounds are the targets themselves. Every run also checks the
guarantee on the client's own start times.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

import clipnormals
from clipnormals import LocalLimiter, RateLimit

from ..fakeapi import max_in_window, png_bytes
from . import servers

pytestmark = [pytest.mark.anyio, pytest.mark.loopback, pytest.mark.limiters]

IMAGES = 250
RETRY = clipnormals.RetryPolicy(initial=0.05, max_backoff=3.0)  # the default, scaled by 10


class _Recording(LocalLimiter):
    __slots__ = ("starts",)

    def __init__(self, rate_limit: RateLimit) -> None:
        super().__init__(rate_limit)
        self.starts: list[float] = []

    async def acquire(self) -> float:
        started = await super().acquire()
        self.starts.append(started)
        return started


async def _run(
    url: str, rate_limit: RateLimit, transport: httpx.AsyncBaseTransport | None = None
) -> dict[str, Any]:
    limiter = _Recording(rate_limit)
    async with clipnormals.AsyncClient(
        api_key=servers.KEY,
        base_url=url,
        rate_limit=rate_limit,
        limiter=limiter,
        retry=RETRY,
        transport=transport,
    ) as client:
        items = [item async for item in client.map([png_bytes(seed=i) for i in range(IMAGES)])]
        stats = client.stats
    starts = limiter.starts
    assert max_in_window(starts, rate_limit.per) <= rate_limit.requests  # the guarantee
    share = (stats.successes - 2) / (starts[-1] - starts[1]) * rate_limit.per / rate_limit.requests
    return {"items": items, "stats": stats, "share": share}


@pytest.mark.usefixtures("nginx_binary")
async def test_nginx_without_burst(upstream: str) -> None:
    # limit_req rate=10r/s, no burst: any two arrivals under 100 ms apart get a 429.
    with servers.nginx(upstream, rate=10, burst=None) as proxy:
        run = await _run(proxy.url, RateLimit(requests=600, per=60.0))
        refused = proxy.refused()
    assert all(item.ok for item in run["items"])
    assert refused == run["stats"].rate_limited
    learned = run["stats"].learned
    why = f"{refused} 429s, share {run['share']:.1%}, learned {learned}"
    assert refused <= 4, why
    # What the client settled on, as a share of the configured rate. On a loaded machine two
    # requests spaced 100 ms apart can still reach nginx closer than that, and slowing down is
    # then right; how much depends on the load. What does not: a 429 teaches at most one
    # lesson, a lesson at most halves the rate (the limiter's _MAX_STEP), and the client keeps
    # up with what it learned. (The share on a quiet machine, at least 90%, is
    # benchmarks/saturation.py's to show: `--sections real`.)
    kept = 1.0 if learned is None else (learned.requests / learned.per) / 10.0
    assert kept >= 0.5**refused, why
    assert run["share"] >= 0.9 * kept, why
    if refused:  # the first 429 (a close pair after the credit probe) teaches strict spacing
        assert learned is not None
        assert learned.strict


@pytest.mark.usefixtures("nginx_binary")
async def test_nginx_burst_one_with_a_slow_way_to_the_wire(upstream: str) -> None:
    # burst=1 nodelay, and 0-150 ms between handing a request to httpx's transport and the
    # wire: the slot is taken when the headers go out, so the delay moves no arrival.
    with servers.nginx(upstream, rate=10, burst=1) as proxy:
        slow = servers.SlowToTheWire(0.15, seed=1)
        run = await _run(proxy.url, RateLimit(requests=600, per=60.0), slow)
        refused = proxy.refused()
    assert all(item.ok for item in run["items"])
    assert refused == run["stats"].rate_limited
    assert refused <= 3
    assert run["share"] >= 0.9, run["share"]


@pytest.mark.usefixtures("haproxy_binary")
async def test_haproxy_stick_table(upstream: str) -> None:
    # http_req_rate(10s) gt 100 -> 429, per API key.
    with servers.haproxy(upstream, requests=100, per=10) as proxy:
        run = await _run(proxy.url, RateLimit(requests=100, per=10.0))
        refused = proxy.refused()
    assert all(item.ok for item in run["items"])
    assert refused == 0
    assert run["stats"].rate_limited == 0
    assert run["share"] >= 0.98, run["share"]
