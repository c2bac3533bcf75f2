"""Image preparation: what gets uploaded for every kind of source, and what gets refused."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import warnings
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import FrozenInstanceError, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps, JpegImagePlugin

import clipnormals
from clipnormals._errors import InvalidImageError
from clipnormals._images.prepare import PreparedImage, PrepareOptions, prepare_image, sniff_format

SAMPLES = Path(clipnormals.__file__).parent / "samples"
ORIENTATION = 0x0112
# raw pixels = display pixels transposed by the inverse of what EXIF orientation k asks a viewer
# to do (EXIF 2.32, tag 0x0112)
INVERSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def pixels(image: Image.Image) -> np.ndarray[Any, Any]:
    return np.asarray(image).astype(np.int16)


def noise(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = len(mode)
    shape = (height, width) if channels == 1 else (height, width, channels)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))


def smooth(width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256])
    return Image.fromarray(rgb.transpose(1, 2, 0).astype(np.uint8))


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header for an RGB image of the given size, with no pixel data at all."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def gif_declaring(width: int, height: int) -> bytes:
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
    frame = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x4c\x01\x00"
    return screen + frame + b";"


def with_orientation(display: Image.Image, orientation: int, fmt: str) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    raw = display.transpose(INVERSE[orientation]) if orientation in INVERSE else display
    return encode(raw, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))


def marked(width: int = 60, height: int = 30) -> Image.Image:
    """Black, with a white block in the top-left corner: every orientation moves it elsewhere."""
    image = Image.new("RGB", (width, height), "black")
    image.paste((255, 255, 255), (0, 0, 15, 10))
    return image


@pytest.fixture(scope="module")
def astronaut() -> bytes:
    return (SAMPLES / "astronaut.png").read_bytes()


# --- untouched uploads ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "content_type", "filename"),
    [("PNG", "image/png", "image.png"), ("JPEG", "image/jpeg", "image.jpg"),
     ("WEBP", "image/webp", "image.webp")],
)  # fmt: skip
def test_api_formats_are_uploaded_byte_for_byte(fmt: str, content_type: str, filename: str) -> None:
    data = encode(noise(40, 30), fmt)
    prepared = prepare_image(data)
    assert prepared.data == data
    assert prepared.changes == ()
    assert (prepared.format, prepared.content_type, prepared.filename) == (
        fmt,
        content_type,
        filename,
    )
    assert prepared.size == prepared.display_size == (40, 30)
    assert prepared.orientation == 1
    assert prepared.scale == 1.0
    assert prepared.source_name is None


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: encode(Image.new("L", (1, 1), 7), "PNG"), id="1px-png"),
        pytest.param(lambda: encode(Image.new("RGB", (1, 1), "red"), "JPEG"), id="1px-jpeg"),
        pytest.param(lambda: encode(Image.new("RGB", (1, 1), "red"), "WEBP"), id="1px-webp"),
        pytest.param(lambda: encode(noise(20, 10, "L"), "PNG"), id="grey-png"),
        pytest.param(lambda: encode(noise(20, 10, "L"), "JPEG"), id="grey-jpeg"),
        pytest.param(
            lambda: encode(Image.fromarray(np.full((10, 20), 60000, np.uint16)), "PNG"),
            id="16bit-grey-png",
        ),
        pytest.param(lambda: encode(noise(20, 10).convert("P"), "PNG"), id="palette-png"),
        pytest.param(lambda: encode(noise(20, 10, "RGBA"), "PNG"), id="rgba-png"),
        pytest.param(lambda: encode(noise(20, 10, "RGBA"), "WEBP"), id="rgba-webp"),
        pytest.param(lambda: encode(noise(20, 10).convert("CMYK"), "JPEG"), id="cmyk-jpeg"),
        pytest.param(lambda: with_orientation(noise(20, 10), 1, "JPEG"), id="orientation-1"),
        pytest.param(lambda: with_orientation(noise(20, 10), 9, "JPEG"), id="orientation-bogus"),
    ],
)
def test_every_kind_of_api_format_passes_through(build: Callable[[], bytes]) -> None:
    data = build()
    prepared = prepare_image(data)
    assert prepared.data == data
    assert prepared.changes == ()
    assert prepared.size == decode(data).size


def test_sample_portrait_passes_through(astronaut: bytes) -> None:
    prepared = prepare_image(SAMPLES / "astronaut.png")
    assert prepared.data == astronaut
    assert prepared.size == (512, 512)
    assert prepared.filename == "astronaut.png"
    assert prepared.source_name == str(SAMPLES / "astronaut.png")


def test_multi_picture_jpeg_is_a_plain_jpeg_upload() -> None:
    frames = [Image.new("RGB", (20, 10), colour) for colour in ("red", "blue")]
    data = encode(frames[0], "MPO", save_all=True, append_images=frames[1:])
    assert decode(data).format == "MPO"
    prepared = prepare_image(data)
    assert (prepared.format, prepared.data, prepared.changes) == ("JPEG", data, ())
    assert sniff_format(data) == "JPEG"


# --- input kinds ------------------------------------------------------------------------------


def test_path_kinds_read_the_file(tmp_path: Path) -> None:
    data = encode(noise(16, 8), "PNG")
    path = tmp_path / "portrait.png"
    path.write_bytes(data)
    for source in (path, str(path)):
        prepared = prepare_image(source)
        assert prepared.data == data
        assert prepared.source_name == str(path)
        assert prepared.filename == "portrait.png"


def test_bytes_kinds_are_equivalent() -> None:
    data = encode(noise(16, 8), "JPEG")
    for source in (data, bytearray(data), memoryview(data)):
        prepared = prepare_image(source, name="face.jpg")
        assert prepared.data == data
        assert (prepared.filename, prepared.source_name) == ("face.jpg", "face.jpg")


def test_binary_file_objects_are_read(tmp_path: Path) -> None:
    data = encode(noise(16, 8), "WEBP")
    path = tmp_path / "p.webp"
    path.write_bytes(data)
    with path.open("rb") as file:
        prepared = prepare_image(file)
    assert prepared.data == data
    assert prepared.source_name == str(path)
    assert prepared.filename == "p.webp"
    stream = io.BytesIO(b"header" + data)
    stream.seek(6)  # read from the current position, like any upload of a file object
    assert prepare_image(stream).data == data


def test_text_mode_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.png"
    path.write_bytes(encode(noise(4, 4), "PNG"))
    with path.open("r", encoding="latin-1") as file, pytest.raises(InvalidImageError, match="text"):
        prepare_image(file)  # type: ignore[arg-type]


def test_prepared_image_is_returned_unchanged() -> None:
    prepared = prepare_image(encode(noise(4, 4), "PNG"))
    assert prepare_image(prepared) is prepared
    assert prepare_image(prepared, options=PrepareOptions(max_bytes=1)) is prepared


def test_unsupported_source_type_is_refused() -> None:
    with pytest.raises(InvalidImageError, match="unsupported image source of type int"):
        prepare_image(42)  # type: ignore[arg-type]


def test_format_comes_from_bytes_not_name() -> None:
    png = encode(noise(8, 8), "PNG")
    prepared = prepare_image(png, name="holiday.jpg")
    assert (prepared.format, prepared.filename, prepared.data) == ("PNG", "holiday.png", png)


@pytest.mark.parametrize(
    ("name", "fmt", "expected"),
    [
        (None, "PNG", "image.png"),
        ("portrait.JPEG", "JPEG", "portrait.JPEG"),
        ("dir/sub/photo.png", "PNG", "photo.png"),
        ("C:\\Users\\me\\scan.tif", "TIFF", "scan.png"),
        ('we"ird.png', "PNG", "weird.png"),
        ("noext", "JPEG", "noext.jpg"),
    ],
)
def test_filename_follows_source_name_and_format(name: str | None, fmt: str, expected: str) -> None:
    assert prepare_image(encode(noise(8, 8), fmt), name=name).filename == expected


def test_pil_image_is_encoded_as_png() -> None:
    image = noise(30, 20)
    prepared = prepare_image(image)
    assert (prepared.format, prepared.changes) == ("PNG", ("encoded-from-PIL",))
    assert np.array_equal(pixels(decode(prepared.data)), pixels(image))
    assert prepared.size == prepared.display_size == (30, 20)


def test_pil_image_opened_from_file_keeps_its_name_and_orientation(tmp_path: Path) -> None:
    path = tmp_path / "sideways.png"
    path.write_bytes(with_orientation(marked(), 6, "PNG"))
    with Image.open(path) as image:
        prepared = prepare_image(image)
        derived = prepare_image(image.copy())
    assert prepared.source_name == str(path)
    assert prepared.filename == "sideways.png"
    assert (prepared.orientation, prepared.size) == (6, (60, 30))
    assert np.array_equal(pixels(decode(prepared.data)), pixels(marked()))
    # an image derived from the file is taken as its pixels stand
    assert (derived.orientation, derived.size) == (1, (30, 60))


def test_lazy_pil_image_with_truncated_data_is_refused() -> None:
    data = encode(noise(64, 64), "JPEG")
    with (
        Image.open(io.BytesIO(data[: len(data) // 2])) as image,
        pytest.raises(InvalidImageError, match="truncated"),
    ):
        prepare_image(image)


def i16(values: list[int]) -> Image.Image:
    return Image.fromarray(np.array([values], dtype=np.uint16))


def f32(values: list[float]) -> Image.Image:
    return Image.fromarray(np.array([values], dtype=np.float32))


def transparent_palette() -> Image.Image:
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255])
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 0
    return image


@pytest.mark.parametrize(
    ("build", "mode", "expected"),
    [
        pytest.param(lambda: i16([0, 257 * 100, 65535]), "L", [[0, 100, 255]], id="I;16"),
        pytest.param(lambda: i16([0, 257 * 100, 65535]).convert("I"), "L", [[0, 100, 255]], id="I"),
        # 8-bit values in a wider container are kept, not divided by 257
        pytest.param(lambda: i16([0, 100, 255]), "L", [[0, 100, 255]], id="I;16-8-bit-values"),
        pytest.param(lambda: i16([0, 100, 255]).convert("I"), "L", [[0, 100, 255]], id="I-8-bit"),
        pytest.param(
            lambda: Image.fromarray(np.array([[-7, 25700, 70000]], np.int32)),
            "L",
            [[0, 100, 255]],
            id="I-beyond-16-bits-clipped",
        ),
        pytest.param(lambda: f32([0.0, 0.5, 1.0]), "L", [[0, 128, 255]], id="F-unit"),
        pytest.param(lambda: f32([-5.0, 100.0, 300.0]), "L", [[0, 100, 255]], id="F-clipped"),
        pytest.param(
            lambda: Image.new("CMYK", (1, 1), (0, 255, 255, 0)), "RGB", [[[255, 0, 0]]], id="CMYK"
        ),
        pytest.param(
            transparent_palette, "RGBA", [[[255, 0, 0, 0], [0, 0, 255, 255]]], id="P-transparent"
        ),
        pytest.param(lambda: Image.new("LA", (1, 1), (9, 99)), "LA", [[[9, 99]]], id="LA"),
        pytest.param(lambda: Image.new("1", (2, 1), 1), "1", [[True, True]], id="1"),
    ],
)
def test_pil_modes_become_modes_the_api_takes(
    build: Callable[[], Image.Image], mode: str, expected: list[Any]
) -> None:
    prepared = prepare_image(build())
    out = decode(prepared.data)
    assert prepared.format == "PNG"
    assert out.mode == mode
    assert np.array_equal(np.asarray(out), np.array(expected))


@pytest.mark.parametrize("mode", ["I", "I;16", "F"])
def test_a_picture_converted_to_a_wide_mode_uploads_as_the_same_picture(mode: str) -> None:
    grey = Image.open(SAMPLES / "astronaut.png").convert("L")
    wide = grey.convert(mode) if mode != "I;16" else Image.fromarray(np.asarray(grey, np.uint16))
    assert wide.mode == mode
    prepared = prepare_image(wide)
    assert prepared.changes == ("encoded-from-PIL", f"converted-mode-{mode}")
    assert np.array_equal(np.asarray(decode(prepared.data)), np.asarray(grey))


def test_a_16_bit_tiff_is_scaled_to_8_bits() -> None:
    grey = np.asarray(Image.open(SAMPLES / "astronaut.png").convert("L"))
    data = encode(Image.fromarray(grey.astype(np.uint16) * 257), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    prepared = prepare_image(data)
    assert prepared.changes == ("converted-from-TIFF", "converted-mode-I;16")
    assert np.array_equal(np.asarray(decode(prepared.data)), grey)


def test_empty_pil_image_is_refused() -> None:
    with pytest.raises(InvalidImageError, match="no pixels"):
        prepare_image(Image.new("RGB", (0, 3)))


@pytest.mark.parametrize(
    ("array", "mode"),
    [
        (np.arange(12, dtype=np.uint8).reshape(3, 4), "L"),
        (np.arange(12, dtype=np.uint8).reshape(3, 4, 1), "L"),
        (np.arange(36, dtype=np.uint8).reshape(3, 4, 3), "RGB"),
        (np.arange(48, dtype=np.uint8).reshape(3, 4, 4), "RGBA"),
        (np.arange(72, dtype=np.uint8).reshape(3, 8, 3)[:, ::2], "RGB"),
    ],
)
def test_uint8_arrays_are_encoded_exactly(array: np.ndarray[Any, Any], mode: str) -> None:
    prepared = prepare_image(array)
    out = decode(prepared.data)
    assert out.mode == mode
    assert np.array_equal(np.asarray(out), array.squeeze(-1) if array.shape[-1] == 1 else array)
    assert prepared.changes == ("encoded-from-array",)
    assert prepared.size == (4, 3)


def test_bool_and_float_arrays_are_scaled() -> None:
    mask = np.array([[True, False]])
    assert np.array_equal(np.asarray(decode(prepare_image(mask).data)), [[255, 0]])
    ramp = np.array([[0.0, 0.5, 1.0]], dtype=np.float64)
    assert np.array_equal(np.asarray(decode(prepare_image(ramp).data)), [[0, 128, 255]])
    half = np.full((2, 2, 3), 0.25, dtype=np.float16)
    assert np.asarray(decode(prepare_image(half).data)).max() == 64


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.array([[0.5, np.nan]]), "NaN"),
        (np.array([[0.5, np.inf]]), "infinite"),
        (np.array([[0.5, 1.5]]), r"\[0, 1\]"),
        (np.array([[-0.1, 0.5]]), r"\[0, 1\]"),
        (np.zeros((4, 4), dtype=np.int16), "dtype int16"),
        (np.zeros((4, 4), dtype=np.uint16), "dtype uint16"),
        (np.zeros((4, 4), dtype=np.complex64), "dtype complex64"),
        (np.zeros((4, 4), dtype=object), "dtype object"),
        (np.zeros(16, dtype=np.uint8), "expected shape"),
        (np.zeros((2, 2, 2, 3), dtype=np.uint8), "expected shape"),
        (np.zeros((4, 4, 2), dtype=np.uint8), "expected shape"),
        (np.zeros((4, 4, 5), dtype=np.uint8), "expected shape"),
        (np.zeros((0, 4), dtype=np.uint8), "empty"),
        (np.zeros((4, 0, 3), dtype=np.uint8), "empty"),
    ],
)
def test_bad_arrays_are_refused(array: np.ndarray[Any, Any], message: str) -> None:
    with pytest.raises(InvalidImageError, match=message) as caught:
        prepare_image(array, name="frame-7")
    assert "'frame-7'" in str(caught.value)


# --- conversion -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "image"),
    [
        ("TIFF", noise(24, 12)),
        ("BMP", noise(24, 12)),
        ("GIF", noise(24, 12).quantize(16)),
        ("PPM", noise(24, 12)),
        ("QOI", noise(24, 12, "RGBA")),
        ("ICO", noise(32, 32, "RGBA")),
    ],
)
def test_other_formats_are_converted_to_png_losslessly(fmt: str, image: Image.Image) -> None:
    data = encode(image, fmt)
    prepared = prepare_image(data, name=f"scan.{fmt.lower()}")
    assert prepared.format == "PNG"
    assert prepared.filename == "scan.png"
    assert prepared.changes[0] == f"converted-from-{fmt}"
    assert prepared.source_sha256 == hashlib.sha256(data).hexdigest()
    out = decode(prepared.data).convert("RGBA")
    assert np.array_equal(pixels(out), pixels(image.convert("RGBA")))


@pytest.mark.parametrize(
    ("image", "mode"),
    [
        (Image.fromarray(np.full((6, 8), 65535, np.uint16)), "L"),
        (noise(8, 6).convert("CMYK"), "RGB"),
    ],
)
def test_converted_tiff_modes(image: Image.Image, mode: str) -> None:
    prepared = prepare_image(encode(image, "TIFF"))
    assert decode(prepared.data).mode == mode
    assert prepared.changes == ("converted-from-TIFF", f"converted-mode-{image.mode}")


def test_colour_profile_is_kept_only_while_it_describes_the_pixels() -> None:
    rgb = with_orientation(noise(8, 4), 6, "PNG")
    image = decode(rgb)
    rgb_with_profile = encode(image, "PNG", icc_profile=b"rgb-profile", exif=image.info["exif"])
    assert decode(prepare_image(rgb_with_profile).data).info.get("icc_profile") == b"rgb-profile"
    cmyk = encode(noise(8, 4).convert("CMYK"), "TIFF", icc_profile=b"cmyk-profile")
    assert "icc_profile" not in decode(prepare_image(cmyk).data).info


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animations_upload_their_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (20, 10), colour) for colour in ("red", "blue", "lime")]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], lossless=True)
    prepared = prepare_image(data)
    assert "first-frame" in prepared.changes
    assert prepared.format == "PNG"
    out = decode(prepared.data)
    assert not getattr(out, "is_animated", False)
    assert out.convert("RGB").getpixel((5, 5)) == (255, 0, 0)


# --- EXIF orientation -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("orientation", range(2, 9))
def test_exif_orientation_is_applied_and_removed(orientation: int, fmt: str) -> None:
    display = marked()
    data = with_orientation(display, orientation, fmt)
    # the fixture itself is right: a viewer shows `display`
    assert ImageOps.exif_transpose(decode(data)).size == display.size
    prepared = prepare_image(data, options=PrepareOptions(strict=True))
    assert prepared.orientation == orientation
    if fmt == "JPEG":
        assert (prepared.format, prepared.changes) == ("JPEG", ("exif-orientation", "re-encoded"))
    else:
        assert (prepared.format, prepared.changes) == ("PNG", ("exif-orientation",))
    assert prepared.size == prepared.display_size == (60, 30)
    out = decode(prepared.data)
    assert ORIENTATION not in out.getexif()
    grey = pixels(out.convert("L"))
    assert grey[:10, :15].min() > 200  # the marker is where the user sees it
    for corner in (grey[-10:, -15:], grey[:10, -15:], grey[-10:, :15]):
        assert corner.max() < 60
    if fmt == "PNG":
        assert np.array_equal(pixels(out), pixels(display))


def test_rotated_jpeg_too_big_as_png_becomes_jpeg_q95_even_in_strict_mode(
    astronaut: bytes,
) -> None:
    display = decode(astronaut).convert("RGB").crop((0, 0, 120, 60))
    display.paste((255, 255, 255), (0, 0, 30, 20))
    data = with_orientation(display, 6, "JPEG")
    seen = ImageOps.exif_transpose(decode(data))
    limit = len(encode(seen, "JPEG", quality=95)) + 500
    assert len(encode(seen, "PNG", optimize=True)) > limit
    options = PrepareOptions(reencode_jpeg_as="PNG", strict=True, max_bytes=limit)
    prepared = prepare_image(data, options=options)
    assert prepared.format == "JPEG"
    assert prepared.changes == ("exif-orientation", "re-encoded")
    assert len(prepared.data) <= limit
    out = decode(prepared.data)
    assert out.size == (120, 60)
    assert ORIENTATION not in out.getexif()
    assert pixels(out.convert("L"))[:20, :30].min() > 200


def test_jpeg_sources_stay_jpeg_when_reencoded_by_default() -> None:
    assert PrepareOptions().reencode_jpeg_as == "JPEG"
    data = with_orientation(marked(), 3, "JPEG")
    options = PrepareOptions(strict=True)
    prepared = prepare_image(data, options=options)
    assert (prepared.format, prepared.changes) == ("JPEG", ("exif-orientation", "re-encoded"))
    out = decode(prepared.data)
    assert ORIENTATION not in out.getexif()
    assert pixels(out.convert("L"))[:10, :15].min() > 200
    # other sources still become PNG
    tiff = encode(marked(), "TIFF")
    assert prepare_image(tiff, options=options).format == "PNG"


def test_rotated_photo_uploads_far_smaller_as_jpeg_than_as_png(astronaut: bytes) -> None:
    data = with_orientation(decode(astronaut).convert("RGB"), 6, "JPEG")
    as_jpeg = prepare_image(data)
    as_png = prepare_image(data, options=PrepareOptions(reencode_jpeg_as="PNG"))
    assert (as_jpeg.format, as_png.format) == ("JPEG", "PNG")
    assert as_jpeg.size == as_png.size == (512, 512)
    assert len(as_jpeg.data) * 3 < len(as_png.data)
    difference = np.abs(pixels(decode(as_jpeg.data)) - pixels(decode(as_png.data)))
    assert difference.mean() < 2


def test_jpeg_sources_become_lossless_png_when_asked() -> None:
    options = PrepareOptions(reencode_jpeg_as="PNG")
    data = with_orientation(noise(40, 20), 3, "JPEG")
    prepared = prepare_image(data, options=options)
    assert (prepared.format, prepared.changes) == ("PNG", ("exif-orientation",))
    upright = decode(data).transpose(Image.Transpose.ROTATE_180)
    assert np.array_equal(pixels(decode(prepared.data)), pixels(upright))
    downscaled = prepare_image(
        encode(noise(200, 100), "JPEG"), options=replace(options, max_pixels=5000)
    )
    assert (downscaled.format, downscaled.changes) == ("PNG", ("downscaled",))
    with Image.open(io.BytesIO(encode(noise(40, 20), "JPEG"))) as image:
        assert prepare_image(image, options=options).format == "PNG"
        assert prepare_image(image).format == "JPEG"
    # a JPEG that is only too big stays a JPEG whatever the option: a PNG would be bigger
    big = encode(smooth(200, 100), "JPEG", quality=100, subsampling=0)
    limit = len(big) - 1000
    too_big = prepare_image(big, options=replace(options, max_bytes=limit))
    assert (too_big.format, too_big.changes) == ("JPEG", ("re-encoded",))


def test_strict_mode_stops_at_jpeg_quality_95(astronaut: bytes) -> None:
    display = decode(astronaut).convert("RGB").crop((0, 0, 200, 100))
    data = with_orientation(display, 2, "JPEG")
    seen = decode(data).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    limit = (len(encode(seen, "JPEG", quality=95)) + len(encode(seen, "JPEG", quality=80))) // 2
    options = PrepareOptions(reencode_jpeg_as="JPEG", max_bytes=limit)
    assert prepare_image(data, options=options).format == "JPEG"
    with pytest.raises(InvalidImageError, match="strict mode forbids lower quality"):
        prepare_image(data, options=replace(options, strict=True))


def test_orientation_and_downscale_combine() -> None:
    display = Image.new("RGB", (600, 300), "black")
    display.paste((255, 255, 255), (0, 0, 150, 100))
    data = with_orientation(display, 8, "JPEG")
    prepared = prepare_image(data, options=PrepareOptions(max_pixels=10_000))
    assert prepared.display_size == (600, 300)
    width, height = prepared.size
    assert width * height <= 10_000
    assert abs(width / height - 2.0) < 0.05
    assert prepared.scale == pytest.approx(width / 600)
    assert prepared.format == "JPEG"
    assert set(prepared.changes) == {"downscaled", "exif-orientation", "re-encoded"}
    grey = pixels(decode(prepared.data).convert("L"))
    assert grey[: height // 5, : width // 5].min() > 200
    assert grey[-height // 2 :, -width // 2 :].max() < 30


# --- pixel limit ------------------------------------------------------------------------------


def test_downscale_above_max_pixels(astronaut: bytes) -> None:
    prepared = prepare_image(astronaut, options=PrepareOptions(max_pixels=10_000))
    assert prepared.size == (100, 100)
    assert prepared.display_size == (512, 512)
    assert prepared.scale == pytest.approx(100 / 512)
    assert prepared.changes == ("downscaled",)
    assert prepared.source_sha256 == hashlib.sha256(astronaut).hexdigest()
    original = pixels(decode(astronaut).convert("RGB")).mean(axis=(0, 1))
    assert np.abs(pixels(decode(prepared.data)).mean(axis=(0, 1)) - original).max() < 3


def test_downscale_of_a_jpeg(astronaut: bytes) -> None:
    data = encode(decode(astronaut).convert("RGB"), "JPEG", quality=90)
    prepared = prepare_image(data, options=PrepareOptions(max_pixels=10_000))
    assert prepared.size == (100, 100)
    assert (prepared.format, prepared.changes) == ("JPEG", ("downscaled", "re-encoded"))


@pytest.mark.parametrize(
    ("size", "limit", "expected"),
    [
        ((3000, 1), 1000, (1000, 1)),
        ((1, 3000), 1000, (1, 1000)),
        ((101, 99), 500, (22, 22)),
        ((640, 480), 10_000, (115, 86)),
    ],
)
def test_downscale_keeps_aspect_within_the_limit(
    size: tuple[int, int], limit: int, expected: tuple[int, int]
) -> None:
    prepared = prepare_image(Image.new("L", size, 90), options=PrepareOptions(max_pixels=limit))
    assert prepared.size == expected
    assert expected[0] * expected[1] <= limit


def test_big_jpeg_is_decoded_at_reduced_scale(
    astronaut: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    drafts: list[tuple[int, int]] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(image: JpegImagePlugin.JpegImageFile, mode: str | None, size: Any) -> Any:
        result = original(image, mode, size)
        drafts.append(image.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    data = encode(decode(astronaut).convert("RGB"), "JPEG")
    prepared = prepare_image(data, options=PrepareOptions(max_pixels=10_000))
    # libjpeg decoded 128x128 (1/4 scale), not 512x512, before resampling to 100x100
    assert drafts == [(128, 128)]
    assert prepared.size == (100, 100)


def test_palette_image_is_widened_before_resampling() -> None:
    image = noise(200, 100).convert("P")
    prepared = prepare_image(image, options=PrepareOptions(max_pixels=2000))
    assert decode(prepared.data).mode == "RGB"
    assert "converted-mode-P" in prepared.changes


def test_strict_mode_refuses_to_downscale(astronaut: bytes) -> None:
    strict = PrepareOptions(strict=True, max_pixels=10_000)
    with pytest.raises(InvalidImageError, match=r"512x512 = 262,144 pixels .* 10,000 pixels"):
        prepare_image(astronaut, options=strict, name="astronaut.png")
    with pytest.raises(InvalidImageError, match="strict"):
        prepare_image(noise(200, 100), options=strict)


# --- byte limit -------------------------------------------------------------------------------


def test_reencode_above_max_bytes(astronaut: bytes) -> None:
    prepared = prepare_image(astronaut, options=PrepareOptions(max_bytes=200_000))
    assert prepared.format == "JPEG"
    assert prepared.changes == ("re-encoded",)
    assert len(prepared.data) <= 200_000
    assert prepared.size == (512, 512)
    difference = np.abs(pixels(decode(prepared.data)) - pixels(decode(astronaut).convert("RGB")))
    assert difference.mean() < 4


def test_strict_mode_refuses_to_reencode(astronaut: bytes) -> None:
    with pytest.raises(InvalidImageError, match=r"791,555 bytes.*200,000 bytes.*strict"):
        prepare_image(astronaut, options=PrepareOptions(max_bytes=200_000, strict=True))


def test_too_big_even_as_jpeg_is_refused(astronaut: bytes) -> None:
    with pytest.raises(InvalidImageError, match="cannot fit under the limit of 1,000 bytes"):
        prepare_image(astronaut, options=PrepareOptions(max_bytes=1000))


def test_bloated_png_is_recompressed_losslessly() -> None:
    image = smooth(200, 100)
    data = encode(image, "PNG", compress_level=0)
    limit = len(data) // 2
    assert len(encode(image, "PNG")) < limit
    prepared = prepare_image(data, options=PrepareOptions(max_bytes=limit))
    assert (prepared.format, prepared.changes) == ("PNG", ("re-encoded",))
    assert np.array_equal(pixels(decode(prepared.data)), pixels(image))


def test_png_close_to_the_limit_is_optimized_losslessly() -> None:
    image = decode((SAMPLES / "camera.png").read_bytes())
    plain = len(encode(image, "PNG", compress_level=1))
    optimized = len(encode(image, "PNG", optimize=True))
    limit = (plain + optimized) // 2
    assert optimized <= limit < plain
    data = encode(image, "PNG", compress_level=0)
    prepared = prepare_image(data, options=PrepareOptions(max_bytes=limit))
    assert (prepared.format, prepared.changes) == ("PNG", ("re-encoded",))
    assert len(prepared.data) <= limit
    assert np.array_equal(pixels(decode(prepared.data)), pixels(image))


def test_big_jpeg_stays_jpeg_at_lower_quality() -> None:
    image = smooth(200, 100)
    data = encode(image, "JPEG", quality=100, subsampling=0)
    limit = len(encode(image, "JPEG", quality=90)) + 100
    assert len(data) > limit
    prepared = prepare_image(data, options=PrepareOptions(max_bytes=limit))
    assert (prepared.format, prepared.changes) == ("JPEG", ("re-encoded",))
    assert np.abs(pixels(decode(prepared.data)) - pixels(image)).mean() < 3


def test_transparent_png_over_the_limit_is_flattened_on_white() -> None:
    image = noise(100, 100, "RGBA")
    image.putpixel((0, 0), (10, 20, 30, 0))
    prepared = prepare_image(image, options=PrepareOptions(max_bytes=25_000))
    assert prepared.format == "JPEG"
    assert "alpha-flattened" in prepared.changes
    assert pixels(decode(prepared.data))[0, 0].min() > 200


def test_strict_mode_refuses_a_lossy_encoding_of_pixels() -> None:
    with pytest.raises(InvalidImageError, match="strict mode forbids lossy"):
        prepare_image(noise(100, 100), options=PrepareOptions(max_bytes=10_000, strict=True))


# --- refused inputs ---------------------------------------------------------------------------


def truncated(fmt: str, keep: float = 0.5) -> bytes:
    data = encode(noise(64, 64), fmt)
    return data[: int(len(data) * keep)]


BAD_BYTES = {
    "empty": (b"", "empty"),
    "text": (b"just some words\nand a second line\n", "looks like text"),
    "html": (b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>", "HTML"),
    "random": (np.random.default_rng(7).bytes(4096), "not a recognised image"),
    "truncated-jpeg": (truncated("JPEG"), "truncated"),
    "jpeg-without-end": (encode(noise(64, 64), "JPEG")[:-2], "truncated"),
    "truncated-png": (truncated("PNG"), "truncated"),
    "truncated-webp": (truncated("WEBP"), "truncated"),
    "truncated-tiff": (truncated("TIFF"), "truncated"),
    "truncated-gif": (truncated("GIF"), "truncated"),
    "truncated-bmp": (truncated("BMP"), "truncated"),
}


@pytest.mark.parametrize("case", BAD_BYTES)
def test_bad_bytes_are_refused_with_a_reason(case: str) -> None:
    data, reason = BAD_BYTES[case]
    with pytest.raises(ValueError, match=reason) as caught:
        prepare_image(data, name="upload.bin")
    assert isinstance(caught.value, InvalidImageError)
    assert str(caught.value).startswith("'upload.bin': ")


def test_truncated_image_error_chains_pillow_error() -> None:
    with pytest.raises(InvalidImageError) as caught:
        prepare_image(truncated("JPEG"))
    assert isinstance(caught.value.__cause__, OSError)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF", "GIF", "BMP", "WEBP"])
def test_truncation_is_caught_even_when_pillow_is_told_to_ignore_it(
    fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # some applications switch this on globally; uploads must not become half-grey images
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(InvalidImageError, match="truncated"):
        prepare_image(truncated(fmt))
    whole = encode(noise(64, 64), fmt)
    assert prepare_image(whole).size == (64, 64)


def test_missing_path_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope.jpg"
    with pytest.raises(InvalidImageError, match="no such file") as caught:
        prepare_image(path)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value.__cause__, FileNotFoundError)
    with pytest.raises(InvalidImageError, match="URLs are not fetched"):
        prepare_image("https://example.com/p.jpg")


def test_directory_and_special_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidImageError, match="is a directory") as caught:
        prepare_image(tmp_path)
    assert str(tmp_path) in str(caught.value)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(InvalidImageError, match="not a regular file"):
        prepare_image(fifo)


def test_path_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("shopping list")
    with pytest.raises(InvalidImageError, match=r"notes\.png'.*looks like text"):
        prepare_image(path)


# --- decompression bombs ----------------------------------------------------------------------


def test_bomb_over_pillows_error_limit_is_refused() -> None:
    with pytest.raises(
        InvalidImageError, match="refused as a possible decompression bomb"
    ) as caught:
        prepare_image(png_declaring(20_000, 20_000))
    assert isinstance(caught.value.__cause__, Image.DecompressionBombError)


def test_bomb_over_pillows_warning_limit_is_refused_when_warnings_are_errors() -> None:
    # the suite runs with warnings as errors, so Pillow raises its warning inside Image.open
    with pytest.raises(
        InvalidImageError, match="refused as a possible decompression bomb"
    ) as caught:
        prepare_image(png_declaring(10_000, 10_000))
    assert isinstance(caught.value.__cause__, Image.DecompressionBombWarning)


def test_bomb_is_refused_when_pillow_only_warns() -> None:
    with (
        pytest.warns(Image.DecompressionBombWarning),
        pytest.raises(
            InvalidImageError, match=r"declares 10000x10000 = 100,000,000 pixels.*89,478,485"
        ),
    ):
        prepare_image(png_declaring(10_000, 10_000))


def test_gif_bomb_is_refused() -> None:
    with pytest.raises(InvalidImageError, match="refused as a possible decompression bomb"):
        prepare_image(gif_declaring(30_000, 30_000))


def test_bomb_limit_is_checked_before_decoding() -> None:
    # the PNG has no pixel data: decoding it would fail as truncated, not as a bomb
    with pytest.raises(InvalidImageError, match="refused before decoding") as caught:
        prepare_image(png_declaring(2000, 2000), options=PrepareOptions(bomb_pixels=1_000_000))
    assert "2000x2000 = 4,000,000 pixels" in str(caught.value)
    assert caught.value.__cause__ is None
    with pytest.raises(InvalidImageError, match="truncated"):
        prepare_image(png_declaring(2000, 2000))


def test_default_bomb_limit_follows_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(InvalidImageError, match="limit of 40,000"):
        prepare_image(png_declaring(300, 300), options=PrepareOptions(max_pixels=10_000))


# --- hashing, sniffing, options, threads ------------------------------------------------------


def test_source_sha256(tmp_path: Path) -> None:
    data = encode(noise(16, 16), "PNG")
    digest = hashlib.sha256(data).hexdigest()
    path = tmp_path / "a.png"
    path.write_bytes(data)
    assert prepare_image(data).source_sha256 == digest
    assert prepare_image(path).source_sha256 == digest
    assert prepare_image(io.BytesIO(data)).source_sha256 == digest
    rotated = with_orientation(noise(16, 8), 6, "JPEG")
    assert prepare_image(rotated).source_sha256 == hashlib.sha256(rotated).hexdigest()
    for source in (noise(16, 16), np.zeros((4, 4), np.uint8)):
        prepared = prepare_image(source)
        assert prepared.source_sha256 == hashlib.sha256(prepared.data).hexdigest()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (encode(noise(4, 4), "PNG"), "PNG"),
        (encode(noise(4, 4), "JPEG"), "JPEG"),
        (encode(noise(4, 4), "WEBP"), "WEBP"),
        (encode(noise(4, 4), "GIF"), "GIF"),
        (encode(noise(4, 4), "TIFF"), "TIFF"),
        (encode(noise(4, 4), "BMP"), "BMP"),
        (encode(noise(4, 4), "PPM"), "PPM"),
        (encode(noise(4, 4), "TGA"), None),  # no signature: not accepted
        (b"", None),
        (b"plain text", None),
        (b"<html></html>", None),
        (np.random.default_rng(3).bytes(256), None),
    ],
)
def test_sniff_format(data: bytes, expected: str | None) -> None:
    assert sniff_format(data) == expected


def test_options_are_validated_and_frozen() -> None:
    with pytest.raises(ValueError, match="max_pixels"):
        PrepareOptions(max_pixels=0)
    with pytest.raises(ValueError, match="reencode_jpeg_as"):
        PrepareOptions(reencode_jpeg_as="GIF")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bomb_pixels"):
        PrepareOptions(bomb_pixels=-1)
    with pytest.raises(FrozenInstanceError):
        PrepareOptions().strict = True  # type: ignore[misc]


def test_repr_leaves_out_the_bytes() -> None:
    prepared = prepare_image(encode(noise(64, 64), "PNG"), name="x.png")
    assert "data=" not in repr(prepared)
    assert "x.png" in repr(prepared)
    assert isinstance(prepared, PreparedImage)


def test_concurrent_calls_agree_and_touch_no_global(astronaut: bytes) -> None:
    options = PrepareOptions(max_pixels=20_000)
    sources: list[bytes] = [
        astronaut,
        with_orientation(marked(), 5, "JPEG"),
        encode(noise(64, 64), "TIFF"),
        truncated("PNG"),
        png_declaring(20_000, 20_000),
        b"not an image",
    ] * 4

    def outcome(data: bytes) -> tuple[str, str]:
        try:
            prepared = prepare_image(data, options=options)
        except InvalidImageError as exc:
            return "error", str(exc)
        return "ok", hashlib.sha256(prepared.data).hexdigest()

    expected = [outcome(data) for data in sources]
    filters = list(warnings.filters)
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(outcome, sources))
    assert results == expected
    assert [kind for kind, _ in expected[:6]] == ["ok", "ok", "ok", "error", "error", "error"]
    after = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    assert after == before
    assert warnings.filters == filters


def test_reencode_returns_its_steps_and_leaves_the_callers_image_alone() -> None:
    from clipnormals._images.reencode import EncodePlan, reencode

    image = noise(40, 20, "RGBA")
    before = image.tobytes()
    plan = EncodePlan(
        label="'x.png'",
        target=(20, 10),
        orientation=6,
        owned=False,
        lossless_first=False,
        jpeg_qualities=(95,),
        max_bytes=30_000_000,
    )
    first = reencode(image, plan)
    second = reencode(image, plan)
    assert first == second  # a value: nothing accumulates between calls
    assert (first.format, first.size) == ("JPEG", (10, 20))
    assert first.changes == ("downscaled", "exif-orientation", "alpha-flattened", "re-encoded")
    assert image.tobytes() == before
    assert image.size == (40, 20)
    with pytest.raises(FrozenInstanceError):
        plan.max_bytes = 1  # type: ignore[misc]


def test_a_jpeg_that_is_only_too_big_stays_jpeg_even_when_png_is_asked_for() -> None:
    # reencode_jpeg_as="PNG" is for JPEGs whose pixels change (turned, downscaled); one that is
    # only over the byte limit is recompressed as JPEG (a PNG of a photo is bigger still).
    flat = Image.new("RGB", (600, 600), (120, 90, 60))  # a picture whose PNG would fit, even
    data = encode(flat, "JPEG", quality=100)
    options = PrepareOptions(max_bytes=len(data) - 1, reencode_jpeg_as="PNG")
    prepared = prepare_image(data, options=options)
    assert prepared.format == "JPEG"
    assert prepared.changes == ("re-encoded",)
    assert len(prepared.data) <= options.max_bytes


def test_a_converted_png_of_exactly_max_bytes_is_kept_as_it_is() -> None:
    rng = np.random.default_rng(5)
    image = Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    fast_png = encode(image, "PNG", compress_level=1)  # what the conversion writes first
    options = PrepareOptions(max_bytes=len(fast_png))
    prepared = prepare_image(encode(image, "BMP"), options=options)
    assert prepared.changes == ("converted-from-BMP",)  # not optimized, not "re-encoded"
    assert prepared.data == fast_png


# --- the header's declared size, which decides where the async client prepares ---------------


def _encoded(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("fmt", "params"),
    [
        ("PNG", {}),
        ("JPEG", {}),
        ("JPEG", {"progressive": True}),
        ("JPEG", {"exif": b"Exif\x00\x00" + bytes(200), "comment": b"x" * 300}),
    ],
)
def test_declared_pixels_reads_the_header_of_png_and_jpeg(fmt: str, params: dict[str, Any]) -> None:
    from clipnormals._images.header import declared_pixels

    data = _encoded(Image.new("RGB", (97, 61), (10, 200, 30)), fmt, **params)
    assert declared_pixels(data) == 97 * 61
    assert declared_pixels(bytearray(data)) == 97 * 61


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x89PNG\r\n\x1a\n",  # a signature and nothing else
        b"\xff\xd8\xff\xda\x00\x02",  # a scan before any frame header
        b"\xff\xd8\x00\x00\x00\x00",  # not a marker where one must be
        b"GIF89a" + bytes(20),  # a format this reader does not follow
    ],
)
def test_declared_pixels_is_none_when_the_header_cannot_be_followed(data: bytes) -> None:
    from clipnormals._images.header import declared_pixels

    assert declared_pixels(data) is None


def test_small_enough_inline_goes_by_the_declared_pixels_not_the_byte_count() -> None:
    from clipnormals._images.header import INLINE_MAX_BYTES, INLINE_MAX_PIXELS, small_enough_inline

    small = _encoded(Image.new("RGB", (96, 120)), "PNG")
    assert small_enough_inline(small)
    # A few kilobytes declaring 25 million pixels: one colour compresses to almost nothing.
    huge = _encoded(Image.new("L", (5000, 5000)), "PNG")
    assert len(huge) <= INLINE_MAX_BYTES
    assert not small_enough_inline(huge)
    just_over = _encoded(Image.new("L", (INLINE_MAX_PIXELS + 1, 1)), "PNG")
    assert not small_enough_inline(just_over)
    noisy = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    large_file = _encoded(Image.fromarray(noisy), "PNG")
    assert len(large_file) > INLINE_MAX_BYTES
    assert not small_enough_inline(large_file)
    assert not small_enough_inline(_encoded(Image.new("RGB", (8, 8)), "WEBP"))
