"""NormalMap: decoding, the person mask, the sign convention, mapping back, export."""

from __future__ import annotations

import io
import struct
import threading
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from clipnormals import InvalidImageError, NormalMap, PrepareOptions
from clipnormals._normals.mask import Runs, person_mask
from clipnormals._normals.vectors import decode_normals, detect_convention, reorient
from clipnormals.images import prepare_image

from .synthetic import (
    BACKGROUND,
    Portrait,
    encode,
    height_field_normals,
    portrait,
    ring,
    smooth_region,
    sphere,
    to_jpeg,
    to_png,
)


def angles_deg(a: NDArray[np.floating], b: NDArray[np.floating]) -> NDArray[np.float64]:
    cos = np.clip((np.asarray(a, np.float64) * np.asarray(b, np.float64)).sum(-1), -1.0, 1.0)
    return np.asarray(np.degrees(np.arccos(cos)), dtype=np.float64)


def iou(a: NDArray[np.bool_], b: NDArray[np.bool_]) -> float:
    return float((a & b).sum() / (a | b).sum())


@dataclass(frozen=True)
class FakePrepared:
    """What NormalMap reads of clipnormals.PreparedImage."""

    size: tuple[int, int]
    display_size: tuple[int, int]
    orientation: int = 1

    @property
    def scale(self) -> float:
        return self.size[0] / self.display_size[0]


def with_prepared(data: bytes, prepared: FakePrepared, **flips: bool) -> NormalMap:
    """A map as the client builds it, with a stand-in for the preparation record."""
    return NormalMap(data, prepared=prepared, **flips)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def scene() -> Portrait:
    return portrait(512, 640)


# --------------------------------------------------------------------------- basics


def test_attributes_and_repr_carry_no_pixels() -> None:
    data = to_jpeg(encode(*sphere(40)), 90)
    nm = NormalMap(data, credits_remaining=99, credits_consumed=1)
    assert nm.jpeg is data or nm.jpeg == data
    assert nm.size == (40, 40)
    assert (nm.credits_remaining, nm.credits_consumed, nm.prepared) == (99, 1, None)
    assert repr(nm) == "NormalMap(40x40, credits_remaining=99, credits_consumed=1)"
    assert repr(NormalMap(data, flip_y=True)) == "NormalMap(40x40, flip_y=True)"


def test_arrays_are_cached_and_read_only() -> None:
    nm = NormalMap(to_jpeg(encode(*sphere(40)), 90))
    assert nm.rgb is nm.rgb
    assert nm.normals is nm.normals
    assert nm.mask is nm.mask
    assert nm.rgb.dtype == np.uint8
    assert nm.normals.dtype == np.float32
    assert nm.mask.dtype == np.bool_
    assert nm.normals.shape == (40, 40, 3)
    with pytest.raises(ValueError, match="read-only"):
        nm.normals[0, 0, 0] = 2.0
    with pytest.raises(ValueError, match="read-only"):
        nm.mask[0, 0] = True


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\xff\xd8\xff\xe0garbage"])
def test_unreadable_bytes_are_an_invalid_image(data: bytes) -> None:
    with pytest.raises(InvalidImageError, match="normal map"):
        NormalMap(data)


