"""RedisLimiter against a real redis-server on loopback, with time scaled down.

The server comes from ``CLIPNORMALS_REDIS_URL``; without it a private ``redis-server`` is started
on a free loopback port. With neither, these tests fail when ``CI`` is set (a skip would hide a
failure there) and are skipped otherwise.

The quota is 20 starts per second: a spacing of ~53 ms, so ~100 starts take ~5 s. The limiter
decides on the Redis server's clock and every reply says what it decided: the slot handed out
and when, and how late a claim came. :class:`Observed` reads those replies, and the tests assert
what the guarantee says *there*, where it is exact whatever the load on the machine:

- a start lies between its slot and half a spacing after it, and ``requests + 1`` slots span
  ``per`` plus a spacing, so no window shorter than ``per + spacing / 2`` holds more than
  ``requests`` starts on the server's clock;
- the schedule advances one emission interval per slot: the quota is offered at the designed
  rate (how fast a busy machine takes the slots it is offered is not the limiter's promise: a
  waiter that wakes late forfeits its slot, and the starts are only checked never to run faster
  than the rate).

Where a test needs a waiter that wakes early or late, or a client whose wall clock is off, it
makes one (a timer that fires early, a claim held back, ``time.time`` read off for one client):
the server's replies then say whether the claim was told to wait, forfeited, or unaffected.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import itertools
import math
import random
import sys
import time
import traceback
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
import redis
import redis.asyncio

import clipnormals
from clipnormals import ClipnormalsError, RateLimit
from clipnormals._redis import limiter as limiter_module
from clipnormals.redis import RedisLimiter

from .conftest import free_port
from .fakeapi import KEY, FakeAPI, max_in_window, prepared

pytestmark = pytest.mark.anyio

QUOTA = RateLimit(requests=20, per=1.0)
US = 1_000_000
# Reply kinds of the limiter's script (clipnormals/_redis/limiter.py).
SLOT, COOLDOWN, FULL, VOID, EARLY, LATE = 0, 1, 2, 3, 4, 5


def checked_window(rate_limit: RateLimit = QUOTA) -> float:
    """The longest window that must hold at most ``requests`` starts on the server's clock
    (see the module docstring), less a microsecond for the script's integer times."""
    return rate_limit.per + rate_limit.spacing / 2 - 1e-6


@dataclass(frozen=True, slots=True)
class Start:
    slot: float  # the slot on the server's schedule (seconds, server clock)
    server: float  # when the server let it start: the slot, or the grant or claim after it
    client: float  # what acquire returned (the client's clock)


@dataclass(slots=True)
class Log:
    """What the server decided for every limiter that shares it."""

    starts: list[Start] = field(default_factory=list)
    # the schedule: every new slot handed out, in order (less those taken back off its end)
    slots: list[float] = field(default_factory=list)
    forfeited: int = 0  # claims that came too late
    ahead: list[float] = field(default_factory=list)  # how far ahead each slot was reserved
    full: int = 0  # "ask again later" replies: the schedule was full up to the horizon

    def server_starts(self) -> list[float]:
        return sorted(s.server for s in self.starts)


class Observed(RedisLimiter):
    """A RedisLimiter that notes the server's replies, and each start on the server's clock."""

    def __init__(self, *args: Any, log: Log, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log = log
        self._task_grant: dict[object, tuple[float, float]] = {}

    async def acquire(self) -> float:
        started = await super().acquire()
        slot, server = self._task_grant.pop(_task(), (math.nan, math.nan))
        assert not math.isnan(server), "acquire returned without a grant from the server"
        self.log.starts.append(Start(slot, server, started))
        return started

    async def _run(self, op: str, *operands: int) -> list[int]:
        reply = await super()._run(op, *operands)
        if op == "reserve" and reply[0] == SLOT:
            wait, slot, tat_after = reply[1], reply[2], reply[3]
            if tat_after:  # a new slot on the schedule, not a returned one
                self.log.slots.append(slot / US)
            self.log.ahead.append(wait / US)
            if wait <= 0:  # due now: it starts on this reply, at the server's "now"
                self._task_grant[_task()] = (slot / US, (slot - wait) / US)
        elif op == "reserve" and reply[0] == FULL:
            self.log.full += 1
        elif op == "claim":
            slot = operands[0]
            if reply[0] == SLOT:
                self._task_grant[_task()] = (slot / US, (slot + reply[1]) / US)
            elif reply[0] == LATE:
                self.log.forfeited += 1
        elif op == "release" and reply[0] == 1:  # the last slot, taken off the schedule
            self.log.slots.remove(operands[0] / US)
        return reply


def _task() -> object:
    return anyio.get_current_task().id


@contextlib.asynccontextmanager
async def _limiters(
    url: str, name: str, count: int, rate_limit: RateLimit = QUOTA, log: Log | None = None
) -> AsyncIterator[list[Observed]]:
    """``count`` limiters sharing ``name``, each with its own connection, as separate processes
    would have; what the server decided for them goes to ``log``."""
    log = Log() if log is None else log
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(Observed(rate_limit, url=url, name=name, log=log))
            for _ in range(count)
        ]


