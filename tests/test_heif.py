"""Phone photos: HEIC (through the optional ``heif`` extra) and AVIF are converted before upload.

The HEIC files are real ones, written by ``pillow-heif`` at test time. Absence of the plugin is
simulated honestly, in a fresh interpreter whose import of ``pillow_heif`` is blocked.
"""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, features

from clipnormals import InvalidImageError, PrepareOptions
from clipnormals._batch.discover import discover
from clipnormals.images import prepare_image, sniff_format

pillow_heif = pytest.importorskip("pillow_heif", reason="the 'heif' extra is not installed")

# raw pixels = display pixels transposed by the inverse of what EXIF orientation k asks
INVERSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
AVIF = features.check_module("avif") if "avif" in features.modules else False


def marked(width: int = 64, height: int = 48) -> Image.Image:
    """Black, with a white block in the top-left corner: every orientation moves it."""
    image = Image.new("RGB", (width, height), "black")
    image.paste((255, 255, 255), (0, 0, 16, 12))
    return image


def exif(orientation: int) -> bytes:
    tags = Image.Exif()
    tags[0x0112] = orientation
    return tags.tobytes()


def heic(display: Image.Image, orientation: int = 1) -> bytes:
    """A HEIC file as a phone writes it: pixels stored turned, with the orientation to undo."""
    raw = display.transpose(INVERSE[orientation]) if orientation in INVERSE else display
    heif_file = pillow_heif.from_pillow(raw)
    heif_file.info["exif"] = exif(orientation)
    buffer = io.BytesIO()
    heif_file.save(buffer, quality=90)
    return buffer.getvalue()


def avif(display: Image.Image, orientation: int = 1, **params: Any) -> bytes:
    raw = display.transpose(INVERSE[orientation]) if orientation in INVERSE else display
    buffer = io.BytesIO()
    raw.save(buffer, format="AVIF", exif=exif(orientation), quality=90, **params)
    return buffer.getvalue()


def decoded(data: bytes) -> np.ndarray[Any, Any]:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("L")).astype(np.int16)


def assert_upright(data: bytes) -> None:
    grey = decoded(data)
    assert grey.shape == (48, 64)
    assert grey[:12, :16].min() > 180  # the marker is where the user sees it
    for corner in (grey[-12:, -16:], grey[:12, -16:], grey[-12:, :16]):
        assert corner.max() < 70


def test_a_real_heic_file_is_converted_to_jpeg() -> None:
    data = heic(marked())
    assert data[4:12] == b"ftypheic"
    assert sniff_format(data) == "HEIF"
    prepared = prepare_image(data, name="IMG_0001.HEIC")
    assert (prepared.format, prepared.content_type) == ("JPEG", "image/jpeg")
    assert prepared.filename == "IMG_0001.jpg"
    assert prepared.changes == ("converted-from-HEIF", "re-encoded")
    assert prepared.size == prepared.display_size == (64, 48)
    assert_upright(prepared.data)
    with Image.open(io.BytesIO(prepared.data)) as out:
        assert 0x0112 not in out.getexif()


def test_heic_follows_the_lossy_source_rules() -> None:
    data = heic(marked())
    as_png = prepare_image(data, options=PrepareOptions(reencode_jpeg_as="PNG"))
    assert (as_png.format, as_png.changes) == ("PNG", ("converted-from-HEIF",))
    strict = prepare_image(data, options=PrepareOptions(strict=True))
    assert strict.format == "JPEG"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_heic_orientation_is_applied(orientation: int) -> None:
    prepared = prepare_image(heic(marked(), orientation))
    assert prepared.size == (64, 48)
    assert_upright(prepared.data)


@pytest.mark.skipif(not AVIF, reason="this Pillow reads no AVIF (needs Pillow >= 11.2)")
@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_avif_is_converted_with_its_orientation(orientation: int) -> None:
    data = avif(marked(), orientation)
    assert sniff_format(data) == "AVIF"
    prepared = prepare_image(data, name="photo.avif")
    assert prepared.format == "JPEG"
    assert prepared.changes[0] == "converted-from-AVIF"
    assert prepared.size == prepared.display_size == (64, 48)
    assert_upright(prepared.data)


def test_a_heic_with_a_zero_filled_tail_is_refused() -> None:
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))
    data = heic(photo)
    keep = len(data) // 2
    with pytest.raises(InvalidImageError, match=r"truncated|corrupt"):
        prepare_image(data[:keep] + bytes(len(data) - keep))


def test_discovery_finds_heic_and_avif_by_their_bytes(tmp_path: Path) -> None:
    (tmp_path / "IMG_0001").write_bytes(heic(marked()))
    (tmp_path / "notes").write_text("not an image")
    found = discover([tmp_path])
    assert [f.key for f in found.files] == ["IMG_0001"]


_WITHOUT_PLUGIN = textwrap.dedent(
    """
    import sys
    sys.modules["pillow_heif"] = None  # "import pillow_heif" now raises ImportError
    from clipnormals import InvalidImageError
    from clipnormals.images import prepare_image, sniff_format
    data = open(sys.argv[1], "rb").read()
    print(sniff_format(data))
    try:
        prepare_image(data, name="IMG_0001.HEIC")
    except InvalidImageError as exc:
        print(exc)
    """
)


def test_without_the_extra_the_error_says_what_to_install(tmp_path: Path) -> None:
    path = tmp_path / "IMG_0001.HEIC"
    path.write_bytes(heic(marked()))
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_PLUGIN, str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    sniffed, message = result.stdout.strip().splitlines()
    assert sniffed == "HEIF"
    assert message.startswith("'IMG_0001.HEIC': a HEIF/HEIC image")
    assert "pip install 'clipnormals[heif]'" in message


def test_the_plugin_is_registered_only_at_first_need() -> None:
    script = textwrap.dedent(
        """
        import sys
        import clipnormals, PIL.Image
        from clipnormals.images import prepare_image
        import io
        buffer = io.BytesIO()
        PIL.Image.new("RGB", (4, 4)).save(buffer, "PNG")
        prepare_image(buffer.getvalue())
        print("pillow_heif" in sys.modules, "HEIF" in PIL.Image.OPEN)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.split() == ["False", "False"]
