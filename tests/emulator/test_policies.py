"""Each counting policy admits exactly what it should, at hand-computed arrival times."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from clipnormals.emulator import (
    CountingPolicy,
    Emulator,
    EmulatorConfig,
    FixedWindow,
    LeakyBucket,
    ServerLimit,
    SlidingWindowLog,
    TokenBucket,
    make_policy,
)

from .conftest import FakeClock, image_bytes, post_image

T, F = True, False


def run(policy: CountingPolicy, times: list[float]) -> list[bool]:
    return [policy.allow(t) for t in times]


# -- fixed window: windows [k*per, (k+1)*per) of the clock -------------------------------------


def test_fixed_window_admits_requests_per_calendar_window() -> None:
    p = FixedWindow(requests=3, per=10.0)
    times = [0.0, 1.0, 2.0, 3.0, 9.999, 10.0, 10.0, 10.0, 15.0, 20.0]
    assert run(p, times) == [T, T, T, F, F, T, T, T, F, T]


def test_fixed_window_retry_after_is_the_end_of_the_window() -> None:
    p = FixedWindow(requests=1, per=10.0)
    assert p.allow(12.0)
    assert not p.allow(13.5)
    assert p.retry_after(13.5) == pytest.approx(6.5)


def test_fixed_window_lets_twice_the_quota_through_around_a_boundary() -> None:
    # The classic weakness a client must survive: 3 at the end of one window, 3 at the start
    # of the next, 6 starts within 0.2 s.
    p = FixedWindow(requests=3, per=10.0)
    assert run(p, [9.9, 9.9, 9.9, 10.1, 10.1, 10.1, 10.1]) == [T, T, T, T, T, T, F]


# -- sliding window log: at most N admitted starts in any `per` seconds -------------------------


def test_sliding_window_log() -> None:
    p = SlidingWindowLog(requests=3, per=10.0)
    times = [0.0, 1.0, 2.0, 9.999, 10.0, 10.5, 11.0, 12.0, 13.0]
    # 9.999: 0, 1, 2 still inside.  10.0: the start at 0 has just left (half-open window).
    # 10.5: 1, 2, 10 inside.  11.0: 1 left.  12.0: 2 left.  13.0: 10, 11, 12 inside.
    assert run(p, times) == [T, T, T, F, T, F, T, T, F]
    assert p.retry_after(13.0) == pytest.approx(7.0)  # when the start at 10 leaves


def test_sliding_window_refused_requests_do_not_count() -> None:
    p = SlidingWindowLog(requests=1, per=10.0)
    assert run(p, [0.0, 5.0, 9.0, 10.0]) == [T, F, F, T]


def test_sliding_window_decimal_times_land_on_the_exact_side_of_the_boundary() -> None:
    # 0.4 - 0.3 is 0.10000000000000003 in floats; the start at 0.1 must still have left.
    p = SlidingWindowLog(requests=1, per=0.3)
    assert run(p, [0.1, 0.4, 0.7, 0.99]) == [T, T, T, F]


# -- token bucket: capacity N, full at start, refilled at N/per per second ------------------------


def test_token_bucket() -> None:
    p = TokenBucket(requests=3, per=3.0)  # 1 token per second
    times = [0.0, 0.0, 0.0, 0.5, 1.0, 1.5, 2.0]
    assert run(p, times) == [T, T, T, F, T, F, T]


def test_token_bucket_refills_to_capacity_only() -> None:
    p = TokenBucket(requests=3, per=3.0)
    assert run(p, [0.0, 100.0, 100.0, 100.0, 100.0]) == [T, T, T, T, F]
    assert p.retry_after(100.0) == pytest.approx(1.0)


def test_token_bucket_retry_after_is_the_time_to_one_token() -> None:
    p = TokenBucket(requests=2, per=4.0)  # 0.5 token per second
    assert run(p, [0.0, 0.0, 1.0]) == [T, T, F]
    assert p.retry_after(1.0) == pytest.approx(1.0)  # 0.5 token there, 0.5 more to go


# -- nginx limit_req burst=B nodelay -------------------------------------------------------------


def test_nginx_leaky_bucket_with_burst() -> None:
    p = LeakyBucket(requests=1, per=1.0, burst=2)
    times = [0.0, 0.0, 0.0, 0.0, 0.5, 1.0, 1.5, 2.0, 10.0]
    # excess after each: 0, 1, 2, (3 > 2 refused), (2.5 refused), 2, (2.5 refused), 2, 0
    assert run(p, times) == [T, T, T, F, F, T, F, T, T]


def test_nginx_retry_after_is_when_the_excess_fits_the_burst() -> None:
    p = LeakyBucket(requests=1, per=1.0, burst=2)
    run(p, [0.0, 0.0, 0.0])
    assert not p.allow(0.25)
    assert p.retry_after(0.25) == pytest.approx(0.75)


def test_nginx_without_burst_wants_exact_spacing() -> None:
    p = LeakyBucket(requests=60, per=60.0, burst=0)
    assert run(p, [0.0, 1.0, 2.0, 2.999, 3.0]) == [T, T, T, F, T]


def test_make_policy_builds_the_named_policy() -> None:
    kinds = {
        "fixed": FixedWindow,
        "sliding": SlidingWindowLog,
        "token": TokenBucket,
        "nginx": LeakyBucket,
    }
    for name, cls in kinds.items():
        assert isinstance(make_policy(ServerLimit(policy=name)), cls)  # type: ignore[arg-type]


def test_reset_forgets_everything() -> None:
    for name in ("fixed", "sliding", "token", "nginx"):
        p = make_policy(ServerLimit(requests=1, per=10.0, policy=name, burst=0))
        assert run(p, [0.0, 0.5]) == [T, F], name
        p.reset()
        assert p.allow(0.5), name


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="policy"):
        ServerLimit(policy="leaky")  # type: ignore[arg-type]


# -- the same policies behind HTTP, on the emulator's injected clock -------------------------------

# (policy, arrival times, expected statuses) for 2 requests per 10 s (nginx: burst 1).
SCENARIOS = [
    ("fixed", [0.0, 5.0, 9.0, 10.0, 10.0, 10.0], [200, 200, 429, 200, 200, 429]),
    ("sliding", [0.0, 5.0, 9.0, 10.0, 10.0, 15.0], [200, 200, 429, 200, 429, 200]),
    ("token", [0.0, 0.0, 0.0, 4.0, 5.0, 15.0], [200, 200, 429, 429, 200, 200]),
    ("nginx", [0.0, 0.0, 0.0, 4.0, 5.0, 10.0], [200, 200, 429, 429, 200, 200]),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("policy", "times", "statuses"), SCENARIOS)
async def test_policies_through_the_app(
    make_http: Callable[[Emulator], httpx.AsyncClient],
    clock: FakeClock,
    policy: str,
    times: list[float],
    statuses: list[int],
) -> None:
    limit = ServerLimit(requests=2, per=10.0, policy=policy, burst=1)  # type: ignore[arg-type]
    emulator = Emulator(EmulatorConfig(keys={"k": 100, "other": 100}, limit=limit, clock=clock))
    seen = []
    async with make_http(emulator) as http:
        for t in times:
            clock.now = t
            seen.append((await post_image(http, image_bytes(), key="k")).status_code)
        # Limits are per key: another key is untouched by all of this.
        assert (await post_image(http, image_bytes(), key="other")).status_code == 200
    assert seen == statuses
    assert emulator.stats.key("k").rate_limited == statuses.count(429)
    assert emulator.credits("k") == 100 - statuses.count(200)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("mode", "expected"), [("seconds", "4"), ("precise", "3.500"), ("off", None)]
)
async def test_retry_after_modes(
    make_http: Callable[[Emulator], httpx.AsyncClient],
    clock: FakeClock,
    mode: str,
    expected: str | None,
) -> None:
    limit = ServerLimit(requests=1, per=10.0, policy="sliding", retry_after=mode)  # type: ignore[arg-type]
    emulator = Emulator(EmulatorConfig(keys={"k": 10}, limit=limit, clock=clock))
    async with make_http(emulator) as http:
        clock.now = 0.0
        await post_image(http, image_bytes(), key="k")
        clock.now = 6.5
        refused = await post_image(http, image_bytes(), key="k")
    assert refused.status_code == 429
    assert refused.headers.get("retry-after") == expected


@pytest.mark.anyio
async def test_arrival_time_is_read_before_the_body(
    make_http: Callable[[Emulator], httpx.AsyncClient], clock: FakeClock
) -> None:
    # The clock is read once per request, at arrival: a clock that advances on every read
    # shows it (the limiter sees 0, 1, 2... whatever the upload's size).
    ticks = iter(float(i) for i in range(100))
    emulator = Emulator(
        EmulatorConfig(
            keys={"k": 10},
            limit=ServerLimit(requests=1, per=1.0, policy="sliding"),
            clock=lambda: next(ticks),
        )
    )
    async with make_http(emulator) as http:
        statuses = [(await post_image(http, image_bytes(), key="k")).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    assert next(ticks) == 3.0
