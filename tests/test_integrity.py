"""Half-garbage images: files of full length whose end (or a piece inside) is zero bytes, as an
interrupted download into a pre-allocated file leaves them, are refused before any upload."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile

import clipnormals
from clipnormals import InvalidImageError
from clipnormals._images import integrity
from clipnormals.images import prepare_image

SAMPLES = Path(clipnormals.__file__).parent / "samples"


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def photo() -> Image.Image:
    return Image.open(SAMPLES / "astronaut.png").convert("RGB")


def zero_tail(data: bytes, fraction: float) -> bytes:
    """The same length, the last ``fraction`` of it zero bytes."""
    keep = int(len(data) * (1 - fraction))
    return data[:keep] + bytes(len(data) - keep)


def zero_hole(data: bytes, start: float = 0.4, size: float = 0.1) -> bytes:
    first = int(len(data) * start)
    last = first + int(len(data) * size)
    return data[:first] + bytes(last - first) + data[last:]


ENCODINGS: dict[str, tuple[str, dict[str, Any]]] = {
    "jpeg": ("JPEG", {"quality": 90}),
    "jpeg-optimized": ("JPEG", {"optimize": True}),
    "jpeg-progressive": ("JPEG", {"progressive": True}),
    "png": ("PNG", {}),
    "webp": ("WEBP", {}),
    "webp-lossless": ("WEBP", {"lossless": True}),
    "tiff-deflate": ("TIFF", {"compression": "tiff_deflate"}),
    "tiff-lzw": ("TIFF", {"compression": "tiff_lzw"}),
    "gif": ("GIF", {}),
    "qoi": ("QOI", {}),
}


@pytest.fixture(scope="module")
def encoded() -> dict[str, bytes]:
    image = photo()
    return {name: encode(image, fmt, **params) for name, (fmt, params) in ENCODINGS.items()}


@pytest.mark.parametrize("truncated_allowed", [False, True], ids=["default", "load-truncated"])
@pytest.mark.parametrize("fraction", [0.5, 0.1, 0.02])
@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_zero_filled_tail_is_refused(
    name: str,
    fraction: float,
    truncated_allowed: bool,
    encoded: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", truncated_allowed)
    whole = encoded[name]
    assert prepare_image(whole).size == (512, 512)
    broken = zero_tail(whole, fraction)
    assert len(broken) == len(whole)
    with pytest.raises(InvalidImageError, match="truncated") as caught:
        prepare_image(broken, name="download.part")
    assert str(caught.value).startswith("'download.part': ")


@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_the_message_points_at_an_interrupted_download(
    name: str, encoded: dict[str, bytes]
) -> None:
    with pytest.raises(InvalidImageError, match=r"ends in [\d,]+ zero bytes, as a download"):
        prepare_image(zero_tail(encoded[name], 0.5))


@pytest.mark.parametrize("truncated_allowed", [False, True], ids=["default", "load-truncated"])
@pytest.mark.parametrize("name", ["jpeg", "png", "tiff-deflate", "tiff-lzw"])
def test_zero_filled_hole_is_refused(
    name: str, truncated_allowed: bool, encoded: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", truncated_allowed)
    with pytest.raises(InvalidImageError):
        prepare_image(zero_hole(encoded[name]))


def test_a_zero_run_inside_jpeg_scan_data_is_refused_even_with_its_end_marker() -> None:
    data = encode(photo(), "JPEG", quality=90)
    assert prepare_image(data).data == data
    start = data.index(b"\xff\xda")
    hole = start + (len(data) - start) // 2
    broken = data[:hole] + bytes(integrity.JPEG_ZERO_RUN) + data[hole + integrity.JPEG_ZERO_RUN :]
    assert broken.endswith(b"\xff\xd9")
    with pytest.raises(InvalidImageError, match="run of zero bytes inside the compressed"):
        prepare_image(broken)


def test_a_png_chunk_with_a_wrong_crc_is_refused() -> None:
    data = bytearray(encode(photo(), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 100] ^= 0x01
    with pytest.raises(InvalidImageError):
        prepare_image(bytes(data))


def test_webp_shorter_than_its_riff_header_says_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = encode(photo(), "WEBP")
    with pytest.raises(InvalidImageError):
        prepare_image(data[: len(data) - 100])


def test_tiff_strips_past_the_end_of_the_file_are_refused() -> None:
    data = encode(photo(), "TIFF")
    image = Image.open(io.BytesIO(data))
    with pytest.raises(InvalidImageError, match=r"strip .* past the end"):
        integrity.check_whole(data[: len(data) - 1000], "TIFF", image, "'scan.tif'")


# --- what must still pass ---------------------------------------------------------------------


def flat(size: tuple[int, int], colour: int = 0) -> Image.Image:
    return Image.new("RGB", size, (colour, colour, colour))


def half_black() -> Image.Image:
    pixels = np.asarray(photo()).copy()
    pixels[256:] = 0
    return Image.fromarray(pixels)


def vertical_ramp() -> Image.Image:
    ramp = np.linspace(0, 255, 1000).astype(np.uint8)
    return Image.fromarray(np.tile(ramp[:, None, None], (1, 1000, 3)))


LEGITIMATE: dict[str, Callable[[], bytes]] = {
    # optimized and progressive JPEGs code flat areas as long runs of zero bytes
    "flat-jpeg-optimized": lambda: encode(flat((2000, 2000), 120), "JPEG", optimize=True),
    "flat-jpeg-progressive": lambda: encode(flat((2000, 2000)), "JPEG", progressive=True),
    "ramp-jpeg-q10-optimized": lambda: encode(vertical_ramp(), "JPEG", quality=10, optimize=True),
    "half-black-jpeg-progressive": lambda: encode(half_black(), "JPEG", progressive=True),
    # libwebp codes flat areas as zero bytes too, about one per 10,000 pixels
    "flat-webp": lambda: encode(flat((2000, 2000), 120), "WEBP"),
    "half-black-webp": lambda: encode(half_black(), "WEBP", quality=100),
    "black-webp-lossless": lambda: encode(flat((2000, 2000)), "WEBP", lossless=True),
    "black-png": lambda: encode(flat((2000, 2000)), "PNG"),
    # data after the end-of-image marker is not the picture uploaded
    "jpeg-with-zero-padding": lambda: encode(photo(), "JPEG") + bytes(4096),
    "png-with-trailer": lambda: encode(photo(), "PNG") + b"trailing bytes",
}


@pytest.mark.parametrize("case", sorted(LEGITIMATE))
def test_whole_files_with_long_zero_runs_pass(case: str) -> None:
    data = LEGITIMATE[case]()
    assert prepare_image(data).data == data


def test_whole_converted_files_with_long_zero_runs_pass() -> None:
    black = flat((500, 500))
    for params in ({"compression": "tiff_deflate"}, {"compression": "tiff_lzw"}, {}):
        prepared = prepare_image(encode(black, "TIFF", **params))
        assert prepared.changes == ("converted-from-TIFF",)
    assert prepare_image(encode(black, "QOI")).changes == ("converted-from-QOI",)


def test_a_multi_picture_jpeg_whose_second_picture_is_lost_still_uploads_its_first() -> None:
    frames = [photo(), flat((512, 512), 90)]
    data = encode(frames[0], "MPO", save_all=True, append_images=frames[1:])
    first_end = data.index(b"\xff\xd9") + 2
    broken = data[:first_end] + bytes(len(data) - first_end)
    assert prepare_image(broken).data == broken


def test_png_crc_is_checked_on_every_chunk() -> None:
    def chunk(kind: bytes, body: bytes, crc: int | None = None) -> bytes:
        value = zlib.crc32(kind + body) if crc is None else crc
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", value)

    data = encode(flat((4, 4)), "PNG")
    iend = data.index(b"IEND") - 4
    good = data[:iend] + chunk(b"tEXt", b"k\x00v") + data[iend:]
    bad = data[:iend] + chunk(b"tEXt", b"k\x00v", crc=0) + data[iend:]
    assert prepare_image(good).data == good
    with pytest.raises(InvalidImageError, match=r"tEXt chunk .* CRC"):
        prepare_image(bad)


# --- each structure rule on its own -----------------------------------------------------------
# The decoder notices most of these files first (they end early); the structure checks are the
# second line, for files a decoder takes without complaint. Each is pinned here directly.


def _check(data: bytes, fmt: str, whole: bytes | None = None) -> None:
    image = Image.open(io.BytesIO(whole if whole is not None else data))
    integrity.check_whole(data, fmt, image, "'x'")


def test_a_png_cut_at_a_chunk_boundary_before_iend_is_refused() -> None:
    data = encode(flat((8, 8), 50), "PNG")
    _check(data, "PNG")
    assert data.endswith(b"IEND\xaeB`\x82")
    with pytest.raises(InvalidImageError, match="no IEND chunk"):
        _check(data[:-12], "PNG", data)


def test_a_jpeg_whose_end_marker_comes_before_any_scan_is_refused() -> None:
    data = encode(photo(), "JPEG")
    _check(data, "JPEG")
    headers = data[: data.index(b"\xff\xda")]
    with pytest.raises(InvalidImageError, match="end-of-image marker before any image data"):
        _check(headers + b"\xff\xd9", "JPEG", data)


def test_a_zero_run_just_over_the_limit_inside_a_jpeg_scan_is_refused() -> None:
    data = encode(photo(), "JPEG", quality=90)
    scan = data.index(b"\xff\xda")
    middle = scan + (len(data) - scan) // 2
    run = 300  # just over the 256 files from libjpeg never hold (JPEG_ZERO_RUN)
    broken = data[:middle] + bytes(run) + data[middle + run :]
    with pytest.raises(InvalidImageError, match="run of zero bytes"):
        prepare_image(broken)


@pytest.mark.parametrize("short", [1, 4, 8])
def test_a_webp_a_few_bytes_shorter_than_its_riff_header_is_refused(short: int) -> None:
    data = encode(photo(), "WEBP")
    _check(data, "WEBP")
    with pytest.raises(InvalidImageError, match="RIFF header declares"):
        _check(data[:-short], "WEBP", data)
