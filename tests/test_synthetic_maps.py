"""Maps known to be synthetic: how the knowledge reaches NormalMap, and the pictures made of it.

The emulator says so twice (the ``x-emulator`` response header and a comment in the JPEG);
``NormalMap.synthetic`` picks up either, and a contact sheet then relights the map's own clay,
labelled, instead of painting the synthetic outline over the photo.
"""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

import clipnormals
from clipnormals import NormalMap, contact_sheet
from clipnormals._normals.normalmap import SYNTHETIC_LABEL
from clipnormals._normals.vectors import resize_field
from clipnormals.batch import BatchConfig, run_batch
from clipnormals.emulator import Emulator, synthetic_jpeg
from clipnormals.emulator._synth import JPEG_COMMENT
from clipnormals.testing import client_for, emulator_config

from .synthetic import portrait, to_jpeg

SAMPLES = Path(__file__).resolve().parents[1] / "clipnormals" / "samples"
KEY = "sk-synthetic-test"
TILE = 128


def without_comments(jpeg: bytes) -> bytes:
    """The same JPEG with its COM segments dropped (pixels untouched)."""
    assert jpeg[:2] == b"\xff\xd8"
    out, at = bytearray(jpeg[:2]), 2
    while jpeg[at : at + 2] != b"\xff\xda":  # up to the start of scan
        length = int.from_bytes(jpeg[at + 2 : at + 4], "big")
        if jpeg[at + 1] != 0xFE:
            out += jpeg[at : at + 2 + length]
        at += 2 + length
    return bytes(out + jpeg[at:])


def photo_for(nm: NormalMap) -> Image.Image:
    """A photo the map's size: a warm gradient, nothing like a clay render."""
    width, height = nm.size
    x = np.linspace(0.0, 1.0, width)[np.newaxis, :, np.newaxis]
    pixels = 60.0 + 160.0 * x * np.array([1.0, 0.7, 0.4]) + np.zeros((height, 1, 3))
    return Image.fromarray(pixels.astype(np.uint8))


def relit_cell(sheet: Image.Image) -> NDArray[np.int16]:
    """The relit cell of a one-row contact sheet without names (tile ``TILE``)."""
    arr = np.asarray(sheet, dtype=np.int16)
    top = arr.shape[0] - TILE - 16  # the last row of tiles, a gap and the margin below it
    left = 8 + 3 * (TILE + 8)
    return arr[top : top + TILE, left : left + TILE]


def input_cell(sheet: Image.Image) -> NDArray[np.int16]:
    arr = np.asarray(sheet, dtype=np.int16)
    top = arr.shape[0] - TILE - 16
    return arr[top : top + TILE, 8 : 8 + TILE]


# -- NormalMap.synthetic ------------------------------------------------------------------------


def test_the_label_is_the_one_the_emulator_writes() -> None:
    assert JPEG_COMMENT.startswith(SYNTHETIC_LABEL)
    with Image.open(io.BytesIO(synthetic_jpeg(40, 30))) as image:
        assert image.info["comment"] == JPEG_COMMENT


def test_synthetic_comes_from_the_keyword_or_the_label() -> None:
    real = to_jpeg(portrait(64, 80).rgb, 90)
    labelled = synthetic_jpeg(64, 80)
    assert not NormalMap(real).synthetic
    assert NormalMap(real, synthetic=True).synthetic
    assert NormalMap(labelled).synthetic
    assert not NormalMap(without_comments(labelled)).synthetic
    assert NormalMap(without_comments(labelled)).size == (64, 80)  # the stripping is sound
    assert "synthetic=True" in repr(NormalMap(labelled))
    assert "synthetic" not in repr(NormalMap(real))


def test_synthetic_survives_saving_and_a_change_of_convention(tmp_path: Path) -> None:
    nm = NormalMap(synthetic_jpeg(64, 80))
    assert NormalMap.from_file(nm.save(tmp_path / "map.jpg")).synthetic
    assert nm.with_convention(flip_x=True, flip_y=False).synthetic
    told = NormalMap(without_comments(synthetic_jpeg(64, 80)), synthetic=True)
    assert told.with_convention(flip_x=False, flip_y=True).synthetic


# -- through the client -------------------------------------------------------------------------


async def _through_mock(headers: dict[str, str]) -> NormalMap:
    body = to_jpeg(portrait(32, 40).rgb, 90)  # no label in the bytes: only the header can say

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            content=body,
            headers={"content-type": "image/jpeg", "x-remaining-credits": "9", **headers},
        )

    async with clipnormals.AsyncClient(
        api_key=KEY, transport=httpx.MockTransport(handler)
    ) as client:
        return await client.surface_normals(np.zeros((40, 32, 3), dtype=np.uint8))