async def _run(limiters: list[Observed], tasks_each: int, total: int) -> list[list[float]]:
    """Start ``total`` requests from ``tasks_each`` tasks per limiter; the starts each limiter
    made, on the server's clock (all of them are in the limiters' log too)."""
    starts: list[list[float]] = [[] for _ in limiters]
    left = total

    async def worker(i: int) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await limiters[i].acquire()
            starts[i].append(limiters[i].log.starts[-1].server)

    with anyio.fail_after(10 + 2 * total * QUOTA.spacing):
        async with anyio.create_task_group() as tg:
            for i in range(len(limiters)):
                for _ in range(tasks_each):
                    tg.start_soon(worker, i)
    return starts


def _steady_rate(times: list[float], burst: int) -> float:
    """Events per second after the initial burst."""
    tail = sorted(times)[burst:]
    return (len(tail) - 1) / (tail[-1] - tail[0])


def _check_schedule(log: Log, rate_limit: RateLimit = QUOTA, *, rel: float = 0.03) -> None:
    """The guarantee on the server's clock, and the quota offered at the designed rate."""
    starts = log.server_starts()
    assert max_in_window(starts, checked_window(rate_limit)) <= rate_limit.requests
    for start in log.starts:  # a start lies within half a spacing after its slot
        assert start.slot - 1e-6 <= start.server <= start.slot + rate_limit.spacing / 2 + 1e-6
    # the schedule hands out a slot per emission interval...
    assert _steady_rate(log.slots, rate_limit.burst) == pytest.approx(rate_limit.rate, rel=rel)
    # ...and the starts never run faster than that (a busy machine may take fewer)
    assert _steady_rate(starts, rate_limit.burst) < rate_limit.rate * (1 + rel)


@pytest.mark.redis
async def test_instances_sharing_a_name_share_the_quota(redis_url: str, name: str) -> None:
    log = Log()
    async with _limiters(redis_url, name, 4, log=log) as limiters:
        per_limiter = await _run(limiters, tasks_each=4, total=100)
    assert len(log.starts) == 100
    _check_schedule(log)
    # waiters are served in the order they asked: every process gets its share
    assert all(len(times) >= 20 for times in per_limiter), [len(t) for t in per_limiter]


@pytest.mark.redis
async def test_more_waiters_than_the_reservation_horizon(redis_url: str, name: str) -> None:
    # 30 waiters, while one window of schedule holds 19 slots: the rest are told to ask again
    log = Log()
    async with _limiters(redis_url, name, 6, log=log) as limiters:
        await _run(limiters, tasks_each=5, total=60)
    assert len(log.starts) == 60
    assert log.full > 0  # the horizon was reached
    # no slot is ever reserved further ahead than one window (and four spacings at least)
    assert max(log.ahead) <= max(QUOTA.per, 4 * QUOTA.spacing) + 1e-6
    _check_schedule(log)


@pytest.mark.redis
async def test_burst_and_slack_match_the_local_bucket(redis_url: str, name: str) -> None:
    # capacity 5.5: 5 starts at once, then one every spacing, as LocalLimiter's bucket does
    rl = RateLimit(requests=20, per=1.0, burst=5, slack=0.5)
    log = Log()
    async with _limiters(redis_url, name, 2, rl, log=log) as limiters:
        await _run(limiters, tasks_each=4, total=30)
    first = sorted(log.starts, key=lambda s: s.slot)
    # the first five are due at once: each starts on the reply that granted it
    assert [s.server - s.slot <= 1e-6 for s in first[:5]] == [True] * 5
    assert first[5].slot - first[0].slot >= 0.5 * rl.spacing - 1e-6
    _check_schedule(log, rl, rel=0.05)


