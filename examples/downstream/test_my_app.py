"""Testing my_app against the clipnormals emulator: no network, no credits spent.

The ``clipnormals_client`` fixture comes from the clipnormals pytest plugin: an AsyncClient
wired to a fresh in-process emulator (key "test-key", 100 credits, 60 requests per 0.6 s).
"""

from __future__ import annotations

import numpy as np
import pytest
from my_app import shade
from PIL import Image

import clipnormals
from clipnormals.emulator import Emulator

pytestmark = pytest.mark.anyio

PORTRAIT = Image.new("RGB", (320, 400), (200, 170, 150))


async def test_shade_keeps_the_portrait_size(clipnormals_client: clipnormals.AsyncClient) -> None:
    shaded = await shade(clipnormals_client, PORTRAIT)
    assert shaded.size == (320, 400)


async def test_light_from_above_brightens_the_top_of_the_head(
    clipnormals_client: clipnormals.AsyncClient,
) -> None:
    shaded = np.asarray(await shade(clipnormals_client, PORTRAIT, light=(0.0, 1.0, 0.2)))
    column = shaded[:, 160]
    top = int(np.flatnonzero(column)[0])  # the first lit pixel from the top: the crown
    assert column[top + 2] > 150
    assert shaded[-1].mean() < column[top + 2]  # the bottom edge faces the viewer, not up


async def test_each_portrait_costs_one_credit(
    clipnormals_client: clipnormals.AsyncClient, clipnormals_emulator: Emulator
) -> None:
    await shade(clipnormals_client, PORTRAIT)
    await shade(clipnormals_client, PORTRAIT)
    assert clipnormals_emulator.stats.credits_charged == 2
    assert clipnormals_emulator.credits("test-key") == 98


@pytest.mark.clipnormals_emulator(credits=0)
async def test_an_empty_account_is_reported(clipnormals_client: clipnormals.AsyncClient) -> None:
    with pytest.raises(clipnormals.InsufficientCreditsError):
        await shade(clipnormals_client, PORTRAIT)