@pytest.mark.anyio
async def test_the_client_reads_the_emulator_header() -> None:
    assert (await _through_mock({"x-emulator": "clipnormals"})).synthetic
    assert not (await _through_mock({})).synthetic
    assert not (await _through_mock({"x-emulator": "someone-else"})).synthetic


@pytest.mark.anyio
async def test_end_to_end_an_emulator_map_is_synthetic_and_relit_as_clay() -> None:
    emulator = Emulator(emulator_config(credits=5))
    async with client_for(emulator) as client:
        nm = await client.surface_normals(SAMPLES / "astronaut.png")
    assert nm.synthetic
    with Image.open(SAMPLES / "astronaut.png") as photo:
        with_photo = contact_sheet([(photo.convert("RGB"), nm)], tile=TILE)
    clay = contact_sheet([nm], tile=TILE)  # no photo: the clay render under the sheet's light
    np.testing.assert_array_equal(relit_cell(with_photo), relit_cell(clay))


# -- the contact sheet --------------------------------------------------------------------------


def test_a_synthetic_map_is_relit_on_its_own_clay_and_says_so() -> None:
    labelled = synthetic_jpeg(96, 120)
    synthetic, plain = NormalMap(labelled), NormalMap(without_comments(labelled))
    assert synthetic.synthetic
    assert not plain.synthetic
    photo = photo_for(synthetic)
    fake = relit_cell(contact_sheet([(photo, synthetic)], tile=TILE))
    real = relit_cell(contact_sheet([(photo, plain)], tile=TILE))
    clay = relit_cell(contact_sheet([synthetic], tile=TILE))
    shown = input_cell(contact_sheet([(photo, plain)], tile=TILE))

    # The synthetic map's relit cell is the clay render, the photo nowhere in it.
    np.testing.assert_array_equal(fake, clay)
    # The same map not known to be synthetic relights the photo: off the person, the photo
    # itself shows through, where the clay render has its dark grey backdrop.
    _, mask = resize_field(plain.normals, plain.mask, (round(96 * TILE / 120), TILE))
    pad = (TILE - mask.shape[1]) // 2
    background = np.zeros((TILE, TILE), dtype=bool)
    background[:, pad : pad + mask.shape[1]] = ~mask
    background[TILE - 30 :] = False  # leave out the label strip
    assert np.abs(real[background] - shown[background]).mean() < 3
    assert np.abs(fake[background] - shown[background]).mean() > 40
    assert (fake[background] == 70).all()  # the clay render's backdrop, (70, 70, 70)

    # The label: a light strip across the picture's bottom, dark text on it; only when
    # synthetic.
    def labelled(cell: NDArray[np.int16]) -> bool:
        strip = cell[TILE - 18 : TILE - 2, pad : pad + mask.shape[1]]
        light = (strip == 225).all(axis=-1).mean()
        ink = (strip.max(axis=-1) < 100).sum()
        return bool(light > 0.5 and ink > 30)

    assert labelled(fake)
    assert not labelled(real)


# -- the batch's pictures, read back from the files it wrote --------------------------------------


@pytest.mark.anyio
async def test_batch_previews_and_sheets_of_emulator_maps_show_clay(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "camera.png").write_bytes((SAMPLES / "camera.png").read_bytes())
    config = BatchConfig(
        inputs=[inputs], output_dir=tmp_path / "out", previews=True, contact_sheets=True
    )
    emulator = Emulator(emulator_config(credits=5))
    async with client_for(emulator) as client:
        summary = await run_batch(config, client=client)
    assert summary.done == 1
    nm = NormalMap.from_file(config.output_dir / "camera.png.normals.jpg")
    assert nm.synthetic
    clay = np.asarray(contact_sheet([nm], tile=256).convert("RGB"), dtype=np.int16)
    with Image.open(config.output_dir / "contact-sheets" / "sheet-001.jpg") as saved:
        sheet = np.asarray(saved.convert("RGB"), dtype=np.int16)
    # The sheet's relit cell (names add a line above the tiles) against the clay render: the
    # same picture up to JPEG noise, nothing like the grey photo.
    left = 8 + 3 * (256 + 8)
    ours = sheet[-256 - 16 : -16, left : left + 256]
    expected = clay[-256 - 16 : -16, left : left + 256]
    assert np.abs(ours - expected).mean() < 4
