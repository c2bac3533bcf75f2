"""RedisLimiter against a real redis-server on loopback, with time scaled down.

The server comes from ``CLIPNORMALS_REDIS_URL``; without it a private ``redis-server`` is started
on a free loopback port. With neither, these tests fail when ``CI`` is set (a skip would hide a
failure there) and are skipped otherwise.

The quota is 20 starts per second: a spacing of ~53 ms. The limiter's decisions are taken by
the Redis server, on the server's clock, and every reply says what was decided: the slot handed
out and when, the claim and how late it came. The tests read those replies (:class:`Observed`)
and assert what the guarantee says *there*, where it is exact whatever the load on the machine:

- no window of ``per + spacing / 2`` holds more than ``requests`` starts on the server's clock
  (starts lie within half a spacing of their slots, and ``requests + 1`` slots span ``per`` plus
  a spacing);
- the schedule advances by exactly one emission interval per slot, and slots go to waiters in
  the order they asked: the quota is offered at the designed rate, to everyone in turn;
- each slot handed out ends once: started, forfeited (claimed too late), voided by a cooldown, or
  given back.

How fast the machine takes the slots it is offered (a waiter on a busy machine wakes late and
forfeits its slot) is not the limiter's promise; the starts the client saw are checked against
the promise only through the delays it measured (tests/guarantee.py).
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import importlib
import itertools
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest
import redis
import redis.asyncio

import clipnormals
from clipnormals import ClipnormalsError, RateLimit
from clipnormals.redis import RedisLimiter

from .fakeapi import KEY, FakeAPI, max_in_window, prepared
from .guarantee import crowded_windows

pytestmark = pytest.mark.anyio

QUOTA = RateLimit(requests=20, per=1.0)
US = 1_000_000
# Reply kinds of the limiter's script (clipnormals/_redis/limiter.py).
SLOT, COOLDOWN, FULL, VOID, EARLY, LATE = 0, 1, 2, 3, 4, 5
NO_SERVER = (
    "the Redis limiter tests need a server: set CLIPNORMALS_REDIS_URL or put redis-server on PATH"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _answers_ping(port: int, proc: subprocess.Popen[bytes]) -> bool:
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                time.sleep(0.05)  # waiting for a server to come up, not timing anything
        return False
    finally:
        client.close()


@contextlib.contextmanager
def _private_server(binary: str) -> Iterator[str]:
    for _ in range(3):  # the free port may be taken between the probe and the bind
        port = _free_port()
        command = [binary, "--port", str(port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no"]  # nothing written to disk
        proc = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            if _answers_ping(port, proc):
                yield f"redis://127.0.0.1:{port}/0"
                return
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    pytest.fail("redis-server did not start on a loopback port")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("CLIPNORMALS_REDIS_URL")
    if url:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail(NO_SERVER)
        pytest.skip(NO_SERVER)
    with _private_server(binary) as url:
        yield url


@pytest.fixture
def name() -> str:
    """A fresh quota name per test: tests never share a bucket, even on a shared server."""
    return f"test-{uuid.uuid4().hex[:12]}"


@dataclass
class Grant:
    server: float  # the start on the Redis server's clock (seconds)
    client: float  # when acquire returned, on the client's wall clock (the same clock here)
    who: int  # which limiter


@dataclass
class Reserved:
    now: int  # server time of the reserve, in microseconds
    slot: int
    tat_after: int  # 0 when the slot was a returned one
    who: int


@dataclass
class Log:
    """What the server decided, from its replies, for every limiter sharing one name."""

    grants: list[Grant] = field(default_factory=list)
    reserved: list[Reserved] = field(default_factory=list)
    claims: dict[int, int] = field(default_factory=dict)  # reply kind -> count
    releases: list[tuple[int, int]] = field(default_factory=list)  # (slot, reply)
    full: int = 0
    cooldown_ends: set[int] = field(default_factory=set)
    cooldown_met: anyio.Event = field(default_factory=anyio.Event)  # a sender was told to pause
    slot_of: dict[int, list[int]] = field(default_factory=dict)  # limiter -> slots reserved

    def starts(self) -> list[float]:
        return sorted(g.server for g in self.grants)


_granted: contextvars.ContextVar[int | None] = contextvars.ContextVar("granted", default=None)


class Observed(RedisLimiter):
    """A RedisLimiter that logs the server's replies: where each start was granted on the
    server's clock, each slot handed out and how it ended."""

    def __init__(self, *args: Any, log: Log, who: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log, self.who = log, who

    async def acquire(self) -> None:
        _granted.set(None)
        await super().acquire()
        granted = _granted.get()
        assert granted is not None, "acquire returned without a grant from the server"
        self.log.grants.append(Grant(granted / US, time.time(), self.who))

    async def _run(self, op: str, *operands: int) -> list[int]:
        reply = await super()._run(op, *operands)
        log = self.log
        if op == "reserve":
            kind, wait = reply[0], reply[1]
            if kind == SLOT:
                slot, tat_after = reply[2], reply[3]
                log.reserved.append(Reserved(slot - wait, slot, tat_after, self.who))
                log.slot_of.setdefault(self.who, []).append(slot)
                if wait <= 0:
                    _granted.set(slot)  # due now: it starts on this reply
            elif kind == FULL:
                log.full += 1
            elif kind == COOLDOWN:
                log.cooldown_ends.add(reply[4])
                log.cooldown_met.set()
        elif op == "claim":
            kind = reply[0]
            log.claims[kind] = log.claims.get(kind, 0) + 1
            if kind == SLOT:
                _granted.set(operands[0] + reply[1])  # the slot, plus how late the claim came
        elif op == "release":
            log.releases.append((operands[0], reply[0]))
        return reply


@contextlib.asynccontextmanager
async def _limiters(
    url: str, name: str, count: int, rate_limit: RateLimit = QUOTA, log: Log | None = None
) -> AsyncIterator[list[Observed]]:
    """``count`` limiters sharing ``name``, each with its own connection, as separate processes
    would have, logging into one :class:`Log` (``limiters[0].log``)."""
    shared = log if log is not None else Log()
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(
                Observed(rate_limit, url=url, name=name, log=shared, who=i)
            )
            for i in range(count)
        ]


