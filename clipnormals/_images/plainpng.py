"""A plain PNG checked without Pillow: the common upload, proved whole by its own structure.

Most PNGs an application uploads are plain: 8 bits a sample, grey, grey and alpha, RGB or RGBA,
not interlaced, one run of ``IDAT`` chunks, no metadata that could hold an EXIF orientation or
an animation. Such a file goes to the API byte for byte, so preparing it only has to prove
that it decodes completely, and PNG (ISO/IEC 15948) keeps all the evidence for that in its
structure:

- every chunk fits the file and matches its CRC-32, the first is ``IHDR`` and the last
  ``IEND``, at the very end of the file;
- the ``IDAT`` chunks form one run, and their zlib stream inflates to exactly
  ``height * (1 + width * channels)`` bytes, ends there, and matches its Adler-32;
- each row starts with a filter type from 0 to 4.

A decoder of such a file does nothing else that can fail: unfiltering is arithmetic on bytes
that are all there. This is what Pillow's decode checks, and more (Pillow reads no CRC of
``IDAT`` data, and stops inflating once it has its rows). It costs a CRC-32 pass and one
inflate, streamed in pieces of at most :data:`PIECE` bytes (for small PNGs, a fraction of
``Image.open(...).load()``: ``benchmarks/hotpath.py`` and ``benchmarks/README.md`` section 3).

:func:`plain_png_size` answers only for files it can prove whole. Anything else, damaged or
merely unusual (palette, 16 bits, interlacing, text chunks, ``eXIf``, ``iCCP``, APNG, bytes
after ``IEND``), gets ``None``, and ``prepare`` takes its full path through Pillow, which
decides and words the error: this module never refuses a file, so no message depends on it.
"""

from __future__ import annotations

import struct
import zlib
from typing import Final

__all__ = ["PIECE", "plain_png_size"]

#: Most inflated bytes held at once while checking (bytes).
PIECE: Final = 1 << 20

_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
#: Colour type -> samples a pixel, at bit depth 8 (PNG spec, table 11.1).
_CHANNELS: Final = {0: 1, 2: 3, 4: 2, 6: 4}
#: Ancillary chunks that change nothing preparation reports, with their fixed lengths (PNG
#: spec 11.3): a decoder reads them without failing, and none can carry EXIF or animation.
_HARMLESS: Final = {b"gAMA": 4, b"cHRM": 32, b"sRGB": 1, b"pHYs": 9, b"tIME": 7}
_LENGTH_AND_TYPE = struct.Struct(">I4s")
_IHDR = struct.Struct(">IIBBBBB")
_MAX_LENGTH: Final = 0x7FFFFFFF


def plain_png_size(data: bytes, max_pixels: int) -> tuple[int, int] | None:
    """``(width, height)`` in pixels when ``data`` is a plain PNG of at most ``max_pixels``
    pixels that decodes completely (see the module's docstring), ``None`` otherwise: not a plain
    PNG, more pixels (nothing is inflated then), or not whole.

    Example:
        >>> import io
        >>> from PIL import Image
        >>> buffer = io.BytesIO()
        >>> Image.new("RGB", (3, 2), (9, 8, 7)).save(buffer, format="PNG")
        >>> png = buffer.getvalue()
        >>> plain_png_size(png, 6), plain_png_size(png[:-1], 6), plain_png_size(png, 5)
        ((3, 2), None, None)
    """
    if not data.startswith(_SIGNATURE):
        return None
    view = memoryview(data)
    size = len(data)
    pos = len(_SIGNATURE)
    stride = 0  # bytes a row, filter type included, once IHDR is read
    width = height = 0
    stream: list[memoryview] = []
    idat_ended = False
    while pos + 12 <= size:
        length, kind = _LENGTH_AND_TYPE.unpack_from(data, pos)
        end = pos + 12 + length
        if length > _MAX_LENGTH or end > size:
            return None
        if zlib.crc32(view[pos + 4 : end - 4]) != int.from_bytes(view[end - 4 : end], "big"):
            return None
        if not stride:
            if kind != b"IHDR" or length != _IHDR.size:
                return None
            width, height, depth, colour, *methods = _IHDR.unpack_from(data, pos + 8)
            channels = _CHANNELS.get(colour)
            if (
                channels is None
                or depth != 8
                or methods != [0, 0, 0]  # compression, filter method, interlace (none)
                or not 0 < width <= _MAX_LENGTH
                or not 0 < height <= _MAX_LENGTH
                or width * height > max_pixels
            ):
                return None
            stride = 1 + width * channels
        elif kind == b"IDAT":
            if idat_ended:
                return None  # a second run: a decoder stops at the first
            stream.append(view[pos + 8 : end - 4])
        elif kind == b"IEND":
            if length or end != size or not stream:
                return None
            return (width, height) if _inflates_to(stride * height, stride, stream) else None
        elif _HARMLESS.get(kind) != length:
            return None
        else:
            idat_ended = bool(stream)
        pos = end
    return None


def _inflates_to(expected: int, stride: int, stream: list[memoryview]) -> bool:
    """Whether the zlib stream in ``stream`` ends exactly after ``expected`` bytes, with a valid
    filter type at the start of each ``stride`` bytes."""
    inflater = zlib.decompressobj()
    pending: bytes = b"".join(stream)
    done = 0  # inflated bytes so far
    try:
        while True:
            piece = inflater.decompress(pending, PIECE)
            pending = inflater.unconsumed_tail
            if not _filters_valid(piece, done, stride):
                return False
            done += len(piece)
            if done > expected:
                return False
            if inflater.eof:
                break
            if not pending and len(piece) < PIECE:
                return False  # the data ends before the zlib stream does
    except zlib.error:
        return False
    # nothing after the end of the zlib stream, and no row missing
    return not pending and not inflater.unused_data and done == expected


def _filters_valid(piece: bytes, offset: int, stride: int) -> bool:
    """Whether every row start inside ``piece`` (which begins ``offset`` bytes into the
    inflated data) holds a filter type from 0 to 4."""
    starts = piece[-offset % stride :: stride]
    return not starts or max(starts) <= 4
