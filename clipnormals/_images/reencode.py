"""Re-encoding decoded pixels for upload: mode conversion, downscale, orientation, PNG or JPEG.

:func:`reencode` takes a decoded PIL image and returns the bytes to upload: the mode brought to
one PNG stores and the API reads, the image downscaled to a target size and turned upright,
then encoded as PNG (lossless) or JPEG, falling in quality until the result fits the byte
limit. Every step that changes something is appended to the caller's ``changes`` list, with the
names :class:`clipnormals.PreparedImage` documents. The output carries no EXIF, so no server
rotates it a second time. Blocking, and sharing no state between calls.
"""

from __future__ import annotations

import io
import math
from typing import Any, Literal

import numpy as np
from PIL import Image

from .._errors import InvalidImageError

__all__ = ["fit", "oriented_size", "reencode"]

_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_JPEG_QUALITIES = (95, 90, 85, 80)
# On a 24 MP photo zlib level 1 takes ~1 s, level 6 ~4 s and optimize=True ~30 s, for files of
# 16.5, 13.0 and 12.2 MB: the fast level is tried first, and optimize only when it may fit.
_PNG_FAST_LEVEL = 1
_OPTIMIZE_MARGIN = 1.4
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "F"})
_RGB_MODES = frozenset({"RGB", "RGBA", "RGBX", "RGBa", "P", "PA"})


# --- geometry ---------------------------------------------------------------------------------


def oriented_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """The (width, height) a viewer shows for a stored ``size`` with this EXIF orientation."""
    return (size[1], size[0]) if orientation >= 5 else size


