"""The client against the emulator: in process with faults, and over real loopback sockets."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

import clipnormals
import clipnormals.images
from clipnormals.emulator import (
    Emulator,
    EmulatorConfig,
    Faults,
    ServerLimit,
    start_in_thread,
)
from clipnormals.testing import emulated

from .emulator_process import EmulatorProcess

pytestmark = pytest.mark.anyio

SAMPLES = Path(clipnormals.__file__).parent / "samples"
KEY = "integration-key"


def _images(n: int) -> list[clipnormals.PreparedImage]:
    base = [
        clipnormals.images.prepare_image(SAMPLES / "camera.png"),
        clipnormals.images.prepare_image(SAMPLES / "astronaut.png"),
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
    # 60 per 3 s over real sockets and uvicorn: spacing ~51 ms, well above timer jitter. The
    # server runs in a process of its own: in this one, its thread would wait for the
    # interpreter lock behind the client, and on a busy machine take several arrivals at once
    # that were sent a spacing apart (the "nginx" policy's burst of 3 then refuses one).
    spec = {
        "key": KEY,
        "credits": 10_000,
        "requests": 60,
        "per": 3.0,
        "policy": policy,
        "burst": 3,
        "lognormal": [0.15, 0.6, 1.0],
        "seed": 1,
    }
    with EmulatorProcess(spec) as server:
        async with clipnormals.AsyncClient(
            api_key=KEY,
            base_url=server.url,
            rate_limit=clipnormals.RateLimit(requests=60, per=3.0),
        ) as client:
            items = [item async for item in client.map(_images(90))]
        stats = server.stats()
    assert all(i.ok for i in items)
    assert stats["statuses"].get("429", 0) == 0
    assert stats["max_in_window"] <= 60
    assert stats["requests"] == 90


@pytest.mark.loopback
async def test_a_stop_while_a_request_waits_on_the_wire_for_its_slot_sends_nothing_more() -> None:
    # Over real sockets the slot is taken in httpcore's trace hook, with the connection open
    # and the headers about to leave: a stop there must end the wait, not wait out the quota.
    config = EmulatorConfig(keys={KEY: 100}, limit=None, synth="canned")
    with start_in_thread(config) as server:
        async with clipnormals.AsyncClient(
            api_key=KEY,
            base_url=server.url,
            rate_limit=clipnormals.RateLimit(requests=2, per=1200.0),
            max_concurrency=2,
        ) as client:
            assert client._session.slot_on_wire  # the path under test
            with anyio.fail_after(30):
                async with client.map(_images(2)) as results:
                    first = await anext(results)
                    await anyio.sleep(0.5)  # the second request is now waiting on the wire
                    client.stop_sending()
                    second = await anext(results)
        requests = server.emulator.stats.requests
    assert first.ok
    assert isinstance(second.error, clipnormals.SendingStoppedError)
    assert requests == 1


@pytest.mark.parametrize(("form", "n"), [("async for", 5), ("async with", 4)])
async def test_closing_at_once_after_the_last_of_a_list_is_delivered_loses_nothing(
    form: str, n: int
) -> None:
    # Items refused before any upload are ready together and taken back to back, then the
    # client is closed: no worker has asked for a next source yet, but a list says how many
    # there were. (A bare loop's first item goes to a consumer already waiting, so its worker
    # pulls one more source: 5 sources there, 4 for the 4 workers of `async with`.)
    async with emulated(max_concurrency=2) as (client, _emulator):
        sources = [b"not an image %d" % i for i in range(n)]
        got = []
        if form == "async for":
            items = client.map(sources)
            got.append(await anext(items))
            await anyio.sleep(0.5)  # the other workers finish and wait to hand over
            got += [await anext(items) for _ in range(n - 1)]
            await client.aclose()
            got += [item async for item in items]
        else:
            async with client.map(sources) as items:
                await anyio.sleep(0.5)
                got += [await anext(items) for _ in range(n)]
                await client.aclose()
                got += [item async for item in items]
    assert [type(item.error) for item in got] == [clipnormals.InvalidImageError] * n