@pytest.mark.redis
async def test_different_names_do_not_interfere(redis_url: str, name: str) -> None:
    logs = {"a": Log(), "b": Log()}
    async with (
        _limiters(redis_url, f"{name}-a", 1, log=logs["a"]) as a,
        _limiters(redis_url, f"{name}-b", 1, log=logs["b"]) as b,
    ):

        async def run(limiters: list[Observed]) -> None:
            await _run(limiters, tasks_each=3, total=40)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, a)
            tg.start_soon(run, b)
    for log in logs.values():
        # each name is offered the full rate: a shared bucket would halve it
        _check_schedule(log, rel=0.05)


async def _server_time(raw: redis.asyncio.Redis) -> float:
    """The Redis server's clock, the one the limiter decides on (seconds)."""
    seconds, micros = await raw.time()
    return seconds + micros / US


@pytest.mark.redis
async def test_cooldown_from_one_instance_pauses_the_others(redis_url: str, name: str) -> None:
    pause = 0.5
    log = Log()
    async with (
        _limiters(redis_url, name, 2, log=log) as (sender, observer),
        redis.asyncio.Redis.from_url(redis_url) as raw,
    ):
        before = math.inf  # the server's clock just before the cooldown was set
        warmed_up, resumed_enough = anyio.Event(), anyio.Event()

        async def worker() -> None:
            while True:
                await sender.acquire()
                if len(log.starts) >= 6:
                    warmed_up.set()
                if sum(s.server > before + pause for s in log.starts) >= 6:
                    resumed_enough.set()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(worker)
                await warmed_up.wait()
                before = await _server_time(raw)
                await observer.cooldown(pause)
                after = await _server_time(raw)
                assert await sender.cooldown_remaining() == pytest.approx(pause, abs=0.05)
                await resumed_enough.wait()
                tg.cancel_scope.cancel()
    starts = log.server_starts()
    assert [t for t in starts if after < t < before + pause] == []  # nobody starts in the pause
    resumed = sorted((s for s in log.starts if s.server >= before + pause), key=lambda s: s.slot)
    # ...but the waiters held back do not all start at its end: their slots were voided, and
    # the schedule starts again one start at a time
    assert resumed[1].slot - resumed[0].slot >= (1 - QUOTA.slack) * QUOTA.spacing - 1e-6
    assert max_in_window(starts, checked_window()) <= QUOTA.requests


@pytest.mark.redis
async def test_a_cooldown_frees_the_schedule_its_voided_slots_held(
    redis_url: str, name: str
) -> None:
    # 15 waiters hold slots up to ~0.8 s ahead; a 0.1 s pause voids them all, so the next slot
    # handed out is due when the pause ends, not after those slots
    pause = 0.1
    log = Log()
    before = math.inf
    warmed_up, resumed = anyio.Event(), anyio.Event()
    async with (
        _limiters(redis_url, name, 2, log=log) as (sender, observer),
        redis.asyncio.Redis.from_url(redis_url) as raw,
    ):

        async def worker() -> None:
            while True:
                await sender.acquire()
                if len(log.starts) >= 3:
                    warmed_up.set()
                if log.starts[-1].server > before + pause:
                    resumed.set()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(15):
                    tg.start_soon(worker)
                await warmed_up.wait()
                held = len(log.slots)
                before = await _server_time(raw)
                await observer.cooldown(pause)
                after = await _server_time(raw)
                await resumed.wait()
                tg.cancel_scope.cancel()
    assert max(log.slots[:held]) > before + 3 * pause  # the slots held reached far ahead
    first = min(t for t in log.slots[held:] if t > after)
    # the first new slot is due when the pause ends (the waiters asked again at its end, as
    # soon as they could: a slot due later than the pause would mean the voided ones still count)
    assert before + pause <= first < max(log.slots[:held])


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
        t0 = limiter.log.starts[-1].slot  # the server's clock
        starts: dict[str, float] = {}  # the slot each start had
        doomed, gave_back = anyio.CancelScope(), anyio.Event()

        async def start(label: str) -> None:
            await limiter.acquire()
            starts[label] = limiter.log.starts[-1].slot

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
        await limiter.acquire()  # the next slot on the schedule
        starts["next"] = limiter.log.starts[-1].slot
    assert "doomed" not in starts
    # slot 1 (0.9 spacing after the first start: the bucket's slack is 0.1) goes to the taker
    # instead of being lost, which would push the taker one spacing later
    spacing = QUOTA.spacing
    assert starts["taker"] - t0 == pytest.approx(0.9 * spacing, abs=1e-5)
    if not last_in_line:
        assert starts["second"] - t0 == pytest.approx(1.9 * spacing, abs=1e-5)
    # the give-back moved the schedule back only if the slot was its last: no slot is handed
    # out twice, and the slots stay a spacing apart after the first (less the bucket's slack)
    slots = sorted([t0, *starts.values()])
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert min(gaps) >= (1 - QUOTA.slack) * spacing - 1e-5, gaps


