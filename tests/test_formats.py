"""Recognising formats from bytes: one sniffer for preparation and discovery, RIFF files named,
and one EXIF orientation table for the pixels, the normal maps and the contact sheets."""

from __future__ import annotations

import io
import struct
import wave
from typing import Any

import numpy as np
import pytest
from PIL import Image

from clipnormals import InvalidImageError
from clipnormals._batch.discover import discover, sniff_image_format
from clipnormals._images import formats
from clipnormals._images.orientation import EXIF_TO_DISPLAY, exif_orientation, upright
from clipnormals._normals.vectors import reorient, transform_field
from clipnormals.images import prepare_image, sniff_format


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def wav_bytes() -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(bytes(3200))
    return buffer.getvalue()


def avi_bytes() -> bytes:
    # the first bytes every AVI file has: RIFF, its size, "AVI ", then a LIST chunk
    body = b"AVI " + b"LIST" + struct.pack("<I", 4) + b"hdrl"
    return b"RIFF" + struct.pack("<I", len(body)) + body


def ftyp(major: bytes, *compatible: bytes) -> bytes:
    body = major + bytes(4) + b"".join(compatible)
    return struct.pack(">I", 8 + len(body)) + b"ftyp" + body + bytes(16)


SMALL = Image.new("RGB", (6, 4), (200, 100, 50))
IMAGES = {
    fmt: encode(SMALL, fmt)
    for fmt in ("PNG", "JPEG", "WEBP", "GIF", "TIFF", "BMP", "ICO", "PPM", "QOI", "JPEG2000")
}


# --- one sniffer ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(IMAGES))
def test_every_sniffer_of_the_package_agrees(fmt: str) -> None:
    data = IMAGES[fmt]
    assert formats.sniff(data) == fmt
    assert sniff_format(data) == fmt
    # discovery reads only the first bytes of a file
    assert sniff_image_format(data[:64]) == fmt


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(ftyp(b"heic", b"mif1", b"heic", b"miaf"), "HEIF", id="heic"),
        pytest.param(ftyp(b"heix", b"mif1"), "HEIF", id="heix"),
        pytest.param(ftyp(b"mif1", b"heic"), "HEIF", id="mif1-heic"),
        pytest.param(ftyp(b"avif", b"avif", b"mif1", b"miaf"), "AVIF", id="avif"),
        pytest.param(ftyp(b"mif1", b"avif", b"miaf"), "AVIF", id="mif1-avif"),
        pytest.param(ftyp(b"isom", b"isom", b"mp41"), None, id="mp4-video"),
        pytest.param(ftyp(b"qt  "), None, id="quicktime"),
    ],
)
def test_iso_media_files_are_told_apart_by_their_brands(data: bytes, expected: str | None) -> None:
    assert formats.sniff(data) == expected
    assert sniff_image_format(data[:64]) == expected


@pytest.mark.parametrize(
    ("data", "named"),
    [
        pytest.param(wav_bytes(), "WAVE audio", id="wav"),
        pytest.param(avi_bytes(), "AVI video", id="avi"),
        pytest.param(b"RIFF\x10\x00\x00\x00ABCDxxxxxxxx", "form 'ABCD'", id="other"),
    ],
)
def test_riff_files_that_are_not_webp_are_refused_as_what_they_are(data: bytes, named: str) -> None:
    assert formats.sniff(data) is None
    assert sniff_format(data) is None
    assert sniff_image_format(data[:64]) is None
    with pytest.raises(InvalidImageError, match=f"RIFF file holding .*{named}.*not WEBP"):
        prepare_image(data, name="clip.webp")


def test_a_riff_webp_still_is_one() -> None:
    data = IMAGES["WEBP"]
    assert data[:4] == b"RIFF"
    assert formats.riff_form(data) is None
    assert prepare_image(data).data == data


def test_weak_signatures_need_their_whole_magic() -> None:
    # Pillow's PPM test takes "P" and one character; a Netpbm header has whitespace next
    assert formats.sniff(b"Pfizer, annual report\n") is None
    assert formats.sniff(b"P1\n2 2\n0 1 1 0\n") == "PPM"
    assert formats.sniff(b"P6\n4 3\n255\n" + bytes(36)) == "PPM"
    assert formats.sniff(encode(SMALL, "TGA")) is None


def test_discovery_takes_riff_audio_out_and_heif_in_by_their_bytes(tmp_path: Any) -> None:
    (tmp_path / "IMG_0001").write_bytes(ftyp(b"heic", b"mif1", b"heic"))
    (tmp_path / "IMG_0002").write_bytes(ftyp(b"avif", b"avif", b"mif1"))
    (tmp_path / "voice-memo").write_bytes(wav_bytes())
    (tmp_path / "movie").write_bytes(avi_bytes())
    found = discover([tmp_path])
    assert [f.key for f in found.files] == ["IMG_0001", "IMG_0002"]
    assert found.ignored == 2


# --- one orientation table --------------------------------------------------------------------


def marked() -> Image.Image:
    image = Image.new("RGB", (6, 4), "black")
    image.putpixel((0, 0), (255, 255, 255))
    image.putpixel((5, 0), (255, 0, 0))
    return image


@pytest.mark.parametrize("orientation", range(1, 9))
def test_pixels_and_normal_maps_turn_by_the_same_table(orientation: int) -> None:
    stored = marked()
    shown = np.asarray(upright(stored, orientation))
    transpose = EXIF_TO_DISPLAY[orientation]
    # the normal-map side moves an array the way the image side moves pixels
    field = np.zeros((4, 6, 3), np.float32)
    field[..., 2] = 1.0
    field[..., 0] = np.asarray(stored)[..., 0] / 255.0
    mask = np.asarray(stored)[..., 1] > 0
    turned, turned_mask = reorient(field, mask, orientation, to="display")
    assert turned.shape[:2] == shown.shape[:2]
    assert np.array_equal(turned_mask, shown[..., 1] > 0)
    # vectors turn with the pixels: their length lands where the red channel does
    assert np.allclose(np.hypot(turned[..., 0], turned[..., 1]), shown[..., 0] / 255.0)
    if transpose is not None:
        assert np.array_equal(transform_field(field, transpose), turned)
    back, back_mask = reorient(turned, turned_mask, orientation, to="stored")
    assert np.array_equal(back_mask, mask)
    assert np.allclose(back, field)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_upright_follows_pillows_own_exif_transpose(orientation: int) -> None:
    from PIL import ImageOps

    exif = Image.Exif()
    exif[0x0112] = orientation
    with Image.open(io.BytesIO(encode(marked(), "PNG", exif=exif.tobytes()))) as image:
        assert exif_orientation(image) == orientation
        assert np.array_equal(
            np.asarray(upright(image)), np.asarray(ImageOps.exif_transpose(image))
        )
