"""The synthetic normal map: exact background, unit normals, the +X right / +Y up convention."""

from __future__ import annotations

import functools
import io
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from PIL import Image

from clipnormals.emulator import (
    Emulator,
    EmulatorConfig,
    SynthMap,
    synthetic_jpeg,
    synthetic_normal_map,
)
from clipnormals.emulator._synth import JPEG_COMMENT

from .conftest import image_bytes, post_image

SIZES = [(512, 512), (300, 420), (640, 360), (37, 91)]


@functools.cache
def synth(width: int, height: int) -> SynthMap:
    # Built once per size for the whole module: the tests only read it.
    return synthetic_normal_map(width, height)


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_background_is_exactly_128_128_255_before_encoding(width: int, height: int) -> None:
    m = synth(width, height)
    assert m.rgb.shape == (height, width, 3)
    assert m.rgb.dtype == np.uint8
    background = m.rgb[~m.mask]
    assert len(background) > 0.2 * width * height
    assert (background == (128, 128, 255)).all()
    for corner in (m.rgb[0, 0], m.rgb[0, -1]):
        assert tuple(corner) == (128, 128, 255)


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_the_person_is_a_sizeable_region_touching_the_bottom(width: int, height: int) -> None:
    m = synth(width, height)
    assert 0.1 < m.mask.mean() < 0.6
    assert m.mask[-1].any()  # the shoulders leave the frame at the bottom
    assert not m.mask[0].any()  # room above the head


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_normals_are_unit_vectors_and_encoded_as_documented(width: int, height: int) -> None:
    m = synth(width, height)
    lengths = np.linalg.norm(m.normals, axis=2)
    np.testing.assert_allclose(lengths, 1.0, atol=1e-5)
    assert (m.normals[..., 2] >= 0).all()  # nothing faces away from the viewer
    encoded = np.rint((m.normals[m.mask] + 1.0) * 127.5).astype(np.uint8)
    np.testing.assert_array_equal(m.rgb[m.mask], encoded)
    decoded = m.rgb.astype(np.float64) / 127.5 - 1.0
    np.testing.assert_allclose(np.linalg.norm(decoded, axis=2), 1.0, atol=0.02)


def outline(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mask pixels with a background 4-neighbour, and the outward direction there
    (X right, Y up), from which neighbours are background."""
    padded = np.pad(mask, 1, constant_values=False)
    left = ~padded[1:-1, :-2]
    right = ~padded[1:-1, 2:]
    up = ~padded[:-2, 1:-1]
    down = ~padded[2:, 1:-1]
    # Ignore the bottom edge of the frame: the body continues out of view there.
    down[-1] = False
    edge = mask & (left | right | up | down)
    out_x = right.astype(float) - left.astype(float)
    out_y = up.astype(float) - down.astype(float)
    return edge & ((out_x != 0) | (out_y != 0)), out_x, out_y


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_normals_point_outwards_at_the_outline(width: int, height: int) -> None:
    m = synth(width, height)
    edge, out_x, out_y = outline(m.mask)
    dot = m.normals[..., 0] * out_x + m.normals[..., 1] * out_y
    assert edge.sum() > 20
    assert (dot[edge] > 0).mean() > 0.99
    # Steep there: the XY part dominates, as at the rim of a rounded body.
    xy = np.hypot(m.normals[..., 0], m.normals[..., 1])
    assert np.median(xy[edge]) > 0.7


def test_plus_y_is_up_and_plus_x_is_right() -> None:
    m = synth(400, 400)
    centre = 200
    rows = np.flatnonzero(m.mask[:, centre])
    top_of_head = m.normals[rows[0], centre]
    assert top_of_head[1] > 0.8  # the top of the head faces up: +Y
    assert abs(top_of_head[0]) < 0.1
    head_row = rows[0] + 40
    cols = np.flatnonzero(m.mask[head_row])
    assert m.normals[head_row, cols[0], 0] < -0.8  # left edge faces left: -X
    assert m.normals[head_row, cols[-1], 0] > 0.8  # right edge faces right: +X
    assert m.normals[head_row, centre, 2] > 0.9  # the middle faces the viewer


def test_the_map_is_symmetric_left_to_right() -> None:
    m = synth(400, 300)
    np.testing.assert_array_equal(m.mask, m.mask[:, ::-1])
    np.testing.assert_allclose(m.normals[..., 0], -m.normals[:, ::-1, 0], atol=1e-4)


def test_jpeg_is_the_right_size_labelled_and_close_to_the_map() -> None:
    data = synthetic_jpeg(320, 240)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG"
        assert image.size == (320, 240)
        assert image.info.get("comment") == JPEG_COMMENT
        decoded = np.asarray(image.convert("RGB"), dtype=np.int16)
    exact = synth(320, 240)
    far_background = exact.rgb[:40, :40]
    assert np.abs(decoded[:40, :40] - far_background).max() <= 2
    assert np.abs(decoded - exact.rgb).mean() < 3


def test_jpegs_are_cached_per_size() -> None:
    assert synthetic_jpeg(123, 77) is synthetic_jpeg(123, 77)
    assert synthetic_jpeg(123, 77) is not synthetic_jpeg(77, 123)


@pytest.mark.parametrize(("width", "height"), [(1, 1), (2, 3), (3000, 2)])
def test_degenerate_sizes_still_work(width: int, height: int) -> None:
    m = synth(width, height)
    assert m.rgb.shape == (height, width, 3)
    np.testing.assert_allclose(np.linalg.norm(m.normals, axis=2), 1.0, atol=1e-5)


@pytest.mark.anyio
async def test_canned_mode_returns_one_fixed_small_map(
    make_http: Callable[[Emulator], httpx.AsyncClient],
) -> None:
    config = EmulatorConfig(keys={"k": 5}, synth="canned", canned_size=(48, 32), limit=None)
    async with make_http(Emulator(config)) as http:
        first = await post_image(http, image_bytes("PNG", (640, 480)), key="k")
        second = await post_image(http, image_bytes("PNG", (100, 900)), key="k")
    assert first.content == second.content
    with Image.open(io.BytesIO(first.content)) as image:
        assert image.size == (48, 32)
