"""Whether an image file is whole: what its structure says, checked beside its one decode.

A download that stopped half way into a file allocated at full size leaves an image whose length
is right and whose tail is zero bytes; a downloader that fetches pieces in parallel can leave
zero-filled holes. Decoders fill such gaps silently in many cases (libjpeg and libwebp decode
zeros as valid data, Pillow pads a short file with grey when ``LOAD_TRUNCATED_IMAGES`` is on),
and an upload of the result is charged like any other. So each format's own structure is read
for the evidence it keeps of being complete:

- **JPEG**: the markers are walked from SOI; every segment fits the file; the entropy-coded data
  of every scan is followed by a marker, and an EOI comes after the last scan. A run of
  :data:`JPEG_ZERO_RUN` zero bytes inside entropy-coded data is refused, unless the scan's
  Huffman tables decode zero bits as unchanged blocks (``optimize=True`` and progressive files
  code flat areas that way: there a run of zeros is a flat area, and cannot be told from one).
  Data after the EOI (more pictures of a multi-picture JPEG, trailers) is not the upload's
  picture and is not checked.
- **PNG**: chunks are walked from the signature; each fits the file, has a valid type and
  matches its CRC-32; an IEND chunk ends the image.
- **WEBP**: the RIFF size is at most the file's size; chunks fit the RIFF and have valid types;
  there is image data (VP8, VP8L or ANMF), and a VP8 frame's first partition fits its chunk.
  Both WEBP codecs decode zeros without complaint, so an image chunk that ends in a long run of
  zero bytes is refused: more than :data:`LOSSLESS_ZERO_TAIL` bytes for VP8L, and for lossy
  VP8 more than :func:`lossy_zero_tail` (libwebp codes a flat area as zero bytes, about one
  per 10,000 pixels; the limit leaves a margin of 2.5 over that).
- **HEIF/AVIF**: the top-level ISO-BMFF boxes fit the file and have valid types; an ``mdat``
  that ends the file may not end in a zero run longer than :func:`lossy_zero_tail`.
- **TIFF**: every strip or tile of the first image lies within the file (libtiff then notices
  zeros in Deflate and LZW strips while decoding).
- **QOI**: the file ends with QOI's end marker.
- GIF, BMP and PPM: Pillow's decode already notices every short file (see ``sources``).

What no check can see: formats that store raw pixels (uncompressed or PackBits TIFF, BMP, PPM)
have no redundancy, so zero bytes there are black pixels, and a zero-filled tail reads
as a black band; and holes in the middle of arithmetic-coded data (lossy WEBP, AVIF) decode
as flat areas. Those files are uploaded as they are.

Cost: one pass of CRC-32 over a PNG, a regular-expression scan for markers and one ``find``
per JPEG scan, a few dozen bytes read for the others; no pixel is decoded here.
"""

from __future__ import annotations

import re
import zlib
from typing import Final

from PIL import Image

from .._errors import InvalidImageError

__all__ = [
    "JPEG_ZERO_RUN",
    "LOSSLESS_ZERO_TAIL",
    "check_whole",
    "download_hint",
    "lossy_zero_tail",
]

#: Zero bytes in a row that no JPEG scan holds unless its tables code zeros as flat blocks.
#: Files from libjpeg with standard tables hold at most 6 anywhere; a scan of blocks whose 63
#: AC coefficients are all -1, the only other way, does not occur in pictures.
JPEG_ZERO_RUN: Final = 256
#: libwebp's lossless files measured end in at most 4 zero bytes, flat or noisy.
LOSSLESS_ZERO_TAIL: Final = 64
_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_QOI_END = b"\x00" * 7 + b"\x01"
_WEBP_IMAGE_CHUNKS = frozenset({b"VP8 ", b"VP8L", b"ANMF"})
_FOURCC = re.compile(rb"[\x20-\x7e]{4}")
_PNG_TYPE = re.compile(rb"[A-Za-z]{4}")


class _Broken(Exception):
    """One reason a file is not whole; turned into InvalidImageError by check_whole."""


