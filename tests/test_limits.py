"""The API's limits at their edges: 25,000,000 pixels and 30,000,000 bytes.

The reading of the limits is in docs/reference/limits.md.

Each limit is tested on both sides with cheap images: single-colour pictures compress to a few
kilobytes at 25 megapixels, and a PNG is padded to an exact byte size with a private chunk.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import pytest
from PIL import Image

from clipnormals import InvalidImageError, PrepareOptions
from clipnormals.images import prepare_image

MAX_PIXELS = 25_000_000  # api-contract: "width x height <= 25,000,000"
MAX_BYTES = 30_000_000  # api-contract: "at most 30 MB"; decimal, the smaller reading
STRICT = PrepareOptions(strict=True)


def test_the_defaults_are_the_documented_limits() -> None:
    assert PrepareOptions().max_pixels == MAX_PIXELS
    assert PrepareOptions().max_bytes == MAX_BYTES


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


# --- pixels -----------------------------------------------------------------------------------

# 25,000,001 = 13 * 13 * 29 * 5101 = 4901 * 5101: one pixel over, in a nearly square picture
ONE_OVER = (4901, 5101)


@pytest.fixture(scope="module", params=["PNG", "JPEG"])
def at_limit(request: pytest.FixtureRequest) -> tuple[str, bytes]:
    return request.param, encode(Image.new("L", (5000, 5000), 140), request.param)


@pytest.fixture(scope="module", params=["PNG", "JPEG"])
def over_limit(request: pytest.FixtureRequest) -> tuple[str, bytes]:
    assert ONE_OVER[0] * ONE_OVER[1] == MAX_PIXELS + 1
    return request.param, encode(Image.new("L", ONE_OVER, 140), request.param)


def test_exactly_25_megapixels_is_uploaded_untouched(at_limit: tuple[str, bytes]) -> None:
    fmt, data = at_limit
    for options in (PrepareOptions(), STRICT):
        prepared = prepare_image(data, options=options)
        assert prepared.data == data
        assert (prepared.format, prepared.size, prepared.changes) == (fmt, (5000, 5000), ())


def test_one_pixel_over_is_downscaled_by_default(over_limit: tuple[str, bytes]) -> None:
    fmt, data = over_limit
    prepared = prepare_image(data)
    width, height = prepared.size
    assert width * height <= MAX_PIXELS
    assert (width, height) != ONE_OVER
    # the largest picture of the same aspect that fits
    assert (width + 1) * (height + 1) > MAX_PIXELS
    assert "downscaled" in prepared.changes
    assert prepared.format == fmt
    assert prepared.display_size == ONE_OVER
    with Image.open(io.BytesIO(prepared.data)) as out:
        assert out.size == prepared.size


def test_one_pixel_over_is_refused_in_strict_mode(over_limit: tuple[str, bytes]) -> None:
    _fmt, data = over_limit
    with pytest.raises(InvalidImageError, match=r"4901x5101 = 25,000,001 pixels .* 25,000,000"):
        prepare_image(data, options=STRICT)


def test_pil_and_array_sources_meet_the_same_pixel_limit() -> None:
    at = Image.new("1", (5000, 5000), 1)
    over = Image.new("1", ONE_OVER, 1)
    assert prepare_image(at, options=STRICT).size == (5000, 5000)
    with pytest.raises(InvalidImageError, match="25,000,001 pixels"):
        prepare_image(over, options=STRICT)


# --- bytes ------------------------------------------------------------------------------------


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_of_size(total: int) -> bytes:
    """A valid 64x64 PNG of exactly ``total`` bytes, padded with a private ancillary chunk."""
    plain = encode(Image.new("RGB", (64, 64), (30, 60, 90)), "PNG")
    iend = plain.rindex(b"IEND") - 4
    padding = total - len(plain) - 12
    data = plain[:iend] + chunk(b"prVt", bytes(padding)) + plain[iend:]
    assert len(data) == total
    return data


@pytest.fixture(scope="module")
def exactly_max() -> bytes:
    return png_of_size(MAX_BYTES)


@pytest.fixture(scope="module")
def one_byte_over() -> bytes:
    return png_of_size(MAX_BYTES + 1)


def test_a_file_of_exactly_30_000_000_bytes_is_uploaded_untouched(exactly_max: bytes) -> None:
    for options in (PrepareOptions(), STRICT):
        prepared = prepare_image(exactly_max, options=options)
        assert prepared.data == exactly_max
        assert prepared.changes == ()


def test_one_byte_over_is_re_encoded_by_default(one_byte_over: bytes) -> None:
    prepared = prepare_image(one_byte_over)
    assert (prepared.format, prepared.changes) == ("PNG", ("re-encoded",))
    assert len(prepared.data) <= MAX_BYTES
    assert prepared.size == (64, 64)


def test_one_byte_over_is_refused_in_strict_mode(one_byte_over: bytes) -> None:
    with pytest.raises(InvalidImageError, match=r"30,000,001 bytes, above the limit of 30,000,000"):
        prepare_image(one_byte_over, options=STRICT)