async def _run(limiters: list[Observed], tasks_each: int, total: int) -> Log:
    """Start ``total`` requests from ``tasks_each`` tasks per limiter."""
    left = total

    async def worker(i: int) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await limiters[i].acquire()

    with anyio.fail_after(30 + 2 * total * QUOTA.spacing):
        async with anyio.create_task_group() as tg:
            for i in range(len(limiters)):
                for _ in range(tasks_each):
                    tg.start_soon(worker, i)
    return limiters[0].log


def _emission(rate_limit: RateLimit) -> int:
    """The schedule's step in microseconds, rounded up as the limiter rounds it."""
    return math.ceil(US / rate_limit.rate)


def assert_the_guarantee(log: Log, rate_limit: RateLimit = QUOTA) -> None:
    """No window of ``per + spacing / 2`` on the server's clock holds more than ``requests``
    starts; the starts the client saw crowd a window of ``per`` only where the delays of the
    replies explain it."""
    window = rate_limit.per + rate_limit.spacing / 2 - 1e-5  # rounding to microseconds
    assert max_in_window(log.starts(), window) <= rate_limit.requests
    seen = [(g.server, g.client) for g in log.grants]
    crowded = crowded_windows(
        seen, limit=rate_limit.requests, per=rate_limit.per, margin=rate_limit.spacing / 2
    )
    assert crowded == []


def assert_the_schedule(log: Log, rate_limit: RateLimit = QUOTA) -> None:
    """Slots go to waiters in the order they asked, and the schedule advances by exactly one
    emission interval per slot while it is busy: the quota is offered at the designed rate."""
    step = _emission(rate_limit)
    fresh = sorted((r for r in log.reserved if r.tat_after), key=lambda r: r.now)
    assert fresh
    slots = [r.slot for r in fresh]
    assert slots == sorted(slots), "slots were not handed out in the order they were asked for"
    for before, after in itertools.pairwise(fresh):
        if after.tat_after - step > after.now:  # the schedule was ahead of the clock: busy
            assert after.tat_after - before.tat_after == step, (before, after)


