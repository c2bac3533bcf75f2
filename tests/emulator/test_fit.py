"""The synthetic template placed on the photo's subject: off-centre subjects, tiny images, the
map's contract wherever the template stands."""

from __future__ import annotations

import functools
import io
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image, ImageDraw

from clipnormals.emulator import (
    Emulator,
    EmulatorConfig,
    Placement,
    _app,
    fit_placement,
    synthetic_jpeg,
    synthetic_normal_map,
)
from clipnormals.emulator._fit import GRID, MIN_PIXELS
from clipnormals.emulator._validate import inspect_image

from .conftest import SAMPLES, image_bytes, post_image

Box = tuple[int, int, int, int]

# (frame, head centre x, head top, head width, torso shift in head widths): every subject off
# the frame's middle, some far off, small and large, one leaning.
SUBJECTS = [
    ((480, 360), 110, 60, 70, 0.0),
    ((480, 360), 370, 90, 60, 0.3),
    ((300, 400), 90, 120, 50, -0.2),
    ((640, 480), 420, 40, 110, 0.0),
    ((400, 400), 120, 150, 40, 0.0),
    ((360, 480), 250, 30, 120, 0.0),
]
BACKDROPS = ["flat", "gradient", "noise", "outdoor"]


def photo_of(
    size: tuple[int, int],
    centre_x: float,
    head_top: float,
    head_width: float,
    shift: float,
    backdrop: str,
) -> tuple[Image.Image, NDArray[np.bool_]]:
    """A head (hair, face), a neck and shoulders leaving the frame at the bottom, on a backdrop;
    and the subject's own mask."""
    width, height = size
    rng = np.random.default_rng(3)
    y = np.linspace(0.0, 1.0, height)[:, np.newaxis, np.newaxis]
    if backdrop == "flat":
        pixels = np.full((height, width, 3), (228.0, 226.0, 220.0))
    elif backdrop == "gradient":  # a studio backdrop, darker towards the floor
        pixels = (1 - y) * np.array([235.0, 240.0, 250.0]) + y * np.array([150.0, 160.0, 185.0])
        pixels = np.broadcast_to(pixels, (height, width, 3))
    elif backdrop == "noise":
        pixels = np.full((height, width, 3), (200.0, 205.0, 210.0))
        pixels = pixels + rng.normal(0.0, 12.0, (height, width, 1))
    else:  # sky over grass: the grass reaches the sides and the bottom, like the body
        pixels = np.where(y < 0.55, np.array([205.0, 215.0, 230.0]), np.array([120, 140, 90.0]))
        pixels = pixels + rng.normal(0.0, 8.0, (height, width, 1))
    photo = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    mask = Image.new("L", size, 0)
    head_height = 1.3 * head_width
    shoulders = head_top + 1.45 * head_width
    torso_x = centre_x + shift * head_width
    for draw, colours in (
        (ImageDraw.Draw(photo), ((40, 50, 80), (200, 150, 120), (205, 155, 125), (80, 55, 35))),
        (ImageDraw.Draw(mask), (255, 255, 255, 255)),
    ):
        torso, neck, face, hair = colours
        draw.rounded_rectangle(
            (torso_x - 1.3 * head_width, shoulders, torso_x + 1.3 * head_width, height + 99),
            radius=0.6 * head_width,
            fill=torso,
        )
        neck_box = (centre_x - 0.3 * head_width, head_top + 0.8 * head_height)
        draw.rectangle((*neck_box, centre_x + 0.3 * head_width, shoulders + 5), fill=neck)
        left, right = centre_x - head_width / 2, centre_x + head_width / 2
        draw.ellipse((left, head_top, right, head_top + head_height), fill=face)
        draw.ellipse((left, head_top, right, head_top + 0.45 * head_height), fill=hair)
    return photo, np.asarray(mask) > 0


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def box_of(mask: NDArray[np.bool_]) -> Box:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def iou(a: Box, b: Box) -> float:
    across = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    down = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = across * down

    def area(r: Box) -> int:
        return (r[2] - r[0]) * (r[3] - r[1])

    return inter / (area(a) + area(b) - inter)


@functools.cache
def default_mask(width: int, height: int) -> NDArray[np.bool_]:
    return synthetic_normal_map(width, height).mask


