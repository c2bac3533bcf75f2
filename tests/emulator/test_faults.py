"""Injected faults: scripted and random, in process and on a real loopback socket."""

from __future__ import annotations

import io
import random
import time
from collections import Counter
from collections.abc import Callable

import anyio
import httpx
import pytest
from PIL import Image

from clipnormals.emulator import (
    ENDPOINT,
    Emulator,
    EmulatorConfig,
    Faults,
    Latency,
    start_in_thread,
)

from .conftest import image_bytes, post_image

pytestmark = pytest.mark.anyio


def faulty(faults: Faults, **options: object) -> Emulator:
    return Emulator(EmulatorConfig(keys={"k": 10}, faults=faults, limit=None, **options))  # type: ignore[arg-type]


async def test_a_script_plays_in_order_then_requests_succeed(
    make_http: Callable[[Emulator], httpx.AsyncClient],
) -> None:
    emulator = faulty(Faults(script=("500", "429", "reset", "ok", "503"), retry_after=2.5))
    async with make_http(emulator) as http:
        first = await post_image(http, image_bytes(), key="k")
        second = await post_image(http, image_bytes(), key="k")
        with pytest.raises(httpx.RemoteProtocolError):
            await post_image(http, image_bytes(), key="k")
        fourth = await post_image(http, image_bytes(), key="k")
        fifth = await post_image(http, image_bytes(), key="k")
        after = await post_image(http, image_bytes(), key="k")
    assert first.status_code == 500
    assert first.json()["error"].startswith("Internal server error")
    assert second.status_code == 429
    assert second.headers["retry-after"] == "2.5"
    assert [fourth.status_code, fifth.status_code, after.status_code] == [200, 503, 200]
    assert emulator.credits("k") == 8  # only the two successes paid
    stats = emulator.stats
    assert stats.faults == {"500": 1, "429": 1, "reset": 1, "503": 1}
    assert stats.rate_limited == 0  # the limiter sent none of those 429s
    assert stats.statuses == {500: 1, 429: 1, 200: 2, 503: 1}


async def test_faults_only_hit_requests_that_would_succeed(
    make_http: Callable[[Emulator], httpx.AsyncClient],
) -> None:
    emulator = faulty(Faults(script=("500",)))
    async with make_http(emulator) as http:
        assert (await post_image(http, b"junk", key="k")).status_code == 400
        assert (await post_image(http, image_bytes(), key="k")).status_code == 500
        assert (await post_image(http, image_bytes(), key="k")).status_code == 200


async def test_a_repeating_script_cycles(
    make_http: Callable[[Emulator], httpx.AsyncClient],
) -> None:
    emulator = faulty(Faults.scripted("502", "ok", repeat=True))
    async with make_http(emulator) as http:
        statuses = [(await post_image(http, image_bytes(), key="k")).status_code for _ in range(5)]
    assert statuses == [502, 200, 502, 200, 502]


def test_random_faults_follow_their_probabilities_and_the_seed() -> None:
    faults = Faults(server_error=0.2, rate_limited=0.1, reset=0.1, server_error_statuses=(502,))
    first = faulty(faults, seed=3)
    second = faulty(faults, seed=3)
    a = [first.next_fault() for _ in range(4000)]
    b = [second.next_fault() for _ in range(4000)]
    assert a == b  # reproducible
    counts = Counter(a)
    assert set(counts) == {"502", "429", "reset", "ok"}
    assert counts["502"] / 4000 == pytest.approx(0.2, abs=0.03)
    assert counts["429"] / 4000 == pytest.approx(0.1, abs=0.02)
    assert counts["ok"] / 4000 == pytest.approx(0.6, abs=0.03)
    assert [faulty(faults, seed=4).next_fault() for _ in range(50)] != a[:50]


def test_a_script_runs_before_the_probabilities() -> None:
    emulator = faulty(Faults(script=("stall", "ok"), server_error=1.0))
    assert [emulator.next_fault() for _ in range(4)][:2] == ["stall", "ok"]
    assert emulator.next_fault() in {"500", "502", "503"}


def test_fault_configuration_is_validated() -> None:
    with pytest.raises(ValueError, match="unknown fault step"):
        Faults(script=("boom",))
    with pytest.raises(ValueError, match="at most 1"):
        Faults(server_error=0.6, reset=0.6)
    with pytest.raises(ValueError, match="5xx"):
        Faults(server_error_statuses=(404,))
    with pytest.raises(TypeError):
        Faults(script="500")  # type: ignore[arg-type]


async def test_truncate_in_process_raises_what_httpx_raises_and_still_charges(
    make_http: Callable[[Emulator], httpx.AsyncClient],
) -> None:
    emulator = faulty(Faults(script=("truncate",)))
    async with make_http(emulator) as http:
        with pytest.raises(httpx.RemoteProtocolError, match="complete message body"):
            await post_image(http, image_bytes(), key="k")
    assert emulator.credits("k") == 9  # the server did the work
    assert emulator.stats.successes == 0