def assert_every_slot_ended_once(log: Log) -> None:
    """Each slot handed out started, or was forfeited late, voided, or given back."""
    immediate = sum(r.slot <= r.now for r in log.reserved)
    ended = immediate + sum(log.claims.get(k, 0) for k in (SLOT, LATE, VOID)) + len(log.releases)
    assert ended == len(log.reserved)
    assert len(log.grants) == immediate + log.claims.get(SLOT, 0)


@pytest.mark.redis
async def test_instances_sharing_a_name_share_the_quota(redis_url: str, name: str) -> None:
    async with _limiters(redis_url, name, 4) as limiters:
        log = await _run(limiters, tasks_each=4, total=100)
    assert len(log.grants) == 100
    assert_the_guarantee(log)
    assert_the_schedule(log)
    assert_every_slot_ended_once(log)
    # every process is handed slots: one schedule, served in turn
    assert {r.who for r in log.reserved} == {0, 1, 2, 3}


@pytest.mark.redis
async def test_more_waiters_than_the_reservation_horizon(redis_url: str, name: str) -> None:
    # 30 waiters, while one window of schedule holds 19 slots: the rest are told to ask again
    async with _limiters(redis_url, name, 6) as limiters:
        log = await _run(limiters, tasks_each=5, total=60)
    assert len(log.grants) == 60
    assert log.full > 0  # the horizon was reached
    # no slot is ever reserved further ahead than one window (and four spacings at least)
    horizon = max(QUOTA.per * US, 4 * _emission(QUOTA))
    assert all(r.slot - r.now <= horizon for r in log.reserved)
    assert_the_guarantee(log)
    assert_the_schedule(log)
    assert_every_slot_ended_once(log)


@pytest.mark.redis
async def test_burst_and_slack_match_the_local_bucket(redis_url: str, name: str) -> None:
    # capacity 5.5: 5 starts at once, then one every spacing, as LocalLimiter's bucket does
    rl = RateLimit(requests=20, per=1.0, burst=5, slack=0.5)
    async with _limiters(redis_url, name, 2, rl) as limiters:
        log = await _run(limiters, tasks_each=4, total=30)
    first = sorted(log.reserved, key=lambda r: r.now)
    assert all(r.slot <= r.now for r in first[:5])  # the burst: due at once, no wait
    starts = log.starts()
    # the sixth start waits for half a spacing of the bucket to refill (5.5 - 5 tokens)
    assert starts[5] - starts[0] >= 0.5 * rl.spacing - 1e-5
    assert starts[4] - starts[0] < starts[5] - starts[0]
    assert_the_guarantee(log, rl)
    assert_the_schedule(log, rl)


@pytest.mark.redis
async def test_different_names_do_not_interfere(redis_url: str, name: str) -> None:
    logs: dict[str, Log] = {}
    async with (
        _limiters(redis_url, f"{name}-a", 1) as a,
        _limiters(redis_url, f"{name}-b", 1) as b,
    ):

        async def run(label: str, limiters: list[Observed]) -> None:
            logs[label] = await _run(limiters, tasks_each=3, total=40)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, "a", a)
            tg.start_soon(run, "b", b)
    for log in logs.values():
        assert len(log.grants) == 40
        assert_the_guarantee(log)
        # each name's schedule steps one emission interval per slot: a shared bucket would
        # step two for each of them
        assert_the_schedule(log)


@pytest.mark.redis
async def test_cooldown_from_one_instance_pauses_the_others(redis_url: str, name: str) -> None:
    pause = 0.5
    async with _limiters(redis_url, name, 2) as (sender, observer):
        log = sender.log
        warmed_up, resumed_enough = anyio.Event(), anyio.Event()
        ends: list[int] = []

        async def worker() -> None:
            while True:
                await sender.acquire()
                if len(log.grants) >= 6:
                    warmed_up.set()
                if ends and sum(g.server * US >= ends[0] for g in log.grants) >= 6:
                    resumed_enough.set()

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(worker)
                await warmed_up.wait()
                asked = time.monotonic()
                await observer.cooldown(pause)
                left = await sender.cooldown_remaining()
                took = time.monotonic() - asked
                # by the server's clock, nearly all of the pause is left (the two round trips)
                assert pause - took - 1e-3 <= left <= pause
                await log.cooldown_met.wait()
                ends.extend(log.cooldown_ends)
                await resumed_enough.wait()
                tg.cancel_scope.cancel()
    (end,) = ends  # one cooldown, one end, told to every sender that met it
    begun = end - math.ceil(pause * US)
    assert [g for g in log.grants if begun < g.server * US < end] == []
    resumed = sorted(g.server for g in log.grants if g.server * US >= end)
    # the waiters held back do not all start at its end: their slots were voided, and the
    # schedule starts again with one start, then one per spacing (capacity 1 + slack)
    assert resumed[1] - resumed[0] >= (1 - QUOTA.slack) * QUOTA.spacing - 1e-5
    assert log.claims.get(VOID, 0) > 0
    assert_the_guarantee(log)


