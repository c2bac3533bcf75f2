"""Fault injection with the emulator: how the client behaves when the API misbehaves.

Each test is one recipe of the "Testing with the emulator" page. Run them with
``pytest docs/recipes/test_fault_injection.py``.
"""

from __future__ import annotations

# --8<-- [start:setup]
import anyio
import pytest
from PIL import Image

import clipnormals
from clipnormals.emulator import Emulator, Faults
from clipnormals.testing import TEST_KEY

pytestmark = pytest.mark.anyio

PORTRAIT = Image.new("RGB", (96, 120), (200, 170, 150))
# --8<-- [end:setup]


# --8<-- [start:flaky]
@pytest.mark.clipnormals_emulator(faults=Faults(server_error=0.2, reset=0.1), seed=3)
async def test_a_flaky_server_costs_retries_not_results(
    clipnormals_client: clipnormals.AsyncClient, clipnormals_emulator: Emulator
) -> None:
    items = [item async for item in clipnormals_client.map([PORTRAIT] * 10)]
    assert all(item.ok for item in items)
    assert clipnormals_client.stats.retries > 0  # 5xx and resets were retried...
    assert clipnormals_emulator.stats.credits_charged == 10  # ...and only successes paid


# --8<-- [end:flaky]


# --8<-- [start:script]
@pytest.mark.clipnormals_emulator(faults=Faults.scripted("503", "reset", "ok"))
async def test_one_image_through_a_scripted_sequence(
    clipnormals_client: clipnormals.AsyncClient, clipnormals_emulator: Emulator
) -> None:
    await clipnormals_client.surface_normals(PORTRAIT)
    assert clipnormals_emulator.stats.requests == 3
    assert clipnormals_emulator.stats.faults == {"503": 1, "reset": 1}
    assert clipnormals_client.stats.retries == 2


# --8<-- [end:script]


# --8<-- [start:storm]
@pytest.mark.clipnormals_emulator(faults=Faults(script=("429",) * 3, retry_after=0.05))
async def test_a_429_storm_pauses_every_sender(
    clipnormals_client: clipnormals.AsyncClient, clipnormals_emulator: Emulator
) -> None:
    items = [item async for item in clipnormals_client.map([PORTRAIT] * 5)]
    assert all(item.ok for item in items)
    assert clipnormals_client.stats.rate_limited == 3  # retried after Retry-After
    assert clipnormals_emulator.stats.rate_limited == 0  # the server's own limiter: never hit


# --8<-- [end:storm]


# --8<-- [start:truncated]
@pytest.mark.clipnormals_emulator(faults=Faults.scripted("truncate-jpeg"))
async def test_a_truncated_map_is_retried_and_paid_twice(
    clipnormals_client: clipnormals.AsyncClient, clipnormals_emulator: Emulator
) -> None:
    nm = await clipnormals_client.surface_normals(PORTRAIT)
    assert nm.size == (96, 120)  # the retry's complete map
    assert clipnormals_client.stats.retries == 1
    assert clipnormals_emulator.stats.credits_charged == 2  # the server did the work twice


# --8<-- [end:truncated]


# --8<-- [start:credits]
@pytest.mark.clipnormals_emulator(credits=3)
async def test_running_dry_sends_nothing_the_account_cannot_pay(
    clipnormals_client: clipnormals.AsyncClient, clipnormals_emulator: Emulator
) -> None:
    items = [item async for item in clipnormals_client.map([PORTRAIT] * 5)]
    assert sum(item.ok for item in items) == 3
    refused = [item.error for item in items if not item.ok]
    assert all(isinstance(e, clipnormals.CreditBudgetError) for e in refused)
    assert 402 not in clipnormals_emulator.stats.statuses  # never asked for what it lacked


# --8<-- [end:credits]


# --8<-- [start:revoked]
async def test_a_revoked_key_halts_the_client(
    clipnormals_client: clipnormals.AsyncClient, clipnormals_emulator: Emulator
) -> None:
    await clipnormals_client.surface_normals(PORTRAIT)
    clipnormals_emulator.revoke(TEST_KEY)
    with pytest.raises(clipnormals.PermissionDeniedError):
        await clipnormals_client.surface_normals(PORTRAIT)
    with pytest.raises(clipnormals.ClientClosedError):  # no request at all this time
        await clipnormals_client.surface_normals(PORTRAIT)
    assert clipnormals_emulator.stats.requests == 2
    assert clipnormals_client.halted


# --8<-- [end:revoked]


# --8<-- [start:policies]
@pytest.mark.parametrize(
    "clipnormals_emulator",
    [{"policy": policy, "rate": (20, 0.6)} for policy in ("fixed", "sliding", "token", "nginx")],
    indirect=True,
)
async def test_no_429_whatever_way_the_server_counts(
    clipnormals_client: clipnormals.AsyncClient, clipnormals_emulator: Emulator
) -> None:
    items = [item async for item in clipnormals_client.map([PORTRAIT] * 30)]
    assert all(item.ok for item in items)
    assert clipnormals_emulator.stats.rate_limited == 0
    assert clipnormals_emulator.stats.max_in_window <= 20


# --8<-- [end:policies]


# --8<-- [start:stall]
@pytest.mark.clipnormals_emulator(faults=Faults.scripted("stall"))
async def test_a_deadline_cuts_a_stall_short_and_costs_nothing(
    clipnormals_client: clipnormals.AsyncClient, clipnormals_emulator: Emulator
) -> None:
    with pytest.raises(TimeoutError):
        with anyio.fail_after(0.2):  # in process, httpx's own timeouts do not apply
            await clipnormals_client.surface_normals(PORTRAIT)
    assert clipnormals_emulator.credits(TEST_KEY) == 100
    assert clipnormals_client.credits.reserved == 0  # the reservation was given back


# --8<-- [end:stall]