def lossy_zero_tail(pixels: int) -> int:
    """The longest zero run an arithmetic-coded image (VP8, AVIF) may end with, in bytes.

    Example:
        >>> lossy_zero_tail(1_000_000), lossy_zero_tail(25_000_000)
        (256, 6103)
    """
    return max(256, pixels // 4096)


def check_whole(data: bytes, fmt: str, image: Image.Image, label: str) -> None:
    """Refuse ``data`` unless its structure shows a complete ``fmt`` file.

    ``image`` is Pillow's lazy image over ``data`` (opened, not decoded): its size and TIFF
    tags are read.

    Raises:
        InvalidImageError: "truncated or corrupt <FORMAT> data" with the reason and, when
            the file ends in zeros, a hint that a download may have stopped half way.
    """
    check = _CHECKS.get(fmt)
    if check is None:
        return
    try:
        check(data, image)
    except _Broken as exc:
        message = f"{label}: truncated or corrupt {fmt} data ({exc})"
        raise InvalidImageError(message + download_hint(data)) from None


def download_hint(data: bytes) -> str:
    """``"; the file ends in N zero bytes, ..."`` when it does (16 or more), else ``""``."""
    tail = _zero_tail(data, len(data))
    if tail < 16:
        return ""
    return f"; the file ends in {tail:,} zero bytes, as a download that stopped half way leaves it"


def _zero_tail(data: bytes | memoryview, end: int) -> int:
    """How many zero bytes come right before ``end``."""
    count = 0
    step = 4096
    while count < end:
        start = max(0, end - count - step)
        window = bytes(data[start : end - count])
        kept = len(window.rstrip(b"\x00"))
        count += len(window) - kept
        if kept:
            return count
        step *= 2
    return count


# --- JPEG -------------------------------------------------------------------------------------


def _jpeg(raw: bytes, image: Image.Image) -> None:
    size = len(raw)
    zero_symbols: dict[tuple[int, int], int] = {}
    pos = 2
    scans = 0
    while True:
        if pos + 2 > size:
            raise _Broken("the file ends before the end-of-image marker")
        if raw[pos] != 0xFF:
            raise _Broken(f"no marker where one must be, at byte {pos:,}")
        marker = raw[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:
            if not scans:
                raise _Broken("an end-of-image marker before any image data")
            return
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        if pos + 4 > size:
            raise _Broken("the file ends inside a marker segment")
        length = int.from_bytes(raw[pos + 2 : pos + 4], "big")
        end = pos + 2 + length
        if length < 2 or end > size:
            raise _Broken(f"a marker segment at byte {pos:,} runs past the end of the file")
        if marker == 0xC4:
            _huffman_zero_symbols(raw, pos + 4, end, zero_symbols)
        if marker != 0xDA:
            pos = end
            continue
        scans += 1
        flat = _zeros_are_flat(raw, pos + 4, end, zero_symbols)
        found = _MARKER.search(raw, end)
        if found is None:
            raise _Broken("the file ends inside the compressed image data, with no end marker")
        if not flat:
            run = raw.find(b"\x00" * JPEG_ZERO_RUN, end, found.start())
            if run != -1:
                raise _Broken(
                    f"a run of zero bytes inside the compressed image data at byte {run:,}"
                )
        pos = found.start()


def _huffman_zero_symbols(raw: bytes, pos: int, end: int, out: dict[tuple[int, int], int]) -> None:
    """Record, per (class, id), the symbol of each table's all-zero code (canonical codes give
    it to the first symbol of the shortest length)."""
    while pos + 17 <= end:
        table = raw[pos]
        counts = raw[pos + 1 : pos + 17]
        total = sum(counts)
        symbols = pos + 17
        if total and symbols < end:
            out[(table >> 4, table & 0x0F)] = raw[symbols]
        pos = symbols + total


def _zeros_are_flat(raw: bytes, pos: int, end: int, zero: dict[tuple[int, int], int]) -> bool:
    """Whether the scan whose header is raw[pos:end] decodes zero bits as unchanged blocks."""
    count = raw[pos]
    spectral = pos + 1 + 2 * count
    if spectral + 3 > end:
        return False
    start, stop, approx = raw[spectral], raw[spectral + 1], raw[spectral + 2]
    for k in range(count):
        tables = raw[pos + 2 + 2 * k]
        if start == 0 and approx >> 4 == 0 and zero.get((0, tables >> 4)) != 0:
            return False  # a DC difference other than 0
        ac = zero.get((1, tables & 0x0F))
        # an end-of-band (run of blocks) symbol: low nibble 0, and not ZRL (0xF0)
        if stop > 0 and (ac is None or ac & 0x0F or ac == 0xF0):
            return False
    return True


# --- PNG --------------------------------------------------------------------------------------


def _png(raw: bytes, image: Image.Image) -> None:
    data = memoryview(raw)
    size = len(data)
    pos = len(_PNG_SIGNATURE)
    while pos + 12 <= size:
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = bytes(data[pos + 4 : pos + 8])
        if not _PNG_TYPE.fullmatch(kind):
            raise _Broken(f"no valid chunk at byte {pos:,}")
        end = pos + 12 + length
        if length > 0x7FFFFFFF or end > size:
            raise _Broken(f"the {kind.decode()} chunk at byte {pos:,} runs past the end")
        stored = int.from_bytes(data[end - 4 : end], "big")
        if zlib.crc32(data[pos + 4 : end - 4]) != stored:
            raise _Broken(f"the {kind.decode()} chunk at byte {pos:,} fails its CRC check")
        if kind == b"IEND":
            return
        pos = end
    raise _Broken("no IEND chunk: the file ends early")


# --- WEBP -------------------------------------------------------------------------------------


def _webp(data: bytes, image: Image.Image) -> None:
    declared = int.from_bytes(data[4:8], "little") + 8
    if declared > len(data):
        raise _Broken(f"the RIFF header declares {declared:,} bytes, the file has {len(data):,}")
    pos = 12
    last: tuple[bytes, int] | None = None
    images = 0
    while pos + 8 <= declared:
        kind = bytes(data[pos : pos + 4])
        length = int.from_bytes(data[pos + 4 : pos + 8], "little")
        if not _FOURCC.fullmatch(kind):
            raise _Broken(f"no valid chunk at byte {pos:,}")
        end = pos + 8 + length
        if end > declared:
            raise _Broken(f"the {kind.decode()!r} chunk at byte {pos:,} runs past the end")
        if kind in _WEBP_IMAGE_CHUNKS:
            images += 1
        if kind == b"VP8 " and length >= 10:
            first_partition = int.from_bytes(data[pos + 8 : pos + 11], "little") >> 5
            if 10 + first_partition > length:
                raise _Broken("the VP8 frame's first partition runs past its chunk")
        last = (kind, end)
        pos = end + (length & 1)
    if not images:
        raise _Broken("no image data")
    if last is not None and last[0] in _WEBP_IMAGE_CHUNKS:
        kind, end = last
        pixels = image.width * image.height
        limit = LOSSLESS_ZERO_TAIL if kind == b"VP8L" else lossy_zero_tail(pixels)
        tail = _zero_tail(data, end)
        if tail > limit:
            raise _Broken(f"the image data ends in {tail:,} zero bytes")


# --- HEIF, AVIF -------------------------------------------------------------------------------


def _bmff(data: bytes, image: Image.Image) -> None:
    size = len(data)
    pos = 0
    last = b""
    while pos < size:
        if pos + 8 > size:
            raise _Broken(f"a box header at byte {pos:,} is cut off")
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = bytes(data[pos + 4 : pos + 8])
        if not _FOURCC.fullmatch(kind):
            raise _Broken(f"no valid box at byte {pos:,}")
        if length == 1:
            if pos + 16 > size:
                raise _Broken(f"a box header at byte {pos:,} is cut off")
            length = int.from_bytes(data[pos + 8 : pos + 16], "big")
        elif length == 0:  # "to the end of the file"
            length = size - pos
        if length < 8 or pos + length > size:
            raise _Broken(f"the {kind.decode()!r} box at byte {pos:,} runs past the end")
        last = kind
        pos += length
    if last == b"mdat":
        tail = _zero_tail(data, size)
        if tail > lossy_zero_tail(image.width * image.height):
            raise _Broken(f"the image data ends in {tail:,} zero bytes")


# --- TIFF, QOI --------------------------------------------------------------------------------


def _tiff(data: bytes, image: Image.Image) -> None:
    tags = getattr(image, "tag_v2", None)
    if tags is None:
        return
    for offsets_tag, counts_tag, what in ((273, 279, "strip"), (324, 325, "tile")):
        offsets = tags.get(offsets_tag)
        counts = tags.get(counts_tag)
        if offsets is None or counts is None:
            continue
        offsets = offsets if isinstance(offsets, tuple) else (offsets,)
        counts = counts if isinstance(counts, tuple) else (counts,)
        for index, (offset, count) in enumerate(zip(offsets, counts, strict=False)):
            if int(offset) + int(count) > len(data):
                raise _Broken(f"{what} {index} lies past the end of the file")


def _qoi(data: bytes, image: Image.Image) -> None:
    if not data.endswith(_QOI_END):
        raise _Broken("no end marker: the file ends early")


_CHECKS = {
    "JPEG": _jpeg,
    "PNG": _png,
    "WEBP": _webp,
    "AVIF": _bmff,
    "HEIF": _bmff,
    "TIFF": _tiff,
    "QOI": _qoi,
}
