from __future__ import annotations

import functools
import itertools
import random

import anyio
import pytest

from clipnormals import LocalLimiter, RateLimit

from .fakeapi import max_in_window
from .vtime import VirtualTimeLoop

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend(virtual_time_backend: object) -> object:
    return virtual_time_backend


def test_rate_limit_math() -> None:
    rl = RateLimit(requests=60, per=60.0, burst=1, slack=0.1)
    assert rl.capacity == pytest.approx(1.1)
    assert rl.rate == pytest.approx(58.9 / 60)
    assert rl.sustained_fraction == pytest.approx(58.9 / 60)
    # capacity + rate * per is the most starts any window can hold: exactly the quota
    assert rl.capacity + rl.rate * rl.per == pytest.approx(60)
    textbook = RateLimit(requests=60, per=60.0, slack=0)
    assert textbook.sustained_fraction == pytest.approx(59 / 60)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"requests": 1},
        {"per": 0},
        {"per": float("nan")},
        {"burst": 0},
        {"burst": 60},
        {"slack": 1.0},
        {"slack": -0.1},
    ],
)
def test_rate_limit_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="RateLimit"):
        RateLimit(**kwargs)  # type: ignore[arg-type]


def test_rate_limit_parse() -> None:
    assert RateLimit.parse("60/60") == RateLimit(requests=60, per=60.0)
    assert RateLimit.parse("600/6", burst=3) == RateLimit(requests=600, per=6.0, burst=3)
    assert RateLimit.parse("100/min").per == 60.0
    with pytest.raises(ValueError, match="invalid rate"):
        RateLimit.parse("fast")


async def _starts(limiter: LocalLimiter, n: int, tasks: int = 8) -> list[float]:
    starts: list[float] = []
    queue = list(range(n))

    async def worker() -> None:
        while queue:
            queue.pop()
            await limiter.acquire()
            starts.append(anyio.current_time())

    async with anyio.create_task_group() as tg:
        for _ in range(tasks):
            tg.start_soon(worker)
    return starts


@pytest.mark.parametrize("burst", [1, 5, 30])
@pytest.mark.parametrize("slack", [0.0, 0.1, 0.9])
async def test_no_window_ever_exceeds_the_quota(burst: int, slack: float) -> None:
    rl = RateLimit(requests=60, per=60.0, burst=burst, slack=slack)
    starts = await _starts(LocalLimiter(rl), 400)
    assert len(starts) == 400
    assert max_in_window(starts, rl.per) <= 60
    # and the quota is used: the steady state runs at the designed rate
    tail = starts[100:]
    achieved = (len(tail) - 1) / (tail[-1] - tail[0])
    assert achieved == pytest.approx(rl.rate, rel=1e-6)


async def test_idle_client_gets_its_burst_at_once() -> None:
    limiter = LocalLimiter(RateLimit(requests=60, per=60.0, burst=5))
    starts = await _starts(limiter, 5)
    assert max(starts) - min(starts) == pytest.approx(0.0)


def _late_timers(most: float, seed: int = 3) -> object:
    """A virtual-time backend whose every wake-up comes up to ``most`` seconds late."""
    lateness = functools.partial(random.Random(seed).uniform, 0, most)
    loop_factory = functools.partial(VirtualTimeLoop, lateness=lateness)
    return pytest.param(("asyncio", {"loop_factory": loop_factory}), id=f"late-{most:g}s")


def _achieved(starts: list[float], rl: RateLimit, skip: int = 20) -> float:
    s = sorted(starts)[skip:]
    return (len(s) - 1) / (s[-1] - s[0]) * rl.per / rl.requests


@pytest.mark.parametrize("anyio_backend", [_late_timers(0.05)])
async def test_late_wakeups_keep_the_schedule() -> None:
    # Every timer fires up to 50 ms late (spacing ~1.02 s, so up to ~5% of a spacing). Slots
    # are reserved, so lateness is made up by the next start, with or without slack.
    plain = RateLimit(requests=60, per=60.0, slack=0.0)
    slack = RateLimit(requests=60, per=60.0, slack=0.1)
    plain_starts, slack_starts = [], []

    async def run(rl: RateLimit, out: list[float]) -> None:
        out.extend(await _starts(LocalLimiter(rl), 300, tasks=4))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, plain, plain_starts)
        tg.start_soon(run, slack, slack_starts)

    assert max_in_window(plain_starts, 60.0) <= 60
    assert max_in_window(slack_starts, 60.0) <= 60
    assert _achieved(slack_starts, slack) == pytest.approx(slack.sustained_fraction, rel=2e-3)
    assert _achieved(plain_starts, plain) == pytest.approx(plain.sustained_fraction, rel=2e-3)


@pytest.mark.parametrize("anyio_backend", [_late_timers(1.02)])
async def test_a_loop_late_by_up_to_a_spacing_keeps_97_percent() -> None:
    # A busy loop: every wake-up comes up to one whole spacing late. A bucket that loses the
    # lateness beyond its slack would fall to ~60%; reserved slots and the start log keep the
    # schedule, and the start log still keeps every window under the quota.
    rl = RateLimit(requests=60, per=60.0)
    starts = await _starts(LocalLimiter(rl), 400, tasks=8)
    assert max_in_window(starts, rl.per) <= 60
    # requests + 1 starts always span more than a window plus a spacing (the arrival margin)
    s = sorted(starts)
    assert min(b - a for a, b in zip(s, s[60:], strict=False)) >= rl.per + rl.spacing - 1e-6
    assert _achieved(starts, rl, skip=60) >= 0.97