@pytest.mark.redis
async def test_cancellations_never_break_the_guarantee(redis_url: str, name: str) -> None:
    rng = random.Random(7)
    log = Log()
    cancelled = 0

    async def worker(limiter: Observed) -> None:
        nonlocal cancelled
        while len(log.starts) < 60:
            with anyio.move_on_after(rng.uniform(0.005, 0.3)) as scope:
                await limiter.acquire()
            cancelled += scope.cancelled_caught

    with anyio.fail_after(20):  # slots lost for good would starve the workers
        async with (
            _limiters(redis_url, name, 3, log=log) as limiters,
            anyio.create_task_group() as tg,
        ):
            for limiter in limiters:
                for _ in range(6):
                    tg.start_soon(worker, limiter)
    assert cancelled >= 20  # the test did cancel waiters, many of them holding a slot
    starts = log.server_starts()
    assert max_in_window(starts, checked_window()) <= QUOTA.requests
    # slots given back are taken over: little of the quota is lost (the slots handed out are
    # the schedule; a slot reused after a give-back is not a new one)
    assert _steady_rate(log.slots, QUOTA.burst) == pytest.approx(QUOTA.rate, rel=0.05)


@pytest.mark.redis
async def test_strict_slots_are_a_whole_spacing_apart(redis_url: str, name: str) -> None:
    # strict: a tolerance of 0, so the slack of the bucket is not available: every new slot on
    # the schedule comes at least one emission interval after the one before
    rl = RateLimit(requests=20, per=1.0, strict=True)
    log = Log()
    async with _limiters(redis_url, name, 2, rl, log=log) as limiters:
        await _run(limiters, tasks_each=3, total=24)
    assert len(log.starts) == 24
    emission = math.ceil(US / rl.rate) / US
    gaps = [b - a for a, b in itertools.pairwise(sorted(log.slots))]
    assert min(gaps) >= emission - 1e-6, gaps
    _check_schedule(log, rl, rel=0.05)


