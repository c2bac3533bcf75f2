"""RedisLimiter against a real redis-server on loopback, with time scaled down.

The server comes from ``CLIPNORMALS_REDIS_URL``; without it a private ``redis-server`` is started
on a free loopback port. With neither, these tests fail when ``CI`` is set (a skip would hide a
failure there) and are skipped otherwise.

The quota is 20 starts per second: a spacing of ~53 ms, far above timer jitter, so ~100 starts
take ~5 s. Start times are taken on the client (``anyio.current_time``, one monotonic clock for
every limiter of the test) right after ``acquire`` returns. The limiter keeps every start within
half a spacing of its slot on the server's schedule; the other half spacing is margin, of which
these tests allow ``SCHEDULING_DELAY`` for the reply to reach the task and the task to run. So
they check windows of ``per + spacing / 2 - SCHEDULING_DELAY`` (longer than the guarantee's
``per``, hence stricter than it).
"""

from __future__ import annotations

import contextlib
import importlib
import math
import random
import sys
import traceback
from collections.abc import AsyncIterator

import anyio
import pytest
import redis
import redis.asyncio

import clipnormals
from clipnormals import ClipnormalsError, RateLimit
from clipnormals.redis import RedisLimiter

from .conftest import free_port
from .fakeapi import KEY, FakeAPI, max_in_window, prepared

pytestmark = pytest.mark.anyio

QUOTA = RateLimit(requests=20, per=1.0)
SCHEDULING_DELAY = 0.015
# The longest window that must still hold at most QUOTA.requests starts (see the docstring).
CHECKED_WINDOW = QUOTA.per + QUOTA.spacing / 2 - SCHEDULING_DELAY


@contextlib.asynccontextmanager
async def _limiters(
    url: str, name: str, count: int, rate_limit: RateLimit = QUOTA
) -> AsyncIterator[list[RedisLimiter]]:
    """``count`` limiters sharing ``name``, each with its own connection, as separate processes
    would have."""
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(RedisLimiter(rate_limit, url=url, name=name))
            for _ in range(count)
        ]


async def _run(limiters: list[RedisLimiter], tasks_each: int, total: int) -> list[list[float]]:
    """Start ``total`` requests from ``tasks_each`` tasks per limiter; start times per limiter."""
    starts: list[list[float]] = [[] for _ in limiters]
    left = total

    async def worker(i: int) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await limiters[i].acquire()
            starts[i].append(anyio.current_time())

    with anyio.fail_after(10 + 2 * total * QUOTA.spacing):
        async with anyio.create_task_group() as tg:
            for i in range(len(limiters)):
                for _ in range(tasks_each):
                    tg.start_soon(worker, i)
    return starts


def _steady_rate(times: list[float], burst: int) -> float:
    """Starts per second after the initial burst."""
    tail = sorted(times)[burst:]
    return (len(tail) - 1) / (tail[-1] - tail[0])


@pytest.mark.redis
async def test_instances_sharing_a_name_share_the_quota(redis_url: str, name: str) -> None:
    async with _limiters(redis_url, name, 4) as limiters:
        per_limiter = await _run(limiters, tasks_each=4, total=100)
    starts = sorted(t for times in per_limiter for t in times)
    assert len(starts) == 100
    assert max_in_window(starts, QUOTA.per) <= QUOTA.requests
    assert max_in_window(starts, CHECKED_WINDOW) <= QUOTA.requests
    # ...and the quota is used: the steady state runs at the designed rate
    assert _steady_rate(starts, QUOTA.burst) == pytest.approx(QUOTA.rate, rel=0.03)
    # waiters are served in the order they asked: every process gets its share
    assert all(len(times) >= 20 for times in per_limiter), [len(t) for t in per_limiter]


@pytest.mark.redis
async def test_more_waiters_than_the_reservation_horizon(redis_url: str, name: str) -> None:
    # 30 waiters, while one window of schedule holds 19 slots: the rest are told to ask again
    async with _limiters(redis_url, name, 6) as limiters:
        per_limiter = await _run(limiters, tasks_each=5, total=60)
    starts = sorted(t for times in per_limiter for t in times)
    assert len(starts) == 60
    assert max_in_window(starts, CHECKED_WINDOW) <= QUOTA.requests
    assert _steady_rate(starts, QUOTA.burst) == pytest.approx(QUOTA.rate, rel=0.03)