@pytest.mark.redis
async def test_a_cooldown_frees_the_schedule_its_voided_slots_held(
    redis_url: str, name: str
) -> None:
    # 15 waiters hold slots up to ~0.8 s ahead; a 0.1 s pause voids them all, so the first slot
    # handed out after the pause is due at once, not after the slots that were voided
    pause = 0.1
    warmed_up, resumed = anyio.Event(), anyio.Event()
    async with _limiters(redis_url, name, 2) as (sender, observer):
        log = sender.log
        marks: list[int] = []

        async def worker() -> None:
            while True:
                await sender.acquire()
                if len(log.grants) >= 3:
                    warmed_up.set()
                if marks and log.grants[-1].server * US > marks[0]:
                    resumed.set()

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for _ in range(15):
                    tg.start_soon(worker)
                await warmed_up.wait()
                held = max(r.slot for r in log.reserved)
                await observer.cooldown(pause)
                await log.cooldown_met.wait()
                marks.append(max(log.cooldown_ends))
                await resumed.wait()
                tg.cancel_scope.cancel()
    end = marks[0]
    assert held > end  # slots were held beyond the pause's end
    after = sorted((r for r in log.reserved if r.now >= end), key=lambda r: r.now)
    assert after
    first = after[0]
    assert first.slot <= first.now  # due at once: the voided slots hold nothing any more
    assert_the_guarantee(log)


@pytest.mark.redis
async def test_cooldown_is_never_shortened_and_is_capped(redis_url: str, name: str) -> None:
    capped = RateLimit(requests=20, per=1.0, max_cooldown=0.2)
    async with (
        _limiters(redis_url, name, 2) as (a, b),
        _limiters(redis_url, f"{name}-capped", 1, capped) as (c,),
    ):
        assert await a.cooldown_remaining() == 0.0
        asked = time.monotonic()
        await a.cooldown(5.0)
        await b.cooldown(0.1)
        assert 5.0 - (time.monotonic() - asked) - 1e-3 <= await b.cooldown_remaining() <= 5.0
        asked = time.monotonic()
        await c.cooldown(30.0)
        assert 0.2 - (time.monotonic() - asked) - 1e-3 <= await c.cooldown_remaining() <= 0.2
        with pytest.raises(ValueError, match="number"):
            await c.cooldown(float("nan"))


async def _tat(raw: redis.asyncio.Redis, name: str) -> bytes | str | None:
    value: bytes | str | None = await raw.get(f"clipnormals:{{{name}}}:tat")
    return value


async def _reserved(raw: redis.asyncio.Redis, name: str, since: bytes | str | None) -> None:
    """Wait until the next slot has been handed out (the schedule in Redis moved)."""
    with anyio.fail_after(30):
        for _ in itertools.count():
            if await _tat(raw, name) != since:
                return
            await anyio.sleep(0.001)