class WakesLate(Observed):
    """A limiter whose first claim of a slot comes ``late`` seconds after the slot, as on a
    machine too busy to run the waiter in time."""

    def __init__(self, *args: Any, late: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.late = late

    async def _claim(self, slot: int, seen: int) -> bool:
        await anyio.sleep(self.late)  # acquire slept until the slot: this much more
        self.late = 0.0
        return await super()._claim(slot, seen)


@pytest.mark.redis
async def test_a_slot_claimed_too_late_is_forfeited_and_the_waiter_queues_again(
    redis_url: str, name: str
) -> None:
    # Three quarters of a spacing late: past the half spacing a start may lag its slot. A slow
    # quota (a spacing of ~0.35 s) leaves room for a busy machine between the two steps.
    rl = RateLimit(requests=4, per=1.0)
    log = Log()
    late = WakesLate(rl, url=redis_url, name=name, log=log, late=0.75 * rl.spacing)
    async with late as limiter:
        with anyio.fail_after(10):
            await limiter.acquire()  # due at once: no claim
            await limiter.acquire()  # its slot is claimed late: forfeited, then a later one
    assert log.forfeited >= 1
    missed, taken = log.slots[1], log.starts[-1]
    # the start lies within half a spacing of the slot it was granted on, a later one than the
    # slot it missed (on a busy machine the next claim may come late too: another forfeit)
    assert taken.slot > missed
    assert taken.slot - 1e-6 <= taken.server <= taken.slot + rl.spacing / 2 + 1e-6
    assert taken.server > missed + rl.spacing / 2


class _EarlyTimers:
    """The anyio module as the limiter sees it, but whose first sleep ends after a third of the
    time asked: a timer that fires early (a clock that runs fast)."""

    def __init__(self) -> None:
        self.early = 1

    def __getattr__(self, name: str) -> Any:
        return getattr(anyio, name)

    async def sleep(self, seconds: float) -> None:
        if self.early and seconds > 0:
            self.early -= 1
            seconds /= 3
        await anyio.sleep(seconds)


@pytest.mark.redis
async def test_a_waiter_that_wakes_early_still_starts_on_its_slot(
    redis_url: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rl = RateLimit(requests=2, per=1.0)  # the second slot ~1 s after the first: a long wait
    timers = _EarlyTimers()
    log = Log()
    async with _limiters(redis_url, name, 1, rl, log=log) as (limiter,):
        with anyio.fail_after(10):
            await limiter.acquire()  # due at once: no sleep
            monkeypatch.setattr(limiter_module, "anyio", timers)
            await limiter.acquire()  # wakes a third of the way to its slot and claims it
            monkeypatch.undo()
    assert timers.early == 0  # it slept for its slot, and the timer fired early
    first, second = log.starts
    assert second.slot > first.slot
    # the early claim was told to wait: the start lies on the slot's side of the server's clock
    assert second.slot - 1e-6 <= second.server <= second.slot + rl.spacing / 2 + 1e-6


_skew: contextvars.ContextVar[float] = contextvars.ContextVar("skew", default=0.0)


class SkewedClock(Observed):
    """A limiter on a machine whose wall clock is ``skew`` seconds off: ``time.time`` (patched
    by the test) reads that much off while this limiter talks to Redis."""

    def __init__(self, *args: Any, skew: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.skew = skew

    async def _run(self, op: str, *operands: int) -> list[int]:
        token = _skew.set(self.skew)
        try:
            return await super()._run(op, *operands)
        finally:
            _skew.reset(token)


@pytest.mark.redis
@pytest.mark.parametrize("skew", [30.0, -30.0])
async def test_clients_whose_clocks_disagree_share_one_schedule(
    redis_url: str, name: str, skew: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Decisions are taken on the Redis server's clock: a client whose clock is half a minute
    # off neither waits half a minute nor makes the others wait.
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + _skew.get())
    log = Log()
    async with contextlib.AsyncExitStack() as stack:
        right = await stack.enter_async_context(Observed(QUOTA, url=redis_url, name=name, log=log))
        off = await stack.enter_async_context(
            SkewedClock(QUOTA, url=redis_url, name=name, log=log, skew=skew)
        )
        per_limiter = await _run([right, off], tasks_each=3, total=30)  # ~1.5 s on one schedule
    monkeypatch.undo()
    assert len(log.starts) == 30
    assert all(per_limiter), [len(s) for s in per_limiter]  # both were served
    _check_schedule(log, rel=0.05)


@pytest.mark.redis
async def test_two_clients_share_one_quota_through_redis(redis_url: str, name: str) -> None:
    # The fake API enforces the quota with a sliding log over its arrivals: any excess is a 429.
    # Its window is half a spacing short of the quota's: the margin the guarantee leaves for
    # arrivals delayed unevenly by a busy machine (two clients not sharing would send twice the
    # quota, far beyond that margin).
    api = FakeAPI(
        policy="sliding",
        requests=QUOTA.requests,
        per=QUOTA.per - QUOTA.spacing / 2,
        credits=10_000,
    )
    log = Log()
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
        async with (
            _limiters(redis_url, name, 2, log=log) as (a, b),
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(run, "a", a)
            tg.start_soon(run, "b", b)
    assert sent == {"a": 30, "b": 30}
    assert api.statuses == [200] * 60
    _check_schedule(log, rel=0.05)


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