@pytest.mark.redis
async def test_burst_and_slack_match_the_local_bucket(redis_url: str, name: str) -> None:
    # capacity 5.5: 5 starts at once, then one every spacing, as LocalLimiter's bucket does
    rl = RateLimit(requests=20, per=1.0, burst=5, slack=0.5)
    async with _limiters(redis_url, name, 2, rl) as limiters:
        per_limiter = await _run(limiters, tasks_each=4, total=30)
    starts = sorted(t for times in per_limiter for t in times)
    assert starts[4] - starts[0] < SCHEDULING_DELAY
    assert starts[5] - starts[0] > 0.5 * rl.spacing - SCHEDULING_DELAY
    assert max_in_window(starts, rl.per + rl.spacing / 2 - SCHEDULING_DELAY) <= rl.requests
    assert _steady_rate(starts, 5) == pytest.approx(rl.rate, rel=0.05)


@pytest.mark.redis
async def test_different_names_do_not_interfere(redis_url: str, name: str) -> None:
    async with (
        _limiters(redis_url, f"{name}-a", 1) as a,
        _limiters(redis_url, f"{name}-b", 1) as b,
    ):
        results: dict[str, list[list[float]]] = {}

        async def run(label: str, limiters: list[RedisLimiter]) -> None:
            results[label] = await _run(limiters, tasks_each=3, total=40)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, "a", a)
            tg.start_soon(run, "b", b)
    for label in ("a", "b"):
        (starts,) = results[label]
        assert max_in_window(starts, CHECKED_WINDOW) <= QUOTA.requests
        # each name runs at the full rate: a shared bucket would halve it
        assert _steady_rate(starts, QUOTA.burst) == pytest.approx(QUOTA.rate, rel=0.05)


@pytest.mark.redis
async def test_cooldown_from_one_instance_pauses_the_others(redis_url: str, name: str) -> None:
    pause = 0.5
    async with _limiters(redis_url, name, 2) as (sender, observer):
        starts: list[float] = []
        before = after = math.inf
        warmed_up, resumed_enough = anyio.Event(), anyio.Event()

        async def worker() -> None:
            while True:
                await sender.acquire()
                starts.append(anyio.current_time())
                if len(starts) >= 6:
                    warmed_up.set()
                if sum(t > before + pause for t in starts) >= 6:
                    resumed_enough.set()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(worker)
                await warmed_up.wait()
                before = anyio.current_time()
                await observer.cooldown(pause)
                after = anyio.current_time()
                assert await sender.cooldown_remaining() == pytest.approx(pause, abs=0.05)
                await resumed_enough.wait()
                tg.cancel_scope.cancel()
    during = [t for t in starts if after + SCHEDULING_DELAY < t < before + pause]
    assert during == []
    resumed = sorted(t for t in starts if t >= before + pause)
    # it resumes as soon as the pause is over...
    assert resumed[0] < after + pause + SCHEDULING_DELAY + 0.05
    # ...but the waiters held back do not all start at its end: their slots were voided
    assert resumed[1] - resumed[0] > (1 - QUOTA.slack) * QUOTA.spacing - SCHEDULING_DELAY
    assert max_in_window(starts, CHECKED_WINDOW) <= QUOTA.requests


@pytest.mark.redis
async def test_a_cooldown_frees_the_schedule_its_voided_slots_held(
    redis_url: str, name: str
) -> None:
    # 15 waiters hold slots up to ~0.8 s ahead; a 0.1 s pause voids them all, so sending
    # resumes when the pause ends, not after those slots
    pause = 0.1
    starts: list[float] = []
    before = math.inf
    warmed_up, resumed = anyio.Event(), anyio.Event()
    async with _limiters(redis_url, name, 2) as (sender, observer):

        async def worker() -> None:
            while True:
                await sender.acquire()
                starts.append(anyio.current_time())
                if len(starts) >= 3:
                    warmed_up.set()
                if starts[-1] > before + pause:
                    resumed.set()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(15):
                    tg.start_soon(worker)
                await warmed_up.wait()
                before = anyio.current_time()
                await observer.cooldown(pause)
                after = anyio.current_time()
                await resumed.wait()
                tg.cancel_scope.cancel()
    first = min(t for t in starts if t > after + SCHEDULING_DELAY)
    assert before + pause <= first < after + pause + SCHEDULING_DELAY + 0.05


