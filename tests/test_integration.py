"""The client against the emulator: in process with faults, and over real loopback sockets."""

from __future__ import annotations

from pathlib import Path

import pytest

import clipnormals
from clipnormals.emulator import (
    Emulator,
    EmulatorConfig,
    Faults,
    Latency,
    ServerLimit,
    start_in_thread,
)

from .guarantee import ObservedEmulator, StampingLimiter, check, stamp

pytestmark = pytest.mark.anyio

SAMPLES = Path(clipnormals.__file__).parent / "samples"
KEY = "integration-key"


def _images(n: int) -> list[clipnormals.PreparedImage]:
    base = [
        clipnormals.prepare_image(SAMPLES / "camera.png"),
        clipnormals.prepare_image(SAMPLES / "astronaut.png"),
    ]
    return [base[i % 2] for i in range(n)]


async def test_faults_lose_no_image_and_charge_only_successes() -> None:
    emulator = Emulator(
        EmulatorConfig(
            keys={KEY: 1000},
            limit=ServerLimit(requests=600, per=6.0, policy="sliding"),
            faults=Faults(
                server_error=0.15, rate_limited=0.1, reset=0.1, truncate_jpeg=0.05, retry_after=0.05
            ),
            synth="canned",
            seed=4,
        )
    )
    async with clipnormals.AsyncClient(
        api_key=KEY,
        base_url="http://127.0.0.1",
        transport=emulator.transport(),
        rate_limit=clipnormals.RateLimit(requests=600, per=6.0),
        retry=clipnormals.RetryPolicy(attempts=12, initial=0.01, max_backoff=0.1),
    ) as client:
        items = [item async for item in client.map(_images(60))]
    failed = [repr(i.error) for i in items if not i.ok]
    assert failed == []
    stats = emulator.stats
    assert stats.successes == 60
    # truncated bodies were charged by the server (it did the work); nothing else was
    assert stats.credits_charged == 60 + stats.faults.get("truncate-jpeg", 0)
    assert emulator.credits(KEY) == 1000 - stats.credits_charged
    assert client.credits.consumed == stats.credits_charged  # truncated bodies included
    assert client.stats.retries > 0
    assert sum(stats.faults.values()) > 0


async def test_exact_credit_stop_against_the_emulator() -> None:
    emulator = Emulator(EmulatorConfig(keys={KEY: 7}, limit=None, synth="canned"))
    async with clipnormals.AsyncClient(
        api_key=KEY, base_url="http://127.0.0.1", transport=emulator.transport()
    ) as client:
        items = [item async for item in client.map(_images(20))]
    assert sum(i.ok for i in items) == 7
    assert sum(isinstance(i.error, clipnormals.CreditBudgetError) for i in items) == 13
    assert emulator.stats.statuses.get(402, 0) == 0
    assert emulator.stats.requests == 7
    assert emulator.credits(KEY) == 0


async def test_real_normal_map_through_the_emulator() -> None:
    emulator = Emulator(EmulatorConfig(keys={KEY: 5}, limit=None))
    async with clipnormals.AsyncClient(
        api_key=KEY, base_url="http://127.0.0.1", transport=emulator.transport()
    ) as client:
        nm = await (await client.surface_normals(SAMPLES / "astronaut.png")).load()
    assert nm.size == (512, 512)
    assert 0.05 < nm.mask.mean() < 0.9
    lengths = (nm.normals**2).sum(axis=-1)
    assert abs(float(lengths.mean()) - 1.0) < 1e-4
    convention = nm.detect_convention()
    assert (convention.flip_x, convention.flip_y) == (False, False)


@pytest.mark.loopback
@pytest.mark.parametrize("policy", ["fixed", "sliding", "token", "nginx"])
async def test_loopback_server_never_sees_a_full_window(policy: str) -> None:
    # 60 per 3 s over real sockets and uvicorn: spacing ~51 ms. Each request carries its start
    # to the server, which notes its arrival: a window the limiter crowded fails the test, one
    # that a busy machine crowded by delaying some requests more than others does not (see
    # tests/guarantee.py).
    rate_limit = clipnormals.RateLimit(requests=60, per=3.0)
    config = EmulatorConfig(
        keys={KEY: 10_000},
        limit=ServerLimit(requests=60, per=3.0, policy=policy, burst=3),  # type: ignore[arg-type]
        latency=Latency.lognormal(0.15, 0.6, maximum=1.0),
        synth="canned",
        seed=1,
    )
    emulator = ObservedEmulator(config)
    limiter = StampingLimiter(rate_limit)
    with start_in_thread(emulator) as server:
        async with clipnormals.AsyncClient(
            api_key=KEY,
            base_url=server.url,
            rate_limit=rate_limit,
            limiter=limiter,
            event_hooks={"request": [stamp]},
        ) as client:
            items = [item async for item in client.map(_images(90))]
    assert all(i.ok for i in items), [repr(i.error) for i in items if not i.ok]
    verdict = check(limiter.starts, emulator.arrivals, rate_limit)
    assert verdict, verdict.problems
    assert len(emulator.arrivals) == emulator.stats.requests
    assert sum(a.status == 200 for a in emulator.arrivals) == 90