async def test_truncate_jpeg_sends_a_complete_response_with_a_cut_jpeg(
    make_http: Callable[[Emulator], httpx.AsyncClient],
) -> None:
    emulator = faulty(Faults(script=("truncate-jpeg",)))
    async with make_http(emulator) as http:
        response = await post_image(http, image_bytes("PNG", (200, 160)), key="k")
    assert response.status_code == 200
    assert response.headers["content-length"] == str(len(response.content))
    assert response.headers["x-remaining-credits"] == "9"
    with pytest.raises(OSError, match="truncated"), Image.open(io.BytesIO(response.content)) as im:
        im.load()


async def test_a_stall_answers_late_and_charges(
    make_http: Callable[[Emulator], httpx.AsyncClient],
) -> None:
    emulator = faulty(Faults(script=("stall",), stall_seconds=0.05))
    async with make_http(emulator) as http:
        response = await post_image(http, image_bytes(), key="k")
    assert response.status_code == 200
    assert emulator.credits("k") == 9


async def test_a_client_that_gives_up_on_a_stall_pays_nothing(
    make_http: Callable[[Emulator], httpx.AsyncClient],
) -> None:
    emulator = faulty(Faults(script=("stall",), stall_seconds=3600.0))
    async with make_http(emulator) as http:
        with anyio.move_on_after(0.05) as scope:
            await post_image(http, image_bytes(), key="k")
    assert scope.cancelled_caught
    assert emulator.credits("k") == 10
    assert emulator.stats.abandoned == 1


async def test_latency_is_drawn_from_the_seeded_distribution(
    make_http: Callable[[Emulator], httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(anyio, "sleep", fake_sleep)  # what the app calls for latency
    latency = Latency.lognormal(0.3, 0.5, maximum=2.0)
    emulator = faulty(Faults(), latency=latency, seed=11)
    async with make_http(emulator) as http:
        for _ in range(3):
            await post_image(http, image_bytes(), key="k")
        await post_image(http, b"junk", key="k")  # errors are immediate
    rng = random.Random(12)  # the latency RNG is seeded with seed + 1
    assert slept == [latency.sample(rng) for _ in range(3)]


def test_latency_distributions() -> None:
    rng = random.Random(0)
    assert Latency.constant(0.2).sample(rng) == 0.2
    uniform = [Latency.uniform(0.1, 0.3).sample(rng) for _ in range(2000)]
    assert min(uniform) >= 0.1
    assert max(uniform) <= 0.3
    assert sum(uniform) / len(uniform) == pytest.approx(0.2, abs=0.01)
    lognormal = sorted(Latency.lognormal(0.3, 0.5).sample(rng) for _ in range(2001))
    assert lognormal[1000] == pytest.approx(0.3, rel=0.08)  # the median
    capped = [Latency.lognormal(0.3, 2.0, maximum=0.5).sample(rng) for _ in range(500)]
    assert max(capped) == 0.5
    with pytest.raises(ValueError, match="median"):
        Latency.lognormal(0.0, 0.5)


# -- on a real socket ------------------------------------------------------------------------------


def post_sync(url: str, data: bytes, *, timeout: float = 10.0) -> httpx.Response:
    return httpx.post(
        url + ENDPOINT,
        headers={"x-api-key": "k"},
        files={"image_file": ("a.png", data)},
        timeout=timeout,
    )


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.loopback
def test_reset_on_loopback_is_a_connection_reset() -> None:
    with start_in_thread(faulty(Faults(script=("reset", "ok")))) as server:
        with pytest.raises(httpx.ReadError, match="reset"):
            post_sync(server.url, image_bytes())
        # The server is fine afterwards, and nothing was charged for the reset.
        assert post_sync(server.url, image_bytes()).status_code == 200
        assert server.emulator.credits("k") == 9


@pytest.mark.loopback
def test_truncate_on_loopback_closes_mid_body() -> None:
    with start_in_thread(faulty(Faults(script=("truncate",)))) as server:
        with pytest.raises(httpx.RemoteProtocolError, match="complete message body"):
            post_sync(server.url, image_bytes())
        assert server.emulator.credits("k") == 9


@pytest.mark.loopback
def test_stall_on_loopback_outlasts_the_client_timeout_and_is_not_charged() -> None:
    with start_in_thread(faulty(Faults(script=("stall",), stall_seconds=3600.0))) as server:
        with pytest.raises(httpx.ReadTimeout):
            post_sync(server.url, image_bytes(), timeout=0.3)
        # The server notices the client left and stops waiting.
        assert wait_until(lambda: server.emulator.stats.abandoned == 1)
        assert server.emulator.credits("k") == 10