async def test_strict_spacing_keeps_every_gap_and_the_rate() -> None:
    rl = RateLimit(requests=600, per=60.0, strict=True)
    limiter = LocalLimiter(rl)
    starts = await _starts(limiter, 50, tasks=8)
    await anyio.sleep(5.0)  # idle: a bucket with slack would now allow a close pair
    starts += await _starts(limiter, 300, tasks=8)
    gaps = [b - a for a, b in itertools.pairwise(sorted(starts))]
    assert min(gaps) >= rl.spacing - 1e-9
    assert max_in_window(starts, rl.per) <= rl.requests
    assert _achieved(starts[50:], rl, skip=1) == pytest.approx(rl.sustained_fraction, rel=1e-6)
    assert rl.sustained_fraction >= 0.97


@pytest.mark.parametrize("anyio_backend", [_late_timers(0.001)])
async def test_strict_spacing_on_a_quiet_loop_keeps_97_percent() -> None:
    # Wake-ups up to 1 ms late at a spacing of ~100 ms: lateness may only push starts back.
    rl = RateLimit(requests=600, per=60.0, strict=True)
    starts = await _starts(LocalLimiter(rl), 400, tasks=8)
    gaps = [b - a for a, b in itertools.pairwise(sorted(starts))]
    assert min(gaps) >= rl.spacing - 1e-9
    assert _achieved(starts, rl) >= 0.97


def test_strict_needs_burst_one_and_parses() -> None:
    with pytest.raises(ValueError, match="strict"):
        RateLimit(requests=60, per=60.0, burst=2, strict=True)
    rl = RateLimit.parse("600/60 strict")
    assert rl == RateLimit(requests=600, per=60.0, strict=True)
    assert RateLimit.parse(rl.spec) == rl
    assert RateLimit.parse(RateLimit(requests=57, per=61.5).spec).per == 61.5
    with pytest.raises(ValueError, match="invalid rate"):
        RateLimit.parse("60/60 sometimes")


async def test_cooldown_pauses_every_sender_and_voids_pending_tokens() -> None:
    rl = RateLimit(requests=60, per=6.0, burst=1)
    limiter = LocalLimiter(rl)
    starts: list[float] = []

    async def sender() -> None:
        for _ in range(5):
            await limiter.acquire()
            starts.append(anyio.current_time())

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(sender)
        await anyio.sleep(0.5)
        await limiter.cooldown(10.0)
        paused_at = anyio.current_time()
    during = [t for t in starts if paused_at < t < paused_at + 10.0]
    assert during == []
    after = sorted(t for t in starts if t >= paused_at + 10.0)
    assert len(starts) == 20
    # After the pause the senders do not rush in together: the tokens they held were voided
    # and each start waits for the bucket again (capacity 1 + slack: gaps of >= 1 - slack).
    gaps = [b - a for a, b in itertools.pairwise(after)]
    assert min(gaps) >= (1 - rl.slack) * rl.spacing - 1e-6
    assert max_in_window(starts, rl.per) <= rl.requests


async def test_cooldown_is_never_shortened() -> None:
    limiter = LocalLimiter(RateLimit(requests=60, per=60.0))
    await limiter.cooldown(30.0)
    assert await limiter.cooldown_remaining() == pytest.approx(30.0)
    await limiter.cooldown(1.0)
    assert await limiter.cooldown_remaining() == pytest.approx(30.0)


async def test_the_deprecated_max_cooldown_still_caps_and_warns() -> None:
    with pytest.warns(DeprecationWarning, match="max_retry_after"):
        rl = RateLimit(requests=60, per=60.0, max_cooldown=30.0)
    limiter = LocalLimiter(rl)
    await limiter.cooldown(3600.0)
    assert await limiter.cooldown_remaining() == pytest.approx(30.0)


async def test_cancelled_acquire_takes_no_token() -> None:
    rl = RateLimit(requests=60, per=60.0, burst=1, slack=0)
    limiter = LocalLimiter(rl)
    await limiter.acquire()  # the bucket is now full
    t0 = anyio.current_time()
    with anyio.move_on_after(0.2):
        await limiter.acquire()  # cancelled while waiting
    await limiter.acquire()
    # the cancelled waiter did not take the next slot: this one got it on time
    assert anyio.current_time() - t0 == pytest.approx(rl.spacing)


async def test_a_cancelled_waiter_hands_its_slot_on_and_no_slot_is_used_twice() -> None:
    rl = RateLimit(requests=60, per=60.0, burst=1, slack=0)
    limiter = LocalLimiter(rl)
    await limiter.acquire()
    t0 = anyio.current_time()
    starts: dict[str, float] = {}  # seconds after the first start
    doomed = anyio.CancelScope()

    async def start(label: str) -> None:
        await limiter.acquire()
        starts[label] = anyio.current_time() - t0

    async def doomed_waiter() -> None:
        with doomed:
            await start("doomed")

    async with anyio.create_task_group() as tg:
        tg.start_soon(doomed_waiter)  # holds slot 1
        await anyio.sleep(0.1)
        tg.start_soon(start, "second")  # holds slot 2, the last one handed out
        await anyio.sleep(0.1)
        doomed.cancel()  # slot 1 is not the last: it is kept for the next caller
        await anyio.sleep(0.1)
        tg.start_soon(start, "taker")
        await anyio.sleep(0.1)
        tg.start_soon(start, "next")
    spacing = rl.spacing
    assert starts == pytest.approx(
        {"taker": spacing, "second": 2 * spacing, "next": 3 * spacing}, abs=1e-6
    )
