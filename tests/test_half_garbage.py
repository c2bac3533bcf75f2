"""Half-garbage images: files of full length whose end, or a piece inside, is random bytes, 0xFF
bytes or a repeat of earlier data are refused before upload, whatever
``ImageFile.LOAD_TRUNCATED_IMAGES`` says; whole files of every kind still pass.

(``test_integrity`` covers zero-filled tails and holes.) Every file is written at test time.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile, features

import clipnormals
from clipnormals import InvalidImageError
from clipnormals._images import bmff, decode
from clipnormals._images.codestreams import Broken
from clipnormals.images import prepare_image

SAMPLES = Path(clipnormals.__file__).parent / "samples"
AVIF = bool(features.check_module("avif")) if "avif" in features.modules else False
try:
    from clipnormals._images.formats import require_reader

    require_reader("HEIF", "test")
    HEIF = True
except InvalidImageError:
    HEIF = False
needs_avif = pytest.mark.skipif(not AVIF, reason="this Pillow reads no AVIF")
needs_heif = pytest.mark.skipif(not HEIF, reason="the 'heif' extra is not installed")


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def photo() -> Image.Image:
    return Image.open(SAMPLES / "astronaut.png").convert("RGB")


def tail(data: bytes, how: str, keep: float = 0.5) -> bytes:
    """The same length; from ``keep`` of it on, random bytes, 0xFF, or the file from its start."""
    cut = int(len(data) * keep)
    rest = len(data) - cut
    filler = {
        "random": random.Random(7).randbytes(rest),
        "0xFF": b"\xff" * rest,
        "repeat": (data * 2)[:rest],
    }[how]
    return data[:cut] + filler


def hole(data: bytes, start: float = 0.5, size: float = 0.05, fill: str = "random") -> bytes:
    first = int(len(data) * start)
    last = first + max(16, int(len(data) * size))
    filler = bytes(last - first) if fill == "zeros" else random.Random(3).randbytes(last - first)
    return data[:first] + filler + data[last:]


ENCODINGS: dict[str, tuple[str, dict[str, Any]]] = {
    "webp": ("WEBP", {"quality": 80}),
    "webp-lossless": ("WEBP", {"lossless": True}),
    "gif": ("GIF", {}),
    "jpeg2000": ("JPEG2000", {}),
    "ico": ("ICO", {"sizes": [(256, 256)]}),
    "heif": ("HEIF", {"quality": 80}),
    "avif": ("AVIF", {"quality": 80}),
}
MARKS = {"heif": [needs_heif], "avif": [needs_avif]}


@pytest.fixture(scope="module")
def encoded() -> dict[str, bytes]:
    image = photo()
    found = {}
    for name, (fmt, params) in ENCODINGS.items():
        if (name == "heif" and not HEIF) or (name == "avif" and not AVIF):
            continue
        found[name] = encode(image, fmt, **params)
    return found


# HEVC decodes random bytes without a sign and no structure shows them (about one 3-byte
# pattern per 5.6 MB): a HEIF whose end is random is the one case here that is uploaded
# (docs/reference/images.md, "What cannot be detected")
DAMAGED = [
    pytest.param(name, how, marks=MARKS.get(name, []), id=f"{name}-{how}")
    for name in sorted(ENCODINGS)
    for how in ("random", "0xFF", "repeat")
    if (name, how) != ("heif", "random")
]


@pytest.mark.parametrize("truncated_allowed", [False, True], ids=["default", "load-truncated"])
@pytest.mark.parametrize(("name", "how"), DAMAGED)
def test_a_garbage_second_half_is_refused(
    name: str,
    how: str,
    truncated_allowed: bool,
    encoded: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", truncated_allowed)
    whole = encoded[name]
    prepare_image(whole)
    broken = tail(whole, how)
    assert len(broken) == len(whole)
    with pytest.raises(InvalidImageError, match="truncated or corrupt") as caught:
        prepare_image(broken, name="download.part")
    assert str(caught.value).startswith("'download.part': ")


@pytest.mark.parametrize("truncated_allowed", [False, True], ids=["default", "load-truncated"])
@pytest.mark.parametrize(
    ("fmt", "params", "fill"),
    [
        pytest.param("WEBP", {"quality": 80}, "random", id="webp-random"),
        pytest.param("WEBP", {"quality": 80}, "zeros", id="webp-zeros"),
        pytest.param("TIFF", {"compression": "tiff_adobe_deflate"}, "zeros", id="tiff-deflate"),
        pytest.param("TIFF", {"compression": "jpeg"}, "random", id="tiff-jpeg-random"),
        pytest.param("TIFF", {"compression": "jpeg"}, "zeros", id="tiff-jpeg-zeros"),
        pytest.param("QOI", {}, "random", id="qoi-random"),
        pytest.param("QOI", {}, "zeros", id="qoi-zeros"),
        pytest.param("JPEG2000", {}, "random", id="jpeg2000-random"),
        pytest.param("AVIF", {"quality": 80}, "random", id="avif-random", marks=needs_avif),
    ],
)
def test_a_hole_inside_the_data_is_refused(
    fmt: str,
    params: dict[str, Any],
    fill: str,
    truncated_allowed: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", truncated_allowed)
    whole = encode(photo(), fmt, **params)
    prepare_image(whole)
    with pytest.raises(InvalidImageError, match="truncated or corrupt"):
        prepare_image(hole(whole, start=0.5, fill=fill))


# --- the mechanisms, one at a time ------------------------------------------------------------


def test_a_webp_whose_picture_ends_before_its_data_is_refused_by_the_end_test() -> None:
    whole = encode(photo(), "WEBP", lossless=True)
    broken = tail(whole, "random")
    # the structure is intact and the decode passes: only the end test sees it
    Image.open(io.BytesIO(broken)).load()
    with pytest.raises(InvalidImageError, match=f"complete {decode.CUT} bytes before the end"):
        prepare_image(broken)


@pytest.mark.parametrize(
    "params",
    [{"quality": 1}, {"quality": 100}, {"lossless": True}, {"lossless": True, "method": 0}],
)
def test_the_copy_of_a_whole_webp_that_is_cut_short_does_not_decode(params: dict[str, Any]) -> None:
    whole = encode(photo(), "WEBP", **params)
    shortened = decode._shortened(whole, "WEBP")
    assert shortened is not None
    assert len(shortened) == len(whole) - decode.CUT
    with (
        pytest.raises(OSError, match="failed to read"),
        Image.open(io.BytesIO(shortened)) as image,
    ):
        image.load()


@needs_avif
def test_the_copy_of_a_whole_avif_keeps_every_size_true_and_does_not_decode() -> None:
    whole = encode(photo(), "AVIF", quality=80)
    shortened = decode._shortened(whole, "AVIF")
    assert shortened is not None
    assert len(shortened) == len(whole)  # a padding OBU takes the bytes cut
    start, length = bmff.last_coded_extent(shortened, b"av01") or (0, 0)
    obus = bmff.av1_obus(shortened[start : start + length])
    assert obus[-1].kind == 15
    assert obus[-1].end == length
    with pytest.raises((OSError, RuntimeError)), Image.open(io.BytesIO(shortened)) as image:
        image.load()
    # while the same surgery on a file whose end is garbage still decodes
    broken = decode._shortened(tail(whole, "random"), "AVIF")
    assert broken is not None
    Image.open(io.BytesIO(broken)).load()


@needs_heif
def test_bytes_no_hevc_stream_holds_are_refused() -> None:
    whole = encode(photo(), "HEIF", quality=80)
    start, length = bmff.picture_items(whole)[0].extents[0]
    middle = start + length // 2
    broken = whole[:middle] + b"\x00\x00\x01" + whole[middle + 3 :]
    with pytest.raises(InvalidImageError, match=r"bytes no HEVC stream holds .00 00 01"):
        prepare_image(broken)


@needs_heif
def test_a_run_of_0xff_inside_hevc_data_is_refused() -> None:
    whole = encode(photo(), "HEIF", quality=80)
    start, length = bmff.picture_items(whole)[0].extents[0]
    middle = start + length // 2
    run = bmff.SAME_BYTE_RUN
    broken = whole[:middle] + b"\xff" * run + whole[middle + run :]
    with pytest.raises(InvalidImageError, match=f"run of {run} or more 0xFF bytes"):
        prepare_image(broken)


@needs_heif
def test_hevc_nal_lengths_must_tile_the_item_data() -> None:
    # what catches garbage that covers whole items, as the tiles of an iPhone photo's grid:
    # each item starts with a NAL unit length, which random bytes do not get right
    whole = encode(photo(), "HEIF", quality=80)
    start, _ = bmff.picture_items(whole)[0].extents[0]
    broken = whole[:start] + random.Random(2).randbytes(4) + whole[start + 4 :]
    with pytest.raises(Broken, match="a NAL unit of item 1 does not fit its data"):
        bmff.check_picture(broken)


def test_a_marker_code_inside_jpeg2000_tile_data_is_refused() -> None:
    whole = encode(photo(), "JPEG2000")
    middle = len(whole) // 2
    broken = whole[:middle] + b"\xff\x91" + whole[middle + 2 :]
    with pytest.raises(InvalidImageError, match="marker code inside the compressed data"):
        prepare_image(broken)


def test_a_qoi_file_whose_decode_stops_before_its_end_marker_is_refused() -> None:
    whole = encode(photo(), "QOI")
    # one pixel op replaced by a run of 62: the picture is complete before its data is
    at = len(whole) // 2
    broken = whole[:at] + b"\xfd" * 64 + whole[at + 64 :]
    with pytest.raises(InvalidImageError, match=r"bytes (before|after) its end marker"):
        prepare_image(broken)


def test_a_tiff_deflate_strip_that_yields_its_rows_from_damaged_data_is_refused() -> None:
    # libtiff stops inflating a strip once it has its rows: zeros in the middle of this strip
    # still inflate to enough bytes, and only the stream's end and checksum show the damage
    camera = Image.open(SAMPLES / "camera.png").convert("RGB")
    whole = encode(camera, "TIFF", compression="tiff_adobe_deflate")
    broken = hole(whole, start=0.5, fill="zeros")
    with pytest.raises(InvalidImageError, match=r"strip \d+: its Deflate data"):
        prepare_image(broken)


@pytest.mark.parametrize("truncated_allowed", [False, True], ids=["default", "load-truncated"])
def test_a_gif_whose_lzw_codes_break_is_refused_whatever_the_setting(
    truncated_allowed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", truncated_allowed)
    broken = tail(encode(photo(), "GIF"), "0xFF")
    with pytest.raises(InvalidImageError, match="the gif decoder reports"):
        prepare_image(broken)


def test_the_module_setting_is_read_by_pillow_never_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(InvalidImageError):
        prepare_image(tail(encode(photo(), "GIF"), "repeat"))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


# --- whole files pass -------------------------------------------------------------------------


def half_black() -> Image.Image:
    pixels = np.asarray(photo()).copy()
    pixels[256:] = 0
    return Image.fromarray(pixels)


def noise(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def flat(size: tuple[int, int], colour: int = 0) -> Image.Image:
    return Image.new("RGB", size, (colour, colour, colour))


def gradient_alpha() -> Image.Image:
    alpha = np.tile(np.linspace(0, 255, 512).astype(np.uint8), (512, 1))
    return Image.fromarray(np.dstack([np.asarray(photo()), alpha]))


PICTURES: dict[str, Callable[[], Image.Image]] = {
    "photo": photo,
    "half-black": half_black,
    "black": lambda: flat((300, 200)),
    "grey-1500": lambda: flat((1500, 1500), 120),
    "noise": lambda: noise(300, 200),
    "tiny": lambda: noise(3, 2),
}
WHOLE: dict[str, tuple[str, dict[str, Any]]] = {
    "webp-q1": ("WEBP", {"quality": 1}),
    "webp-q100": ("WEBP", {"quality": 100}),
    # libwebp's fastest lossless mode ends a half-black picture in 48,965 zero bytes
    "webp-lossless-m0": ("WEBP", {"lossless": True, "quality": 0, "method": 0}),
    "webp-lossless": ("WEBP", {"lossless": True}),
    "jpeg2000": ("JPEG2000", {}),
    "jpeg2000-tiled-layers": (
        "JPEG2000",
        {"tile_size": (128, 128), "quality_mode": "rates", "quality_layers": [40, 20]},
    ),
    "tiff-deflate": ("TIFF", {"compression": "tiff_adobe_deflate"}),
    "tiff-jpeg": ("TIFF", {"compression": "jpeg"}),
    "qoi": ("QOI", {}),
    "gif": ("GIF", {}),
    "ico": ("ICO", {"sizes": [(256, 256)]}),
    "heif": ("HEIF", {"quality": 50}),
    "avif": ("AVIF", {"quality": 50}),
}


@pytest.mark.parametrize("picture", sorted(PICTURES))
@pytest.mark.parametrize(
    "encoding", [pytest.param(name, marks=MARKS.get(name, [])) for name in sorted(WHOLE)]
)
def test_whole_files_pass(encoding: str, picture: str) -> None:
    fmt, params = WHOLE[encoding]
    image = PICTURES[picture]()
    data = encode(image.resize((256, 256)) if fmt == "ICO" else image, fmt, **params)
    assert prepare_image(data).size[0] >= 1


def test_a_webp_with_alpha_passes_and_its_end_is_tested() -> None:
    data = encode(gradient_alpha(), "WEBP", quality=80)
    assert b"ALPH" in data
    assert decode._shortened(data, "WEBP") is not None
    assert prepare_image(data).data == data


def test_an_animated_webp_uploads_its_first_frame_without_the_end_test() -> None:
    frames = [photo(), photo().rotate(90)]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:])
    assert decode._shortened(data, "WEBP") is None
    assert prepare_image(data).changes == ("first-frame",)


def test_png_icons_in_an_ico_are_crc_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    # ICO decodes its icons with a load of its own, which the setting lets pass damaged data
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = bytearray(encode(photo(), "ICO", sizes=[(256, 256)]))
    idat = data.index(b"IDAT")
    data[idat + 100] ^= 1
    with pytest.raises(InvalidImageError, match=r"icon 0: the IDAT chunk .* CRC"):
        prepare_image(bytes(data))