@pytest.mark.redis
async def test_cooldown_is_never_shortened_and_is_capped(redis_url: str, name: str) -> None:
    with pytest.warns(DeprecationWarning, match="max_retry_after"):
        capped = RateLimit(requests=20, per=1.0, max_cooldown=0.2)
    async with (
        _limiters(redis_url, name, 2) as (a, b),
        _limiters(redis_url, f"{name}-capped", 1, capped) as (c,),
    ):
        assert await a.cooldown_remaining() == 0.0
        await a.cooldown(5.0)
        await b.cooldown(0.1)
        assert await b.cooldown_remaining() > 4.5
        await c.cooldown(30.0)
        assert 0.1 < await c.cooldown_remaining() <= 0.2
        with pytest.raises(ValueError, match="number"):
            await c.cooldown(float("nan"))


async def _tat(raw: redis.asyncio.Redis, name: str) -> bytes | str | None:
    value: bytes | str | None = await raw.get(f"clipnormals:{{{name}}}:tat")
    return value


async def _reserved(raw: redis.asyncio.Redis, name: str, since: bytes | str | None) -> None:
    """Wait until the next slot has been handed out (the schedule in Redis moved)."""
    for _ in range(2000):
        if await _tat(raw, name) != since:
            return
        await anyio.sleep(0.001)
    raise AssertionError("no slot was reserved")


@pytest.mark.redis
@pytest.mark.parametrize("last_in_line", [True, False])
async def test_a_cancelled_waiter_gives_its_slot_back(
    redis_url: str, name: str, last_in_line: bool
) -> None:
    async with (
        _limiters(redis_url, name, 1) as (limiter,),
        redis.asyncio.Redis.from_url(redis_url) as raw,
    ):
        await limiter.acquire()
        t0 = anyio.current_time()
        starts: dict[str, float] = {}
        doomed, gave_back = anyio.CancelScope(), anyio.Event()

        async def start(label: str) -> None:
            await limiter.acquire()
            starts[label] = anyio.current_time()

        async def doomed_waiter() -> None:
            with doomed:
                await start("doomed")
            gave_back.set()  # acquire hands the slot back before the cancellation leaves it

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                since = await _tat(raw, name)
                tg.start_soon(doomed_waiter)
                await _reserved(raw, name, since)  # the doomed waiter holds slot 1
                if not last_in_line:
                    since = await _tat(raw, name)
                    tg.start_soon(start, "second")  # ...and this one slot 2
                    await _reserved(raw, name, since)
                doomed.cancel()
                await gave_back.wait()
                tg.start_soon(start, "taker")
    assert "doomed" not in starts
    # slot 1 (0.9 spacing after the first start: the bucket's slack is 0.1) goes to the taker
    # instead of being lost, which would push the taker one spacing later
    spacing = QUOTA.spacing
    assert starts["taker"] - t0 == pytest.approx(0.9 * spacing, abs=SCHEDULING_DELAY)
    if not last_in_line:
        assert starts["second"] - t0 == pytest.approx(1.9 * spacing, abs=SCHEDULING_DELAY)


@pytest.mark.redis
async def test_cancellations_never_break_the_guarantee(redis_url: str, name: str) -> None:
    rng = random.Random(7)
    starts: list[float] = []
    cancelled = 0

    async def worker(limiter: RedisLimiter) -> None:
        nonlocal cancelled
        while len(starts) < 60:
            with anyio.move_on_after(rng.uniform(0.005, 0.3)) as scope:
                await limiter.acquire()
                starts.append(anyio.current_time())
            cancelled += scope.cancelled_caught

    with anyio.fail_after(20):  # slots lost for good would starve the workers
        async with _limiters(redis_url, name, 3) as limiters, anyio.create_task_group() as tg:
            for limiter in limiters:
                for _ in range(6):
                    tg.start_soon(worker, limiter)
    assert cancelled >= 20  # the test did cancel waiters, many of them holding a slot
    assert max_in_window(starts, CHECKED_WINDOW) <= QUOTA.requests
    # slots given back are taken over: little of the quota is lost
    assert _steady_rate(starts, QUOTA.burst) > 0.9 * QUOTA.rate


