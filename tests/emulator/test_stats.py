"""The emulator's counters, and the admin endpoint that shows them."""

from __future__ import annotations

import random
from collections.abc import Callable

import httpx
import pytest

from clipnormals.emulator import Emulator, EmulatorConfig, Faults, ServerLimit, Stats

from .conftest import FakeClock, image_bytes, post_image


def brute_force_max(times: list[float], window: float) -> int:
    # Every window [s, s + window) worth checking starts at an arrival.
    return max(sum(1 for t in times if s <= t < s + window) for s in times)


def test_max_in_window_by_hand() -> None:
    stats = Stats(window=10.0)
    for t in [0.0, 1.0, 2.0, 10.0, 10.5, 11.0, 30.0]:
        stats.record_arrival("k", t)
    # (0.5, 10.5] holds 1, 2, 10, 10.5 and (1, 11] holds 2, 10, 10.5, 11: four at most.
    assert stats.max_in_window == 4
    assert stats.key("k").max_in_window == 4
    assert stats.requests == 7


def test_starts_exactly_one_window_apart_never_share_it() -> None:
    stats = Stats(window=60.0)
    for t in [0.0, 60.0, 120.0]:
        stats.record_arrival(None, t)
    assert stats.max_in_window == 1


def test_max_in_window_matches_brute_force_on_random_arrivals() -> None:
    rng = random.Random(5)
    for _ in range(20):
        t = 0.0
        times = []
        for _ in range(rng.randint(1, 150)):
            t += rng.choice([0.0, 0.25, 0.5, 1.0, rng.uniform(0, 3)])
            times.append(t)
        stats = Stats(window=5.0)
        for arrival in times:
            stats.record_arrival("k", arrival)
        assert stats.max_in_window == brute_force_max(times, 5.0)


def test_keys_are_counted_apart_and_anonymous_requests_only_in_totals() -> None:
    stats = Stats(window=10.0)
    stats.record_arrival("a", 0.0)
    stats.record_arrival("a", 1.0)
    stats.record_arrival("b", 1.0)
    stats.record_arrival(None, 1.0)
    assert stats.requests_per_key == {"a": 2, "b": 1}
    assert stats.requests == 4
    assert stats.max_in_window == 4
    assert stats.key("b").max_in_window == 1
    assert stats.key("never").requests == 0


def test_clear_starts_over() -> None:
    stats = Stats(window=10.0)
    stats.record_arrival("a", 0.0)
    stats.record_status("a", 200)
    stats.clear()
    assert stats.snapshot() == Stats(window=10.0).snapshot()
    assert stats.requests_per_key == {}


@pytest.mark.anyio
async def test_the_app_counts_everything_it_sends(
    make_http: Callable[[Emulator], httpx.AsyncClient], clock: FakeClock
) -> None:
    config = EmulatorConfig(
        keys={"a": 2, "b": 5},
        limit=ServerLimit(requests=3, per=10.0),
        faults=Faults(script=("ok", "ok", "500")),
        cost=1,
        clock=clock,
    )
    emulator = Emulator(config)
    async with make_http(emulator) as http:
        for t, key in [(0.0, "a"), (1.0, "a"), (2.0, "a"), (3.0, "a"), (4.0, "b"), (5.0, None)]:
            clock.now = t
            await post_image(http, image_bytes(), key=key)
        clock.now = 6.0
        await post_image(http, b"junk", key="b")
    stats = emulator.stats
    # a: 200, 200, 402 (no credits left), 429 (4th in 10 s).  b: 500, 400.  anonymous: 401.
    assert stats.key("a").statuses == {200: 2, 402: 1, 429: 1}
    assert stats.key("b").statuses == {500: 1, 400: 1}
    assert stats.statuses == {200: 2, 402: 1, 429: 1, 500: 1, 400: 1, 401: 1}
    assert stats.requests == 7
    assert stats.requests_per_key == {"a": 4, "b": 2}
    assert stats.rate_limited == 1
    assert stats.credits_charged == 2
    assert stats.successes == 2
    assert stats.key("a").max_in_window == 4  # arrivals, refused ones included
    assert stats.max_in_window == 7
    assert stats.faults == {"500": 1}


@pytest.mark.anyio
async def test_admin_endpoint_is_off_by_default(
    make_http: Callable[[Emulator], httpx.AsyncClient],
) -> None:
    async with make_http(Emulator(EmulatorConfig())) as http:
        assert (await http.get("/_emulator/stats")).status_code == 404
        assert (await http.post("/_emulator/reset")).status_code == 404


@pytest.mark.anyio
async def test_admin_endpoint_reads_and_changes_state(
    make_http: Callable[[Emulator], httpx.AsyncClient],
) -> None:
    emulator = Emulator(EmulatorConfig(keys={"k": 3}, admin=True, limit=None))
    async with make_http(emulator) as http:
        await post_image(http, image_bytes(), key="k")
        state = (await http.get("/_emulator/stats")).json()
        assert state["requests"] == 1
        assert state["credits"] == {"k": 2}
        assert state["keys"]["k"]["statuses"] == {"200": 1}

        state = (await http.post("/_emulator/credits", json={"key": "k", "credits": 0})).json()
        assert state["credits"] == {"k": 0}
        assert (await post_image(http, image_bytes(), key="k")).status_code == 402

        created = await http.post("/_emulator/credits", json={"key": "new", "credits": 4})
        assert created.json()["credits"] == {"k": 0, "new": 4}

        assert (await http.post("/_emulator/revoke", json={"key": "new"})).json()["revoked"] == [
            "new"
        ]
        assert (await post_image(http, image_bytes(), key="new")).status_code == 403
        await http.post("/_emulator/restore", json={"key": "new"})
        assert (await post_image(http, image_bytes(), key="new")).status_code == 200

        state = (await http.post("/_emulator/reset")).json()
        assert state["credits"] == {"k": 3}
        assert state["requests"] == 0

        bad = await http.post("/_emulator/credits", json={"key": "k", "credits": "lots"})
        assert bad.status_code == 400
        assert "error" in bad.json()
        assert (await http.post("/_emulator/revoke", json={"key": "ghost"})).status_code == 404
        assert (await http.post("/_emulator/revoke", content=b"{")).status_code == 400