@pytest.mark.redis
@pytest.mark.parametrize("last_in_line", [True, False])
async def test_a_cancelled_waiter_gives_its_slot_back(
    redis_url: str, name: str, last_in_line: bool
) -> None:
    slow = RateLimit(requests=5, per=1.0)  # slots ~0.3 s apart: time to cancel before they pass
    async with (
        _limiters(redis_url, name, 1, slow) as (limiter,),
        redis.asyncio.Redis.from_url(redis_url) as raw,
    ):
        log = limiter.log
        await limiter.acquire()
        doomed, gave_back = anyio.CancelScope(), anyio.Event()
        started: dict[str, Grant] = {}

        async def start(label: str) -> None:
            await limiter.acquire()
            started[label] = log.grants[-1]

        async def doomed_waiter() -> None:
            with doomed:
                await start("doomed")
            gave_back.set()  # acquire hands the slot back before the cancellation leaves it

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                since = await _tat(raw, name)
                tg.start_soon(doomed_waiter)
                await _reserved(raw, name, since)  # the doomed waiter holds slot 1
                slot_1 = log.reserved[-1].slot
                if not last_in_line:
                    since = await _tat(raw, name)
                    tg.start_soon(start, "second")  # ...and this one slot 2
                    await _reserved(raw, name, since)
                    slot_2 = log.reserved[-1].slot
                doomed.cancel()
                await gave_back.wait()
                tg.start_soon(start, "taker")
    assert "doomed" not in started
    assert not log.cooldown_ends  # giving a slot back pauses nobody
    (release,) = [reply for _, reply in log.releases]
    taker = log.reserved[-1]
    if taker.now <= slot_1:
        # Given back in time: the taker gets slot 1 itself (the last slot steps the schedule
        # back; another goes to the returned slots) instead of one a spacing later.
        assert release == (1 if last_in_line else 2)
        assert taker.slot == slot_1
    else:  # a busy machine asked again only after slot 1 had passed: nothing to take over
        assert release in ((1,) if last_in_line else (0, 2))
        assert taker.slot >= taker.now
    assert taker.slot / US <= started["taker"].server <= taker.slot / US + slow.spacing / 2
    if not last_in_line:
        second = started["second"].server
        assert slot_2 / US <= second <= slot_2 / US + slow.spacing / 2


@pytest.mark.redis
async def test_cancellations_never_break_the_guarantee(redis_url: str, name: str) -> None:
    rng = random.Random(7)
    cancelled = 0
    log = Log()

    async def worker(limiter: Observed) -> None:
        nonlocal cancelled
        while len(log.grants) < 60:
            with anyio.move_on_after(rng.uniform(0.005, 0.3)) as scope:
                await limiter.acquire()
            cancelled += scope.cancelled_caught

    with anyio.fail_after(60):  # slots lost for good would starve the workers
        async with (
            _limiters(redis_url, name, 3, log=log) as limiters,
            anyio.create_task_group() as tg,
        ):
            for limiter in limiters:
                for _ in range(6):
                    tg.start_soon(worker, limiter)
    assert cancelled >= 20  # the test did cancel waiters, many of them holding a slot
    assert_the_guarantee(log)
    # slots given back are taken over: the last one handed out steps the schedule back, the
    # others are handed to the next waiters
    given_back = [slot for slot, reply in log.releases if reply == 2]
    stepped_back = sum(reply == 1 for _, reply in log.releases)
    taken_over = [r.slot for r in log.reserved if not r.tat_after]
    assert stepped_back + len(given_back) > 0
    # a returned slot is handed out again at most once per time it was given back
    handed, returned = collections.Counter(taken_over), collections.Counter(given_back)
    assert all(handed[slot] <= returned[slot] for slot in handed)