@pytest.mark.redis
async def test_two_clients_share_one_quota_through_redis(redis_url: str, name: str) -> None:
    # The fake API enforces the quota with a sliding log over its arrivals: any excess is a 429.
    api = FakeAPI(policy="sliding", requests=QUOTA.requests, per=QUOTA.per, credits=10_000)
    sent: dict[str, int] = {}

    async def run(label: str, limiter: RedisLimiter) -> None:
        async with clipnormals.AsyncClient(
            api_key=KEY,
            transport=api.transport(),
            rate_limit=QUOTA,
            limiter=limiter,
            max_concurrency=4,
        ) as client:
            async for item in client.map([prepared(seed) for seed in range(30)]):
                assert item.error is None, item.error
            sent[label] = client.stats.attempts

    with anyio.fail_after(30):
        async with _limiters(redis_url, name, 2) as (a, b), anyio.create_task_group() as tg:
            tg.start_soon(run, "a", a)
            tg.start_soon(run, "b", b)
    assert sent == {"a": 30, "b": 30}
    assert api.statuses == [200] * 60
    assert max_in_window(api.arrivals, CHECKED_WINDOW) <= QUOTA.requests
    assert _steady_rate(api.arrivals, QUOTA.burst) == pytest.approx(QUOTA.rate, rel=0.05)


async def test_an_unreachable_server_is_a_clear_error_without_the_password() -> None:
    port = free_port()  # nothing listens there
    secret = "hunter2-redis-secret"
    limiter = RedisLimiter(QUOTA, url=f"redis://clip:{secret}@127.0.0.1:{port}/3", timeout=2.0)
    assert secret not in repr(limiter)
    assert f"127.0.0.1:{port}/3" in repr(limiter)
    with pytest.raises(ClipnormalsError) as info:
        await limiter.acquire()
    await limiter.aclose()
    exc = info.value
    assert f"Redis at 127.0.0.1:{port}/3" in exc.message
    assert "ConnectionError" in exc.message
    assert isinstance(exc.__cause__, redis.RedisError)
    shown = "".join(traceback.format_exception(exc)) + repr(exc)
    assert secret not in shown


@pytest.mark.redis
async def test_a_wrong_password_is_a_clear_error_without_the_password(redis_url: str) -> None:
    secret = "hunter2-redis-secret"
    hostport = redis_url.split("//", 1)[1].rsplit("@", 1)[-1]
    async with RedisLimiter(QUOTA, url=f"redis://nobody:{secret}@{hostport}") as limiter:
        with pytest.raises(ClipnormalsError, match=r"Redis at .* failed") as info:
            await limiter.cooldown(1.0)
    shown = "".join(traceback.format_exception(info.value))
    assert "AuthenticationError" in shown
    assert secret not in shown


@pytest.mark.redis
async def test_a_client_passed_in_is_used_and_left_open(redis_url: str, name: str) -> None:
    async with redis.asyncio.Redis.from_url(redis_url, decode_responses=True) as raw:
        async with RedisLimiter(QUOTA, redis=raw, name=name) as limiter:
            await limiter.cooldown(0.0)
            await limiter.acquire()
        assert await raw.ping()  # still open
        assert await raw.exists(f"clipnormals:{{{name}}}:tat") == 1
        # the keys expire on their own once the times they hold have passed
        ttl = await raw.pttl(f"clipnormals:{{{name}}}:tat")
        assert 0 < ttl <= 1000 + 1000 * QUOTA.spacing + 1  # ms, rounded


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="either"):
        RedisLimiter(QUOTA, url="redis://localhost", redis=redis.asyncio.Redis())
    for bad in ("", "a{b", "a}b", "tab\there"):
        with pytest.raises(ValueError, match="name"):
            RedisLimiter(QUOTA, name=bad)
    with pytest.raises(TypeError, match="RateLimit"):
        RedisLimiter("60/60")  # type: ignore[arg-type]


def test_without_the_redis_package_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for module in [
        m for m in sys.modules if m.startswith(("clipnormals.redis", "clipnormals._redis"))
    ]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ImportError, match=r"pip install 'clipnormals\[redis\]'"):
        importlib.import_module("clipnormals.redis")


def test_the_public_module_reexports_the_real_redis_limiter() -> None:
    import clipnormals.redis

    for name, module in [
        ("RedisLimiter", "limiter"),
        ("RedisLedger", "ledger"),
        ("RedisClaims", "claims"),
        ("Claim", "claims"),
    ]:
        implementation = importlib.import_module(f"clipnormals._redis.{module}")
        assert getattr(clipnormals.redis, name) is getattr(implementation, name)
    assert clipnormals.redis.__all__ == ["Claim", "RedisClaims", "RedisLedger", "RedisLimiter"]
    # the package's own redis.py does not shadow redis-py where redis-py is imported
    connection = importlib.import_module("clipnormals._redis.connection")
    assert connection.aioredis is redis.asyncio
    assert clipnormals.redis.__doc__