@pytest.mark.parametrize("backdrop", BACKDROPS)
@pytest.mark.parametrize("subject", SUBJECTS, ids=lambda s: f"{s[0][0]}x{s[0][1]}@{s[1]},{s[2]}")
def test_the_silhouette_covers_an_off_centre_subject(
    subject: tuple[tuple[int, int], int, int, int, float], backdrop: str
) -> None:
    size, centre_x, head_top, head_width, shift = subject
    photo, truth = photo_of(size, centre_x, head_top, head_width, shift, backdrop)
    placement = fit_placement(png(photo))
    assert placement is not None
    fitted = synthetic_normal_map(*size, placement=placement)
    assert iou(box_of(fitted.mask), box_of(truth)) > 0.75
    # The centred template misses these subjects: the fit is what finds them.
    assert iou(box_of(default_mask(*size)), box_of(truth)) < 0.6
    # And the head is where the photo's head is.
    head_centre = placement.left + placement.side / 2
    assert abs(head_centre - centre_x) < 0.1 * head_width
    assert abs(placement.top + 0.145 * placement.side - head_top) < 0.15 * head_width


def test_the_bundled_portraits_get_the_head_over_the_head() -> None:
    # Hand-measured from the pictures: the astronaut's hair spans x 150-300 from y 14; the
    # cameraman's head x 155-270 from y 62, his coat left of it.
    for name, (centre_x, head_top, head_width) in {
        "astronaut.png": (225, 14, 150),
        "camera.png": (212, 62, 115),
    }.items():
        placement = fit_placement((SAMPLES / name).read_bytes())
        assert placement is not None, name
        assert abs(placement.left + placement.side / 2 - centre_x) < 0.2 * head_width, name
        assert abs(placement.top + 0.145 * placement.side - head_top) < 0.2 * head_width, name
        assert 0.75 < 0.33 * placement.side / head_width < 1.3, name
    camera = fit_placement((SAMPLES / "camera.png").read_bytes())
    assert camera is not None
    assert camera.lean < -0.05  # the coat, not the tripod