class WakesLate(Observed):
    """A limiter whose first wake-up for a slot comes ``late`` seconds after the slot, as on a
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
    # Three quarters of a spacing late: past the half spacing a start may lag its slot.
    log = Log()
    late = WakesLate(QUOTA, url=redis_url, name=name, log=log, who=0, late=0.75 * QUOTA.spacing)
    async with late as limiter:
        with anyio.fail_after(30):
            await limiter.acquire()  # due at once: no claim
            await limiter.acquire()  # its slot is claimed late: forfeited, then a later one
    assert log.claims.get(LATE, 0) >= 1
    assert log.claims.get(SLOT, 0) == 1
    forfeited, taken = log.reserved[1], log.reserved[-1]
    assert taken.slot > forfeited.slot
    start = log.grants[-1].server
    # the start lies within half a spacing of the slot it was granted on, not of the first one
    assert taken.slot / US <= start <= taken.slot / US + QUOTA.spacing / 2
    assert start > forfeited.slot / US + QUOTA.spacing / 2


class _EarlyTimers:
    """The anyio module as the limiter sees it, but whose sleeps end after a third of the time
    asked, once: a timer that fires early (a clock that runs fast)."""

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
async def test_a_waiter_that_wakes_early_does_not_start_before_its_slot(
    redis_url: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = sys.modules[RedisLimiter.__module__]
    async with _limiters(redis_url, name, 1) as (limiter,):
        log = limiter.log
        with anyio.fail_after(30):
            await limiter.acquire()  # due at once
            monkeypatch.setattr(module, "anyio", _EarlyTimers())
            await limiter.acquire()  # sleeps a third of the wait, claims early, is told to wait
            monkeypatch.undo()
    slot = log.reserved[-1].slot
    assert log.claims.get(EARLY, 0) >= 1
    assert slot / US <= log.grants[-1].server <= slot / US + QUOTA.spacing / 2


_skew: contextvars.ContextVar[float] = contextvars.ContextVar("skew", default=0.0)


class SkewedClock(Observed):
    """A limiter on a machine whose clock is ``skew`` seconds off: ``time.time`` (patched by
    the test) reads that much off while this limiter talks to Redis."""

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
        right = await stack.enter_async_context(
            Observed(QUOTA, url=redis_url, name=name, log=log, who=0)
        )
        off = await stack.enter_async_context(
            SkewedClock(QUOTA, url=redis_url, name=name, log=log, who=1, skew=skew)
        )
        with anyio.fail_after(10):  # 24 starts take ~1.2 s on one schedule
            await _run([right, off], tasks_each=3, total=24)
    monkeypatch.undo()
    assert len(log.grants) == 24
    assert {g.who for g in log.grants} == {0, 1}
    assert_the_guarantee(log)
    assert_the_schedule(log)


@pytest.mark.redis
async def test_two_clients_share_one_quota_through_redis(redis_url: str, name: str) -> None:
    # The fake API enforces the quota with a sliding log over its arrivals: any excess is a 429.
    api = FakeAPI(policy="sliding", requests=QUOTA.requests, per=QUOTA.per, credits=10_000)
    inner = api.handle
    seen: list[tuple[float, float, int]] = []  # (start on the server's clock, arrival, status)

    async def handle(request: httpx.Request) -> httpx.Response:
        # the task that acquired sends: the grant of this attempt is in its context
        granted = _granted.get()
        arrived = time.time()
        response = await inner(request)
        seen.append(
            (granted / US if granted is not None else math.nan, arrived, response.status_code)
        )
        return response

    log = Log()

    async def run(limiter: Observed) -> None:
        async with clipnormals.AsyncClient(
            api_key=KEY,
            transport=httpx.MockTransport(handle),
            rate_limit=QUOTA,
            limiter=limiter,
            max_concurrency=4,
        ) as client:
            async for item in client.map([prepared(seed) for seed in range(30)]):
                assert item.error is None, item.error

    with anyio.fail_after(60):
        async with (
            _limiters(redis_url, name, 2, log=log) as (a, b),
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(run, a)
            tg.start_soon(run, b)
    assert api.charged == 60
    assert all(not math.isnan(start) for start, _, _ in seen)  # every attempt took a slot
    assert sorted(start for start, _, _ in seen) == log.starts()
    assert_the_guarantee(log)
    # at the API: a crowded window or a 429 only where the delays explain it
    arrivals = [(start, arrived) for start, arrived, _ in seen]
    margin = QUOTA.spacing / 2
    assert crowded_windows(arrivals, limit=QUOTA.requests, per=QUOTA.per, margin=margin) == []
    for start, arrived, status in seen:
        if status == 429:
            delay = arrived - start
            squeezed = [a - s > delay + margin for s, a, _ in seen if 0 <= arrived - a <= QUOTA.per]
            assert any(squeezed), "a 429 that no delay of the arrivals explains"


async def test_an_unreachable_server_is_a_clear_error_without_the_password() -> None:
    port = _free_port()  # nothing listens there
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
    for module in ("clipnormals.redis", "clipnormals._redis.limiter"):
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ImportError, match=r"pip install 'clipnormals\[redis\]'"):
        importlib.import_module("clipnormals.redis")


def test_the_public_module_reexports_the_real_redis_limiter() -> None:
    import clipnormals.redis

    implementation = importlib.import_module("clipnormals._redis.limiter")
    assert clipnormals.redis.RedisLimiter is implementation.RedisLimiter
    assert clipnormals.redis.__all__ == ["RedisLimiter"]
    # the package's own redis.py does not shadow redis-py in the implementation module
    assert implementation.aioredis is redis.asyncio
    assert clipnormals.redis.__doc__