def test_truncated_jpeg_fails_on_decode_with_a_typed_error() -> None:
    data = to_jpeg(encode(*sphere(64)), 90)
    nm = NormalMap(data[: len(data) // 2])  # the header is intact
    assert nm.size == (64, 64)
    with pytest.raises(InvalidImageError, match="could not be decoded"):
        _ = nm.normals


def test_text_is_not_accepted_as_bytes() -> None:
    with pytest.raises(TypeError, match="bytes"):
        NormalMap("portrait.jpg")  # type: ignore[arg-type]


def test_from_file_reads_a_saved_map(tmp_path: Path) -> None:
    path = tmp_path / "map.jpg"
    path.write_bytes(to_jpeg(encode(*sphere(32)), 90))
    nm = NormalMap.from_file(path, flip_y=True)
    assert nm.jpeg == path.read_bytes()
    assert nm.flip_y
    assert not nm.flip_x


# --------------------------------------------------------------------------- decoding


def test_decoding_formula_and_unit_length() -> None:
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    rgb[0, 0] = (128, 128, 128)  # no direction at all
    got = decode_normals(rgb)
    raw = (rgb.astype(np.float64) - 128.0) / 127.0
    length = np.linalg.norm(raw, axis=-1, keepdims=True)
    want = np.divide(raw, length, out=np.zeros_like(raw), where=length > 0)
    want[0, 0] = (0.0, 0.0, 1.0)
    np.testing.assert_allclose(got, want, atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=2e-6)


def test_background_decodes_to_exactly_plus_z() -> None:
    rgb = np.empty((8, 8, 3), np.uint8)
    rgb[:] = BACKGROUND
    nm = NormalMap(to_png(rgb))
    assert np.array_equal(nm.normals, np.broadcast_to(np.array([0, 0, 1], np.float32), (8, 8, 3)))
    assert not nm.mask.any()


def test_flips_negate_x_and_y_only() -> None:
    data = to_jpeg(encode(*sphere(48)), 90)
    plain = NormalMap(data).normals
    both = NormalMap(data, flip_x=True, flip_y=True).normals
    np.testing.assert_array_equal(both[..., 0], -plain[..., 0])
    np.testing.assert_array_equal(both[..., 1], -plain[..., 1])
    np.testing.assert_array_equal(both[..., 2], plain[..., 2])


@pytest.mark.parametrize(("quality", "margin"), [(75, 5), (95, 2)])
def test_round_trip_accuracy(scene: Portrait, quality: int, margin: int) -> None:
    """Median error over the whole person; p99 where JPEG's 8x8 blocks can hold the surface.

    Within a few pixels of the outline and of creases (chin over neck, arms over torso) JPEG
    blurs a step of up to 90 degrees; no decoder gets those pixels back.
    """
    truth = scene
    nm = NormalMap(truth.jpeg(quality))
    err = angles_deg(nm.normals, truth.normals)
    assert np.median(err[truth.mask]) <= 1.0
    smooth = smooth_region(truth.normals, truth.mask, margin)
    assert smooth.sum() > 0.8 * truth.mask.sum()
    assert np.percentile(err[smooth], 99) <= 5.0


# --------------------------------------------------------------------------- mask


@pytest.mark.parametrize("quality", [75, 95])
def test_mask_matches_ground_truth(scene: Portrait, quality: int) -> None:
    nm = NormalMap(scene.jpeg(quality))
    assert iou(nm.mask, scene.mask) >= 0.98


@pytest.mark.parametrize(("flip_x", "flip_y"), [(True, False), (False, True), (True, True)])
def test_mask_does_not_depend_on_the_convention(flip_x: bool, flip_y: bool) -> None:
    truth = portrait(512, 640, flip_x=flip_x, flip_y=flip_y)
    assert iou(NormalMap(truth.jpeg(75)).mask, truth.mask) >= 0.98


def test_body_cut_off_by_the_frame_keeps_its_face_on_front(scene: Portrait) -> None:
    mask = NormalMap(scene.jpeg(75)).mask
    height, width = mask.shape
    # The torso's front faces the camera and reaches the bottom edge: it looks like background
    # to a threshold, yet must be filled, not opened to the frame.
    centre = slice(width // 2 - 40, width // 2 + 40)
    assert mask[height - 30 :, centre].all()
    # Between each arm and the torso, real background opens to the same edge and stays out.
    pockets = ~scene.mask[height - 30 :]
    person_cols = scene.mask[height - 1]
    inner = np.flatnonzero(person_cols)
    assert pockets[:, inner[0] : inner[-1]].any()  # there are pockets to get right
    assert iou(mask[height - 30 :], scene.mask[height - 30 :]) >= 0.97


def test_face_on_hole_is_filled_but_background_seen_through_a_ring_is_not() -> None:
    normals, truth = ring(200, radius=60, tube=25)
    nm = NormalMap(to_jpeg(encode(normals, truth), 75))
    assert iou(nm.mask, truth) >= 0.97
    # the tube's face-on crest is the background colour; the middle is real background
    crest = np.abs(np.hypot(*np.mgrid[-100:100, -100:100] + 0.5) - 60) < 3
    assert nm.mask[crest].all()
    assert not nm.mask[80:120, 80:120].any()


def test_speckles_are_dropped_and_an_empty_map_has_no_person() -> None:
    rgb = np.empty((120, 160, 3), np.uint8)
    rgb[:] = BACKGROUND
    assert not person_mask(rgb).any()
    rgb[10:12, 10:12] = (40, 128, 200)  # a 2x2 speckle far off the background colour
    rgb[50:56, 70:76] = (40, 128, 200)  # a 6x6 blob, still tiny next to a portrait
    assert not person_mask(rgb, min_blob=64).any()


def test_a_person_filling_the_frame_is_all_person() -> None:
    rgb = np.empty((50, 70, 3), np.uint8)
    rgb[:] = (200, 160, 220)
    assert person_mask(rgb).all()


def test_run_labels_agree_with_a_flood_fill() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        image = rng.random((23, 31)) < rng.uniform(0.3, 0.7)
        runs = Runs.of(image)
        labels, count = runs.labels()
        painted = np.full(image.shape, -1)
        for lab, r, s, e in zip(labels, runs.row, runs.start, runs.end, strict=True):
            painted[r, s:e] = lab
        assert np.array_equal(painted >= 0, image)
        assert count == _flood_fill_count(image)
        # same label exactly when 4-connected
        for r, c in zip(*np.nonzero(image[:, :-1] & image[:, 1:]), strict=True):
            assert painted[r, c] == painted[r, c + 1]
        for r, c in zip(*np.nonzero(image[:-1] & image[1:]), strict=True):
            assert painted[r, c] == painted[r + 1, c]
        gaps = runs.complement(image.shape[0])
        assert np.array_equal(gaps.paint(np.ones(len(gaps), bool), image.shape), ~image)


def _flood_fill_count(image: NDArray[np.bool_]) -> int:
    seen = np.zeros(image.shape, bool)
    count = 0
    height, width = image.shape
    for start in zip(*np.nonzero(image), strict=True):
        if seen[start]:
            continue
        count += 1
        queue = deque([start])
        seen[start] = True
        while queue:
            r, c = queue.popleft()
            for rr, cc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if 0 <= rr < height and 0 <= cc < width and image[rr, cc] and not seen[rr, cc]:
                    seen[rr, cc] = True
                    queue.append((rr, cc))
    return count


# --------------------------------------------------------------------------- convention


@pytest.mark.parametrize("quality", [75, 95])
@pytest.mark.parametrize(
    ("flip_x", "flip_y"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_detect_convention_finds_all_four_sign_combinations(
    flip_x: bool, flip_y: bool, quality: int
) -> None:
    server = portrait(512, 640, flip_x=flip_x, flip_y=flip_y)
    found = NormalMap(server.jpeg(quality)).detect_convention()
    assert (found.flip_x, found.flip_y) == (flip_x, flip_y)
    assert found.reliable
    assert found.confidence > 0.9


def test_detected_flags_are_about_the_raw_map_whatever_the_objects_flips() -> None:
    server = portrait(256, 320, flip_y=True)
    nm = NormalMap(server.jpeg(90), flip_x=True)  # a wrong guess
    found = nm.detect_convention()
    assert (found.flip_x, found.flip_y) == (False, True)
    fixed = nm.with_convention(flip_x=found.flip_x, flip_y=found.flip_y)
    truth_err = angles_deg(fixed.normals, server.normals)[server.mask]
    assert np.median(truth_err) < 1.5


def test_outline_cut_by_the_frame_is_ignored() -> None:
    # Keep only the lower left quarter: the torso is cut by the left and bottom edges, where
    # the mask ends but the surface goes on and its normals do not point out of the frame.
    server = portrait(512, 640)
    crop = server.rgb[320:, :256]
    found = detect_convention(crop, person_mask(crop))
    assert (found.flip_x, found.flip_y) == (False, False)
    assert found.reliable


def test_with_convention_reuses_what_was_decoded() -> None:
    nm = NormalMap(to_jpeg(encode(*sphere(48)), 90))
    _ = nm.normals, nm.mask
    other = nm.with_convention(flip_x=True, flip_y=False)
    assert other.rgb is nm.rgb
    assert other.mask is nm.mask
    np.testing.assert_array_equal(other.normals[..., 0], -nm.normals[..., 0])
    np.testing.assert_array_equal(other.normals[..., 1:], nm.normals[..., 1:])
    assert other.jpeg == nm.jpeg
    assert other.flip_x
    assert not nm.flip_x


def test_no_person_means_no_evidence() -> None:
    rgb = np.empty((40, 40, 3), np.uint8)
    rgb[:] = BACKGROUND
    found = NormalMap(to_png(rgb)).detect_convention()
    assert found.samples == 0
    assert found.confidence == 0.0
    assert not found.reliable


# --------------------------------------------------------------------------- mapping back


def bumpy_height(width: int, height: int) -> NDArray[np.float64]:
    """A tilted, asymmetric surface: nowhere facing the camera, so all of it is person."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    bump = 9.0 * np.exp(-((cols - 0.3 * width) ** 2 + (rows - 0.35 * height) ** 2) / 60.0)
    return np.asarray(0.9 * cols + 0.4 * rows + bump, dtype=np.float64)


_EXIF_METHOD = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _as_displayed(stored: NDArray[np.floating], orientation: int) -> NDArray[np.float64]:
    """What a viewer shows for a stored image with this EXIF orientation (Pillow's table)."""
    if orientation == 1:
        return np.asarray(stored, dtype=np.float64)
    image = Image.fromarray(stored.astype(np.float32))
    return np.asarray(image.transpose(_EXIF_METHOD[orientation]), dtype=np.float64)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_reorient_moves_pixels_like_pillow_and_round_trips(orientation: int) -> None:
    rng = np.random.default_rng(orientation)
    stored = rng.normal(size=(5, 7, 3)).astype(np.float32)
    stored /= np.linalg.norm(stored, axis=-1, keepdims=True)
    mask = rng.random((5, 7)) < 0.5
    shown, shown_mask = reorient(stored, mask, orientation, to="display")
    # Z does not turn with the picture, so it shows where every pixel went.
    np.testing.assert_array_equal(shown[..., 2], _as_displayed(stored[..., 2], orientation))
    np.testing.assert_array_equal(
        shown_mask, _as_displayed(mask.astype(np.float64), orientation) > 0.5
    )
    back, back_mask = reorient(shown, shown_mask, orientation, to="stored")
    np.testing.assert_array_equal(back, stored)
    np.testing.assert_array_equal(back_mask, mask)
    with pytest.raises(ValueError, match=r"1\.\.8"):
        reorient(stored, mask, 9, to="stored")


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize(("flip_x", "flip_y"), [(False, False), (True, True)])
def test_undoing_exif_orientation_turns_pixels_and_vectors(
    orientation: int, flip_x: bool, flip_y: bool
) -> None:
    stored_height = bumpy_height(48, 32)
    shown = height_field_normals(_as_displayed(stored_height, orientation))
    full = np.ones(shown.shape[:2], bool)
    data = to_png(encode(shown, full, flip_x=flip_x, flip_y=flip_y))
    size = (shown.shape[1], shown.shape[0])
    nm = with_prepared(data, FakePrepared(size, size, orientation), flip_x=flip_x, flip_y=flip_y)
    got = nm.normals_at_source(stored_orientation=True)
    want = height_field_normals(stored_height)
    assert got.shape == want.shape
    assert nm.mask_at_source(stored_orientation=True).all()
    assert angles_deg(got, want).max() < 0.8  # 8-bit quantisation only


def test_resizing_back_to_the_display_size() -> None:
    small_normals, small_mask = sphere(100, radius=40)
    big_normals, big_mask = sphere(200, radius=80)
    prepared = FakePrepared((100, 100), (200, 200))
    nm = with_prepared(to_png(encode(small_normals, small_mask)), prepared)
    assert nm.source_size == (200, 200)
    got, mask = nm.normals_at_source(), nm.mask_at_source()
    assert got.shape == (200, 200, 3)
    assert mask.shape == (200, 200)
    assert iou(mask, big_mask) >= 0.98
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-5)
    err = angles_deg(got, big_normals)[mask & big_mask]
    assert np.median(err) < 1.0
    # mask-aware: the outline keeps the sphere's grazing normals instead of fading to +Z
    rim = big_mask & ~np.roll(big_mask, 3, axis=1) & mask
    assert np.median(got[rim][:, 2]) < 0.45
    assert np.array_equal(
        got[~mask], np.broadcast_to(np.array([0, 0, 1], np.float32), got[~mask].shape)
    )


def test_without_preparation_the_source_is_the_map() -> None:
    nm = NormalMap(to_jpeg(encode(*sphere(40)), 90))
    assert nm.normals_at_source(stored_orientation=True) is nm.normals
    assert nm.mask_at_source() is nm.mask
    assert nm.source_size == nm.size


def test_mapping_back_through_real_preparation() -> None:
    """A photo stored sideways (EXIF 6) and downscaled before upload comes back aligned."""
    stored_height = bumpy_height(96, 64) * 0.5
    photo = Image.fromarray(np.zeros((64, 96, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    photo.save(buf, format="JPEG", exif=exif)
    prepared = prepare_image(buf.getvalue(), options=PrepareOptions(max_pixels=1600))
    assert prepared.orientation == 6
    assert prepared.display_size == (64, 96)
    width, height = prepared.size
    assert width < 64  # downscaled
    # The server sees the upright, downscaled picture; heights shrink with the pixels.
    shown = _as_displayed(stored_height, 6)
    scale = width / 64
    uploaded = np.asarray(
        Image.fromarray(shown.astype(np.float32)).resize((width, height), Image.Resampling.BOX),
        dtype=np.float64,
    )
    normals = height_field_normals(uploaded * scale)
    nm = NormalMap(to_png(encode(normals, np.ones((height, width), bool))), prepared=prepared)
    got = nm.normals_at_source(stored_orientation=True)
    want = height_field_normals(stored_height)
    assert got.shape == want.shape == (64, 96, 3)
    err = angles_deg(got, want)
    inner = err[3:-3, 3:-3]  # the resize cannot know what lies past the edge
    assert np.median(inner) < 2.0
    assert np.percentile(inner, 95) < 6.0


# --------------------------------------------------------------------------- export


def _read_png16(data: bytes) -> NDArray[np.uint16]:
    """A minimal reader for the 16-bit RGB PNGs written here (Sub filter only)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert (depth, colour) == (16, 2)
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + width * 6)
    assert (rows[:, 0] == 1).all()
    raw = rows[:, 1:].copy()
    for col in range(6, raw.shape[1]):
        raw[:, col] += raw[:, col - 6]
    return raw.view(">u2").reshape(height, width, 3).astype(np.uint16)


def test_png16_export_holds_the_normals_to_16_bits() -> None:
    nm = NormalMap(to_jpeg(encode(*sphere(37)), 90), flip_y=True)  # odd width on purpose
    data = nm.export("png16")
    values = _read_png16(data)
    np.testing.assert_array_equal(values, np.rint((nm.normals.astype(np.float64) + 1) * 32767.5))
    back = values / 32767.5 - 1.0
    assert np.abs(back - nm.normals).max() < 2e-5
    with Image.open(io.BytesIO(data)) as image:  # and any PNG reader takes it
        assert image.size == (37, 37)
        image.load()


def test_numpy_exports_and_untouched_jpeg(tmp_path: Path) -> None:
    data = to_jpeg(encode(*sphere(40)), 90)
    nm = NormalMap(data)
    assert nm.save(tmp_path / "a.npy") == tmp_path / "a.npy"
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), nm.normals)
    nm.save(tmp_path / "b.npz")
    with np.load(tmp_path / "b.npz") as archive:
        np.testing.assert_array_equal(archive["normals"], nm.normals)
        np.testing.assert_array_equal(archive["mask"], nm.mask)
    nm.save(tmp_path / "c.JPG")
    assert (tmp_path / "c.JPG").read_bytes() == data
    nm.save(tmp_path / "d.bin", format="png16")
    assert (tmp_path / "d.bin").read_bytes() == nm.export("png16")
    with pytest.raises(ValueError, match="format"):
        nm.save(tmp_path / "e.tiff")
    with pytest.raises(ValueError, match="unknown export format"):
        nm.export("gif")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- threads


@pytest.mark.anyio
async def test_load_decodes_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []

    def spy(rgb: NDArray[np.uint8], *, flip_x: bool, flip_y: bool) -> NDArray[np.float32]:
        threads.append(threading.get_ident())
        return decode_normals(rgb, flip_x=flip_x, flip_y=flip_y)

    monkeypatch.setattr("clipnormals._normals.normalmap.decode_normals", spy)
    nm = NormalMap(to_jpeg(encode(*sphere(40)), 90))
    assert await nm.load() is nm
    assert len(threads) == 1
    assert threads[0] != threading.get_ident()
    _ = nm.normals
    assert len(threads) == 1  # cached


def test_concurrent_first_access_decodes_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    gate = threading.Barrier(4)

    def counting(rgb: NDArray[np.uint8]) -> NDArray[np.bool_]:
        calls.append(1)
        return person_mask(rgb)

    monkeypatch.setattr("clipnormals._normals.normalmap.person_mask", counting)
    nm = NormalMap(to_jpeg(encode(*sphere(64)), 90))
    results: list[NDArray[np.bool_]] = []

    def worker() -> None:
        gate.wait()
        results.append(nm.mask)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert all(r is results[0] for r in results)


@pytest.mark.parametrize("first", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("then", [(False, False), (True, False), (False, True), (True, True)])
def test_with_convention_from_cached_normals_equals_a_fresh_decode(
    first: tuple[bool, bool], then: tuple[bool, bool]
) -> None:
    data = to_jpeg(encode(*sphere(48)), 90)
    nm = NormalMap(data, flip_x=first[0], flip_y=first[1])
    _ = nm.normals  # decoded and cached: with_convention flips the cached field
    other = nm.with_convention(flip_x=then[0], flip_y=then[1])
    fresh = NormalMap(data, flip_x=then[0], flip_y=then[1])
    np.testing.assert_array_equal(other.normals, fresh.normals)


def test_a_small_person_far_from_the_camera_is_kept() -> None:
    # A person of ~300 pixels in a 400x300 frame: 0.25% of it, far above a JPEG speckle.
    normals, mask = sphere(20, radius=9.5)
    canvas_n = np.zeros((300, 400, 3), np.float32)
    canvas_m = np.zeros((300, 400), bool)
    canvas_n[140:160, 190:210], canvas_m[140:160, 190:210] = normals, mask
    found = NormalMap(to_jpeg(encode(canvas_n, canvas_m), 90)).mask
    assert found[140:160, 190:210].sum() >= 0.9 * mask.sum()
    assert not found[:100].any()


def test_background_reaching_only_the_bottom_edge_is_not_filled() -> None:
    # An arch: two legs joined at the top, standing on the bottom edge, with flat background
    # between them. Their inner sides lean back only a little: the rim of that gap is not a
    # silhouette, so an enclosed gap would be filled as a face-on patch. This one is open to
    # the frame (at the bottom only) and flat inside: background.
    height, width = 160, 200
    mask = np.zeros((height, width), bool)
    mask[30:, 40:80] = True  # left leg, down to the bottom edge
    mask[30:, 120:160] = True  # right leg
    mask[30:60, 40:160] = True  # the bar joining them
    normals = np.zeros((height, width, 3), np.float32)
    normals[...] = (0.45, 0.3, 0.84)  # leaning ~33 degrees: far off the background colour...
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)  # ...but nowhere a silhouette
    found = NormalMap(to_png(encode(normals, mask))).mask
    gap = (slice(64, height), slice(84, 116))
    assert not found[gap].any()
    assert found[mask].mean() > 0.95


@pytest.mark.parametrize("size", [(1, 1), (1, 2), (2, 1), (3, 3)])
def test_the_tiniest_maps_decode(size: tuple[int, int]) -> None:
    # The API returns a map the size of the upload, and preparation accepts 1x1 images.
    buf = io.BytesIO()
    Image.new("RGB", size, (128, 128, 255)).save(buf, "JPEG")
    nm = NormalMap(buf.getvalue())
    assert nm.mask.shape == (size[1], size[0])
    assert not nm.mask.any()
    assert nm.normals.shape == (size[1], size[0], 3)