def fit(size: tuple[int, int], max_pixels: int) -> tuple[int, int] | None:
    """The largest size of the same aspect within max_pixels, None when size already fits."""
    width, height = size
    if width * height <= max_pixels:
        return None
    ratio = math.sqrt(max_pixels / (width * height))
    new_width = max(1, int(width * ratio))
    new_height = max(1, min(int(height * ratio), max_pixels // new_width))
    return min(new_width, max(1, max_pixels // new_height)), new_height


# --- pixels -----------------------------------------------------------------------------------


def reencode(
    image: Image.Image,
    changes: list[str],
    *,
    label: str,
    target: tuple[int, int] | None,
    orientation: int,
    owned: bool,
    from_jpeg: bool,
    size_only: bool,
    jpeg_as: Literal["PNG", "JPEG"],
    max_bytes: int,
    strict: bool,
) -> tuple[bytes, str, tuple[int, int]]:
    """Encode ``image`` for upload; return the bytes, their format and the uploaded size.

    Args:
        image: decoded pixels, as stored (before EXIF orientation).
        changes: what was done so far; the steps taken here are appended.
        label: names the source in error messages.
        target: the size to downscale to, ``None`` to keep the size.
        orientation: the EXIF orientation to apply, 1 for none.
        owned: whether ``image`` may be modified; the caller's own image is copied first.
        from_jpeg: the pixels came from a JPEG, so a lossy encoding loses little more.
        size_only: the source was already an API format and is re-encoded only to get under
            ``max_bytes``.
        jpeg_as: the format for a JPEG source that must be re-encoded for another reason.
        max_bytes: the byte limit of the upload.
        strict: refuse rather than encode lossily (a JPEG source may still become a JPEG at
            the first quality).
    """
    pixels, icc = _normalise_mode(image, changes, resizing=target is not None)
    if target is not None:
        pixels = pixels.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
        changes.append("downscaled")
    if orientation != 1:
        pixels = pixels.transpose(_TRANSPOSE[orientation])
        changes.append("exif-orientation")
    if pixels is image and not owned:
        # saving sets attributes on the image, which must not happen to the caller's object
        pixels = image.copy()
    if size_only:
        changes.append("re-encoded")
    # a JPEG that is only too big never shrinks by becoming a PNG
    lossless = not from_jpeg or (jpeg_as == "PNG" and not size_only)
    data, fmt = _encode(
        pixels,
        icc,
        changes,
        label,
        max_bytes=max_bytes,
        strict=strict,
        lossless=lossless,
        jpeg_in_strict=from_jpeg,
    )
    return data, fmt, pixels.size


def _normalise_mode(
    image: Image.Image, changes: list[str], *, resizing: bool
) -> tuple[Image.Image, bytes | None]:
    """Bring any mode to one PNG stores and the API reads: 1, P, L, LA, RGB or RGBA.

    Returns the image and the ICC profile still valid for it. 16-bit and 32-bit integer data
    is taken as 16-bit and scaled to 8 bits; float data in [0, 1] is scaled, other values
    clipped to [0, 255].
    """
    mode = image.mode
    icc = image.info.get("icc_profile") or None
    transparent = image.has_transparency_data
    if mode in ("LA", "RGBA") or (mode in ("L", "RGB") and not (resizing and transparent)):
        return image, icc
    # bilevel and palette images only need widening when they are resampled
    if mode in ("1", "P") and not resizing and not transparent:
        return image, icc
    family = "grey" if mode in _GREY_MODES or mode.startswith("I;16") else "rgb"
    if mode.startswith("I"):
        wide = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        converted = Image.fromarray(((wide + 128) // 257).astype(np.uint8))
    elif mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0)
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
        converted = Image.fromarray(np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8))
    elif transparent:
        converted = image.convert("LA" if mode in ("LA", "La") else "RGBA")
    else:
        converted = image.convert("L" if family == "grey" else "RGB")
    if family == "rgb" and mode not in _RGB_MODES:
        icc = None  # a CMYK or Lab profile does not describe RGB pixels
    changes.append(f"converted-mode-{mode}")
    return converted, icc


# --- encoding ---------------------------------------------------------------------------------


def _encode(
    image: Image.Image,
    icc: bytes | None,
    changes: list[str],
    label: str,
    *,
    max_bytes: int,
    strict: bool,
    lossless: bool,
    jpeg_in_strict: bool,
) -> tuple[bytes, str]:
    """PNG when it fits max_bytes, else JPEG at falling quality; strict mode stops earlier."""
    data = b""
    if lossless:
        data = _save(image, "PNG", icc_profile=icc, compress_level=_PNG_FAST_LEVEL)
        if len(data) <= max_bytes:
            return data, "PNG"
        if len(data) <= max_bytes * _OPTIMIZE_MARGIN:
            data = _save(image, "PNG", icc_profile=icc, optimize=True)
            if len(data) <= max_bytes:
                _note(changes, "re-encoded")
                return data, "PNG"
        if strict and not jpeg_in_strict:
            raise InvalidImageError(
                f"{label}: {len(data):,} bytes as PNG, above the limit of {max_bytes:,} bytes "
                "(strict mode forbids lossy re-encoding)"
            )
    flat = _flatten_for_jpeg(image, changes)
    qualities = _JPEG_QUALITIES[:1] if strict else _JPEG_QUALITIES
    for quality in qualities:
        data = _save(flat, "JPEG", icc_profile=icc, quality=quality)
        if len(data) <= max_bytes:
            _note(changes, "re-encoded")
            return data, "JPEG"
    raise InvalidImageError(
        f"{label}: cannot fit under the limit of {max_bytes:,} bytes: {len(data):,} bytes even as "
        f"JPEG quality {qualities[-1]}" + (" (strict mode forbids lower quality)" if strict else "")
    )


def _note(changes: list[str], change: str) -> None:
    if change not in changes:
        changes.append(change)


def _flatten_for_jpeg(image: Image.Image, changes: list[str]) -> Image.Image:
    if image.mode in ("L", "RGB") and not image.has_transparency_data:
        return image
    if image.has_transparency_data:
        grey = image.mode in ("L", "LA")
        backdrop = Image.new("RGBA", image.size, (255, 255, 255, 255))
        flat = Image.alpha_composite(backdrop, image.convert("RGBA"))
        changes.append("alpha-flattened")
        return flat.convert("L" if grey else "RGB")
    return image.convert("L" if image.mode == "1" else "RGB")


def _save(image: Image.Image, fmt: str, **params: Any) -> bytes:
    # no exif= is passed: the output carries no orientation tag (nor any other EXIF)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()
