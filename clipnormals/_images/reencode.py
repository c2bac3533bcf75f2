"""Re-encoding decoded pixels for upload: mode conversion, downscale, orientation, PNG or JPEG.

:func:`reencode` takes a decoded PIL image and an :class:`EncodePlan` decided beforehand, and
returns an :class:`Encoded`: the bytes to upload, the mode brought to one PNG stores and the API
reads, the image downscaled to the plan's target and turned upright, then encoded as PNG
(lossless) or JPEG, falling in quality until the result fits the byte limit, and the steps
taken, with the names :class:`clipnormals.PreparedImage` documents. The output carries no EXIF,
so no server rotates it a second time. Blocking, and sharing no state between calls.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from PIL import Image

from .._errors import InvalidImageError
from .orientation import EXIF_TO_DISPLAY

__all__ = ["JPEG_QUALITIES", "EncodePlan", "Encoded", "fit", "reencode"]

#: The JPEG qualities tried in turn when lossy encoding is allowed; strict mode stops at the first.
JPEG_QUALITIES: Final = (95, 90, 85, 80)
# On a 24 MP photo zlib level 1 takes ~1 s, level 6 ~4 s and optimize=True ~30 s, for files of
# 16.5, 13.0 and 12.2 MB: the fast level is tried first, and optimize only when it may fit.
_PNG_FAST_LEVEL = 1
_OPTIMIZE_MARGIN = 1.4
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "F"})
_RGB_MODES = frozenset({"RGB", "RGBA", "RGBX", "RGBa", "P", "PA"})


@dataclass(frozen=True, slots=True)
class EncodePlan:
    """What :func:`reencode` does to one image, decided once by the caller.

    Attributes:
        label: names the source in error messages.
        target: the size to downscale to, ``None`` to keep the size.
        orientation: the EXIF orientation to apply (1..8), 1 for none.
        owned: whether the image may be modified; the caller's own image is copied first.
        lossless_first: try PNG before JPEG (the source was not lossy, or the options ask
            for PNG).
        jpeg_qualities: the JPEG qualities allowed, in order; ``()`` forbids JPEG.
        max_bytes: the byte limit of the upload.
        recompress: the source was already an API format and is re-encoded only to get under
            ``max_bytes`` (noted as ``re-encoded`` whatever the result).
        strict: the options' strict mode, for the messages of refusals.
    """

    label: str
    target: tuple[int, int] | None
    orientation: int
    owned: bool
    lossless_first: bool
    jpeg_qualities: tuple[int, ...]
    max_bytes: int
    recompress: bool = False
    strict: bool = False


@dataclass(frozen=True, slots=True)
class Encoded:
    """What :func:`reencode` made: the bytes, their format, the uploaded size, the steps."""

    data: bytes
    format: str
    size: tuple[int, int]
    changes: tuple[str, ...]


# --- geometry ---------------------------------------------------------------------------------


def fit(size: tuple[int, int], max_pixels: int) -> tuple[int, int] | None:
    """The largest size of the same aspect within max_pixels, None when size already fits.

    Example:
        >>> fit((5000, 5000), 25_000_000), fit((5001, 5000), 25_000_000)
        (None, (5000, 4999))
    """
    width, height = size
    if width * height <= max_pixels:
        return None
    ratio = math.sqrt(max_pixels / (width * height))
    new_width = max(1, int(width * ratio))
    new_height = max(1, min(int(height * ratio), max_pixels // new_width))
    return min(new_width, max(1, max_pixels // new_height)), new_height


# --- pixels -----------------------------------------------------------------------------------


def reencode(image: Image.Image, plan: EncodePlan) -> Encoded:
    """Encode ``image`` (decoded pixels, as stored: before EXIF orientation) as ``plan`` says.

    Raises:
        InvalidImageError: the image cannot get under ``plan.max_bytes`` with the encodings
            the plan allows.
    """
    changes: list[str] = []
    pixels, icc, converted = _normalise_mode(image, resizing=plan.target is not None)
    if converted:
        changes.append(converted)
    if plan.target is not None:
        pixels = pixels.resize(plan.target, Image.Resampling.LANCZOS, reducing_gap=3.0)
        changes.append("downscaled")
    transpose = EXIF_TO_DISPLAY.get(plan.orientation)
    if transpose is not None:
        pixels = pixels.transpose(transpose)
        changes.append("exif-orientation")
    if pixels is image and not plan.owned:
        # saving sets attributes on the image, which must not happen to the caller's object
        pixels = image.copy()
    if plan.recompress:
        changes.append("re-encoded")
    data, fmt, steps = _encode(pixels, icc, plan)
    changes.extend(step for step in steps if step not in changes)
    return Encoded(data=data, format=fmt, size=pixels.size, changes=tuple(changes))


def _normalise_mode(
    image: Image.Image, *, resizing: bool
) -> tuple[Image.Image, bytes | None, str | None]:
    """Bring any mode to one PNG stores and the API reads: 1, P, L, LA, RGB or RGBA.

    Returns the image, the ICC profile still valid for it, and the change made (``None`` for
    none). Integer data (modes ``I``, ``I;16``...) that holds a value above 255 is 16-bit data
    and is scaled from 0..65535 to 0..255 (values outside clipped); integer data within 0..255
    holds 8-bit values in a wider container (``Image.convert("I")`` makes such images, and so
    does ``Image.fromarray`` of a uint16 array of 8-bit values) and is kept as it is. Float data
    in [0, 1] is scaled, other values clipped to [0, 255].
    """
    mode = image.mode
    icc = image.info.get("icc_profile") or None
    transparent = image.has_transparency_data
    if mode in ("LA", "RGBA") or (mode in ("L", "RGB") and not (resizing and transparent)):
        return image, icc, None
    # bilevel and palette images only need widening when they are resampled
    if mode in ("1", "P") and not resizing and not transparent:
        return image, icc, None
    family = "grey" if mode in _GREY_MODES or mode.startswith("I;16") else "rgb"
    if mode.startswith("I"):
        converted = Image.fromarray(_integers_to_8_bits(np.asarray(image)))
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
    return converted, icc, f"converted-mode-{mode}"


def _integers_to_8_bits(values: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """8-bit values of integer pixels: 16-bit data scaled, 8-bit values kept (see above)."""
    narrow: npt.NDArray[np.uint8]
    if values.size and int(values.max()) > 255:
        wide = np.clip(values, 0, 65535).astype(np.uint32)
        narrow = ((wide + 128) // 257).astype(np.uint8)
    else:
        narrow = np.clip(values, 0, 255).astype(np.uint8)
    return narrow


# --- encoding ---------------------------------------------------------------------------------


def _encode(
    image: Image.Image, icc: bytes | None, plan: EncodePlan
) -> tuple[bytes, str, tuple[str, ...]]:
    """PNG when the plan tries it first and it fits, else JPEG at the allowed qualities."""
    data = b""
    if plan.lossless_first:
        data = _save(image, "PNG", icc_profile=icc, compress_level=_PNG_FAST_LEVEL)
        if len(data) <= plan.max_bytes:
            return data, "PNG", ()
        if len(data) <= plan.max_bytes * _OPTIMIZE_MARGIN:
            data = _save(image, "PNG", icc_profile=icc, optimize=True)
            if len(data) <= plan.max_bytes:
                return data, "PNG", ("re-encoded",)
        if not plan.jpeg_qualities:
            raise InvalidImageError(
                f"{plan.label}: {len(data):,} bytes as PNG, above the limit of "
                f"{plan.max_bytes:,} bytes (strict mode forbids lossy re-encoding)"
            )
    flat, flattened = _flatten_for_jpeg(image)
    steps = ("alpha-flattened", "re-encoded") if flattened else ("re-encoded",)
    for quality in plan.jpeg_qualities:
        data = _save(flat, "JPEG", icc_profile=icc, quality=quality)
        if len(data) <= plan.max_bytes:
            return data, "JPEG", steps
    lowest = plan.jpeg_qualities[-1] if plan.jpeg_qualities else None
    raise InvalidImageError(
        f"{plan.label}: cannot fit under the limit of {plan.max_bytes:,} bytes: {len(data):,} "
        f"bytes even as JPEG quality {lowest}"
        + (" (strict mode forbids lower quality)" if plan.strict else "")
    )


def _flatten_for_jpeg(image: Image.Image) -> tuple[Image.Image, bool]:
    """Pixels JPEG can store, and whether transparency was flattened on white."""
    if image.mode in ("L", "RGB") and not image.has_transparency_data:
        return image, False
    if image.has_transparency_data:
        grey = image.mode in ("L", "LA")
        backdrop = Image.new("RGBA", image.size, (255, 255, 255, 255))
        flat = Image.alpha_composite(backdrop, image.convert("RGBA"))
        return flat.convert("L" if grey else "RGB"), True
    return image.convert("L" if image.mode == "1" else "RGB"), False


def _save(image: Image.Image, fmt: str, **params: Any) -> bytes:
    # no exif= is passed: the output carries no orientation tag (nor any other EXIF)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()