def test_the_fit_is_mirror_symmetric_and_deterministic() -> None:
    with Image.open(SAMPLES / "astronaut.png") as image:
        photo = image.convert("RGB")
    found = fit_placement(png(photo))
    mirrored = fit_placement(png(photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    assert found is not None
    assert mirrored is not None
    assert found == fit_placement(png(photo))
    assert found.left + found.side / 2 == pytest.approx(512 - (mirrored.left + mirrored.side / 2))
    assert found.side == pytest.approx(mirrored.side)
    assert found.lean == pytest.approx(-mirrored.lean)


def test_jpeg_uploads_are_fitted_from_a_reduced_decode() -> None:
    photo, truth = photo_of((1600, 1200), 500, 250, 260, 0.0, "noise")
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=90)
    placement = fit_placement(buffer.getvalue())
    assert placement is not None
    fitted = synthetic_normal_map(1600, 1200, placement=placement)
    assert iou(box_of(fitted.mask), box_of(truth)) > 0.75


@pytest.mark.parametrize(
    "data",
    [
        image_bytes("PNG", (64, 48)),  # tiny: not worth it
        image_bytes("PNG", (127, 128)),  # one pixel under MIN_PIXELS
        image_bytes("PNG", (640, 480)),  # flat: nothing to find
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,  # undecodable: no estimate, no exception
    ],
    ids=["tiny", "just-under", "flat", "corrupt"],
)
def test_no_estimate_keeps_the_default_placement(data: bytes) -> None:
    assert MIN_PIXELS > 127 * 128
    assert fit_placement(data) is None


# -- the map wherever the template stands ---------------------------------------------------


@pytest.mark.parametrize(
    "placement",
    [
        Placement(left=-120.0, top=-20.0, side=330.0, lean=-0.2),  # torso past the left side
        Placement(left=200.0, top=60.0, side=200.0, lean=0.15),  # far right
        Placement(left=-300.0, top=-150.0, side=900.0),  # a close-up past both sides
    ],
)
def test_a_placed_map_keeps_the_contract(placement: Placement) -> None:
    m = synthetic_normal_map(400, 300, placement=placement)
    assert m.rgb.shape == (300, 400, 3)
    assert (m.rgb[~m.mask] == (128, 128, 255)).all()
    assert m.mask[-1].any()
    np.testing.assert_allclose(np.linalg.norm(m.normals, axis=2), 1.0, atol=1e-5)
    assert (m.normals[..., 2] >= 0).all()


def test_a_torso_past_the_side_runs_on_out_of_view() -> None:
    # The torso (not the head) is cut by the left edge of the frame: its surface must go on
    # smoothly there, not flatten towards the viewer in the last columns (a seam, and a notch
    # in the mask).
    placement = Placement(left=-30.0, top=20.0, side=300.0, lean=-0.2)
    m = synthetic_normal_map(400, 300, placement=placement)
    rows = np.flatnonzero(m.mask[:, 0])
    rows = rows[rows >= rows[0] + 10]  # away from where the outline meets the edge
    assert len(rows) > 40
    edge, inside = m.normals[rows, 0], m.normals[rows, 3]
    assert np.abs(edge - inside).max() < 0.08


def test_the_default_map_is_the_centred_placement_and_unchanged_for_tiny_sizes() -> None:
    m = synthetic_normal_map(300, 420)
    placed = synthetic_normal_map(300, 420, placement=Placement.centred(300, 420))
    # The same template: only the 1/1024 rounding of the placement may move the outline.
    assert (m.mask != placed.mask).mean() < 0.002
    assert synthetic_jpeg(64, 48) is synthetic_jpeg(64, 48, placement=None)


def test_placements_are_cached_by_their_rounded_key() -> None:
    a = Placement(left=10.0, top=5.0, side=200.0, lean=0.1)
    near = Placement(left=10.01, top=5.0, side=200.0, lean=0.1)
    other = Placement(left=40.0, top=5.0, side=200.0, lean=0.1)
    assert a.key(320, 240) == near.key(320, 240)
    assert synthetic_jpeg(320, 240, placement=a) is synthetic_jpeg(320, 240, placement=near)
    assert synthetic_jpeg(320, 240, placement=a) != synthetic_jpeg(320, 240, placement=other)


@pytest.mark.parametrize(
    "options",
    [{"side": 0.0}, {"side": -1.0}, {"lean": 0.3}, {"left": float("nan")}],
)
def test_placement_is_validated(options: dict[str, float]) -> None:
    values = {"left": 0.0, "top": 0.0, "side": 100.0, "lean": 0.0, **options}
    with pytest.raises(ValueError, match="must be"):
        Placement(**values)


# -- through the emulator ---------------------------------------------------------------------


def mask_of(jpeg: bytes) -> NDArray[np.bool_]:
    with Image.open(io.BytesIO(jpeg)) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    return np.abs(rgb - np.array([128, 128, 255])).max(axis=2) > 40


@pytest.mark.anyio
async def test_the_emulator_places_its_map_on_the_upload(
    make_http: Callable[[Emulator], httpx.AsyncClient],
) -> None:
    photo, truth = photo_of((480, 360), 370, 90, 60, 0.3, "gradient")
    emulator = Emulator(EmulatorConfig(keys={"k": 5}, limit=None))
    async with make_http(emulator) as http:
        response = await post_image(http, png(photo), key="k")
    assert response.status_code == 200
    assert iou(box_of(mask_of(response.content)), box_of(truth)) > 0.75
    placement = fit_placement(png(photo))
    assert response.content == synthetic_jpeg(480, 360, quality=90, placement=placement)


@pytest.mark.anyio
async def test_tiny_and_canned_uploads_are_never_fitted(
    make_http: Callable[[Emulator], httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(data: bytes) -> None:
        raise AssertionError("fit_placement called")

    monkeypatch.setattr(_app, "fit_placement", refuse)
    photo, _ = photo_of((480, 360), 370, 90, 60, 0.3, "flat")
    plain = Emulator(EmulatorConfig(keys={"k": 5}, limit=None))
    canned = Emulator(EmulatorConfig(keys={"k": 5}, limit=None, synth="canned"))
    async with make_http(plain) as http:
        tiny = await post_image(http, image_bytes("PNG", (64, 48)), key="k")
    async with make_http(canned) as http:
        large = await post_image(http, png(photo), key="k")
    assert tiny.status_code == large.status_code == 200
    assert tiny.content == synthetic_jpeg(64, 48)  # the centred template, as ever


@pytest.mark.anyio
async def test_a_png_is_fitted_from_what_the_checks_decoded(
    make_http: Callable[[Emulator], httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Decoding a 25 MP PNG costs a third of a second: the fit must not do it a second time.
    seen: list[object] = []

    def recording(
        photo: bytes | Image.Image, *, size: tuple[int, int] | None = None
    ) -> Placement | None:
        seen.append(photo)
        return fit_placement(photo, size=size)

    monkeypatch.setattr(_app, "fit_placement", recording)
    photo, truth = photo_of((480, 360), 370, 90, 60, 0.3, "flat")
    emulator = Emulator(EmulatorConfig(keys={"k": 5}, limit=None))
    async with make_http(emulator) as http:
        response = await post_image(http, png(photo), key="k")
    assert len(seen) == 1
    assert isinstance(seen[0], Image.Image)
    assert max(seen[0].size) == GRID
    assert iou(box_of(mask_of(response.content)), box_of(truth)) > 0.75


def test_the_checks_keep_a_small_copy_only_when_asked() -> None:
    data = png(photo_of((480, 360), 370, 90, 60, 0.3, "flat")[0])
    options = {"max_pixels": 25_000_000, "max_file_bytes": 30_000_000}
    kept = inspect_image(data, keep=GRID, **options)
    assert kept.pixels is not None
    assert kept.pixels.size == (GRID, 48)
    assert inspect_image(data, **options).pixels is None
    assert inspect_image(data, keep=GRID, verify=False, **options).pixels is None
    assert kept == inspect_image(data, **options)  # the copy is not part of what was learned
