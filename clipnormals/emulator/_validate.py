"""Checks on what a request carries: the Accept header and the uploaded image. Pure functions."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Final

from PIL import Image, UnidentifiedImageError

__all__ = ["ImageInfo", "Rejected", "accepts_jpeg", "inspect_image", "sniff_format"]

ACCEPTED_FORMATS: Final = ("JPEG", "PNG", "WEBP")

# Formats recognised only to be refused by name; anything else is "not an image".
_SIGNATURES: Final = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"%PDF", "PDF"),
)


class Rejected(Exception):
    """A request the contract answers with a 4xx; ``message`` goes into ``{"error": ...}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What the emulator learned from an upload: its format and pixel size.

    ``pixels`` is the decoded image reduced to ``keep`` pixels on its long side, when the
    checks decoded at least that many (see :func:`inspect_image`); otherwise None.
    """

    format: str
    width: int
    height: int
    pixels: Image.Image | None = field(default=None, repr=False, compare=False)


def sniff_format(data: bytes) -> str | None:
    """The image format the bytes start with, by signature; None when unrecognised.

    Deliberately not the client's sniffer (``clipnormals._images.formats``): the emulator is
    an independent oracle of the API, so it recognises uploads from its own table of
    signatures, and a mistake in the client's recognition shows up as a disagreement in the
    tests instead of being shared by both sides.

    Example:
        >>> sniff_format(b"RIFF\\x00\\x00\\x00\\x00WEBPVP8 "), sniff_format(b"hello")
        ('WEBP', None)
    """
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        return "HEIF/AVIF"
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    return None


def inspect_image(
    data: bytes, *, max_pixels: int, max_file_bytes: int, verify: bool = True, keep: int = 0
) -> ImageInfo:
    """Apply the contract's rules to an upload; raise :class:`Rejected` (400) when one fails.

    Order: empty, file size, format (sniffed, never trusted from a name or a part header),
    header readable, pixel count, then (``verify``) a full decode to catch corrupt data.
    With ``keep`` > 0, the decoded pixels are kept, reduced to ``keep`` on their long side, so
    that a later look at the picture need not decode it again (not when a JPEG's reduced
    decode is smaller than that). Blocking: run it in a worker thread for large uploads.

    Example:
        >>> import io
        >>> from PIL import Image
        >>> buf = io.BytesIO(); Image.new("RGB", (4, 3)).save(buf, "PNG")
        >>> inspect_image(buf.getvalue(), max_pixels=100, max_file_bytes=10_000)
        ImageInfo(format='PNG', width=4, height=3)
    """
    if not data:
        raise Rejected(400, "image_file is empty")
    if len(data) > max_file_bytes:
        raise Rejected(
            400,
            f"image_file is too large: {len(data)} bytes, the limit is {max_file_bytes} bytes",
        )
    fmt = sniff_format(data)
    if fmt is None:
        raise Rejected(400, "image_file is not a valid image: unrecognised file format")
    if fmt not in ACCEPTED_FORMATS:
        raise Rejected(400, f"Unsupported image format {fmt}: use PNG, JPEG or WEBP")
    pixels = None
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise Rejected(400, _too_many_pixels(width, height, max_pixels))
            if verify:
                if fmt == "JPEG":
                    # Decoding at 1/8 scale still reads every entropy-coded byte (so truncation
                    # and corruption show), at a fraction of the cost of a full decode.
                    image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
                image.load()
                if keep > 0 and max(image.size) >= keep:
                    image.thumbnail((keep, keep), Image.Resampling.BOX)  # in place: no 2nd copy
                    pixels = image.copy()  # closing the file frees the image's own pixels
    except Rejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own guard fires far above 25 MP: the header alone says it is too large.
        raise Rejected(400, "image_file is too large: resolution over the limit") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise Rejected(400, "image_file is not a valid image: it could not be decoded") from exc
    return ImageInfo(format=fmt, width=width, height=height, pixels=pixels)


def _too_many_pixels(width: int, height: int, max_pixels: int) -> str:
    return (
        f"Image resolution too large: {width}x{height} is {width * height / 1e6:.2f} "
        f"megapixels, the limit is {max_pixels / 1e6:g} megapixels"
    )


def accepts_jpeg(header: str | None) -> bool:
    """Whether an ``Accept`` header lets the server answer ``image/jpeg``.

    Content negotiation as RFC 9110 describes it: the answer is acceptable when some media
    range with a non-zero q matches it (``image/jpeg``, ``image/*`` or ``*/*``), the most
    specific match deciding its q. So ``image/jpeg, application/json;q=0.9`` is fine (the
    error bodies are JSON whatever Accept says, as on most servers), ``application/json`` or
    ``image/png`` alone get 406, and so does ``image/jpeg;q=0``. An absent or blank header
    accepts anything; unparseable entries are skipped.

    Example:
        >>> accepts_jpeg(None), accepts_jpeg("image/*"), accepts_jpeg("application/json")
        (True, True, False)
        >>> accepts_jpeg("image/jpeg;q=0, */*")
        False
    """
    if header is None or not header.strip():
        return True
    best_rank = -1
    best_q = 0.0
    for entry in header.split(","):
        parsed = _media_range(entry)
        if parsed is None:
            continue
        kind, subtype, q = parsed
        if kind == "image" and subtype == "jpeg":
            rank = 2
        elif kind == "image" and subtype == "*":
            rank = 1
        elif kind == "*" and subtype == "*":
            rank = 0
        else:
            continue
        if rank > best_rank:
            best_rank, best_q = rank, q
    return best_rank >= 0 and best_q > 0.0


def _media_range(entry: str) -> tuple[str, str, float] | None:
    parts = [p.strip() for p in entry.split(";")]
    kind, _, subtype = parts[0].lower().partition("/")
    if not kind or not subtype:
        return None
    q = 1.0
    for param in parts[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                q = float(value.strip())
            except ValueError:
                return None
            if not 0.0 <= q <= 1.0:
                return None
    return kind, subtype, q
