"""Whether an image file is whole: what its structure says, checked beside its one decode.

A download that stopped half way into a file allocated at full size leaves an image whose length
is right and whose tail is zero bytes; other failures leave random bytes, ``0xFF`` bytes (erased
flash) or a repeat of earlier data there, and a downloader that fetches pieces in parallel can
leave holes. Decoders fill such gaps silently in many cases, and an upload of the result is
charged like any other. So each format's own structure is read for the evidence it keeps of
being complete:

- **JPEG**, **JPEG 2000**: the codestream walks of ``codestreams``.
- **PNG**: chunks are walked from the signature; each fits the file, has a valid type and
  matches its CRC-32; an IEND chunk ends the image.
- **WEBP**: the RIFF size is at most the file's size; chunks fit the RIFF and have valid types;
  there is image data (VP8, VP8L or ANMF), and a VP8 frame's first partition fits its chunk.
  Both WEBP codecs decode garbage without complaint: ``decode.require_the_end`` then checks
  that the picture needs the end of its data.
- **HEIF/AVIF**: the top-level ISO-BMFF boxes fit the file and have valid types, and the
  picture's coded data is what an encoder writes (``bmff``); AVIF gets the end test of
  ``decode`` as well.
- **TIFF**: every strip or tile of the first image lies within the file; each Deflate strip is
  a complete zlib stream with a matching Adler-32 (libtiff stops inflating once it has its rows,
  so it passes damaged strips), and each JPEG strip a complete JPEG codestream (libtiff decodes
  damaged ones with warnings only). LZW strips are left to libtiff, which notices damage.
- **ICO**: every icon lies within the file, and PNG icons pass the PNG check.
- **QOI**: the file ends with QOI's end marker (and ``sources`` checks that the decode stops
  right there).
- GIF, BMP, PPM: the strict decode of ``decode`` notices every short file and every error its
  codec reports.

What no check can see: formats that store raw pixels (uncompressed or PackBits TIFF, BMP, PPM)
have no redundancy, so damage there is just other pixels; zero bytes inside the entropy-coded
data of a progressive or optimized JPEG, or of a JPEG 2000 file, read as flat areas; and HEVC
(HEIF) decodes random bytes without a sign; a hole of random bytes inside a lossless WEBP
now and then decodes too. ``benchmarks/garbage.py`` measures which damaged files are refused.

Cost: one pass of CRC-32 over a PNG, one inflate per Deflate TIFF strip, regular-expression
scans for markers over JPEG, JPEG 2000 and HEIF/AVIF data, a few dozen bytes read for the
others; no pixel is decoded here.
"""

from __future__ import annotations

import re
import zlib

from PIL import Image

from .._errors import InvalidImageError
from . import bmff
from .codestreams import JPEG_ZERO_RUN, Broken, walk_jpeg, walk_jpeg2000, zero_tail

__all__ = ["JPEG_ZERO_RUN", "check_whole", "download_hint"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_QOI_END = b"\x00" * 7 + b"\x01"
_TIFF_DEFLATE = frozenset({8, 32946})
_TIFF_JPEG = 7
_WEBP_IMAGE_CHUNKS = frozenset({b"VP8 ", b"VP8L", b"ANMF"})
_FOURCC = re.compile(rb"[\x20-\x7e]{4}")
_PNG_TYPE = re.compile(rb"[A-Za-z]{4}")


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
    except Broken as exc:
        message = f"{label}: truncated or corrupt {fmt} data ({exc})"
        raise InvalidImageError(message + download_hint(data)) from None


def download_hint(data: bytes) -> str:
    """``"; the file ends in N zero bytes, ..."`` when it does (16 or more), else ``""``."""
    tail = zero_tail(data, len(data))
    if tail < 16:
        return ""
    return f"; the file ends in {tail:,} zero bytes, as a download that stopped half way leaves it"


# --- PNG --------------------------------------------------------------------------------------


def _png(raw: bytes, image: Image.Image) -> None:
    data = memoryview(raw)
    size = len(data)
    pos = len(_PNG_SIGNATURE)
    while pos + 12 <= size:
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = bytes(data[pos + 4 : pos + 8])
        if not _PNG_TYPE.fullmatch(kind):
            raise Broken(f"no valid chunk at byte {pos:,}")
        end = pos + 12 + length
        if length > 0x7FFFFFFF or end > size:
            raise Broken(f"the {kind.decode()} chunk at byte {pos:,} runs past the end")
        stored = int.from_bytes(data[end - 4 : end], "big")
        if zlib.crc32(data[pos + 4 : end - 4]) != stored:
            raise Broken(f"the {kind.decode()} chunk at byte {pos:,} fails its CRC check")
        if kind == b"IEND":
            return
        pos = end
    raise Broken("no IEND chunk: the file ends early")


# --- WEBP -------------------------------------------------------------------------------------


def _webp(data: bytes, image: Image.Image) -> None:
    declared = int.from_bytes(data[4:8], "little") + 8
    if declared > len(data):
        raise Broken(f"the RIFF header declares {declared:,} bytes, the file has {len(data):,}")
    pos = 12
    images = 0
    while pos + 8 <= declared:
        kind = bytes(data[pos : pos + 4])
        length = int.from_bytes(data[pos + 4 : pos + 8], "little")
        if not _FOURCC.fullmatch(kind):
            raise Broken(f"no valid chunk at byte {pos:,}")
        end = pos + 8 + length
        if end > declared:
            raise Broken(f"the {kind.decode()!r} chunk at byte {pos:,} runs past the end")
        if kind in _WEBP_IMAGE_CHUNKS:
            images += 1
        if kind == b"VP8 " and length >= 10:
            first_partition = int.from_bytes(data[pos + 8 : pos + 11], "little") >> 5
            if 10 + first_partition > length:
                raise Broken("the VP8 frame's first partition runs past its chunk")
        pos = end + (length & 1)
    if not images:
        raise Broken("no image data")


# --- HEIF, AVIF -------------------------------------------------------------------------------


def _bmff(data: bytes, image: Image.Image) -> None:
    bmff.boxes(data, 0, len(data))
    bmff.check_picture(data)


# --- TIFF, ICO, QOI -------------------------------------------------------------------------------


def _tiff(data: bytes, image: Image.Image) -> None:
    tags = getattr(image, "tag_v2", None)
    if tags is None:
        return
    compression = tags.get(259, 1)
    tables = tags.get(347) if compression == _TIFF_JPEG else None
    for offsets_tag, counts_tag, what in ((273, 279, "strip"), (324, 325, "tile")):
        offsets = tags.get(offsets_tag)
        counts = tags.get(counts_tag)
        if offsets is None or counts is None:
            continue
        offsets = offsets if isinstance(offsets, tuple) else (offsets,)
        counts = counts if isinstance(counts, tuple) else (counts,)
        for index, (offset, count) in enumerate(zip(offsets, counts, strict=False)):
            start, end = int(offset), int(offset) + int(count)
            if end > len(data):
                raise Broken(f"{what} {index} lies past the end of the file")
            try:
                if compression in _TIFF_DEFLATE:
                    _inflates_completely(data[start:end])
                elif compression == _TIFF_JPEG:
                    _jpeg_in_tiff(data[start:end], tables, image)
            except Broken as exc:
                raise Broken(f"{what} {index}: {exc}") from None


def _inflates_completely(stream: bytes) -> None:
    """libtiff stops inflating a strip once it has its rows, so a strip whose zlib stream was
    damaged but still yields enough bytes passes its decode; the stream's end and Adler-32
    checksum do not."""
    inflater = zlib.decompressobj()
    try:
        inflater.decompress(stream)
        inflater.flush()
    except zlib.error as exc:
        raise Broken(f"its Deflate data is corrupt ({exc})") from None
    if not inflater.eof:
        raise Broken("its Deflate data ends early")


def _jpeg_in_tiff(stream: bytes, tables: object, image: Image.Image) -> None:
    """A JPEG strip is an abbreviated JPEG: walked as one, with the JPEGTables tag's tables
    in front (libtiff decodes damaged JPEG strips with warnings only)."""
    if not stream.startswith(b"\xff\xd8"):
        raise Broken("no JPEG start-of-image marker")
    whole = isinstance(tables, bytes) and tables.endswith(b"\xff\xd9")
    head = tables[:-2] if isinstance(tables, bytes) and whole else b"\xff\xd8"
    walk_jpeg(head + stream[2:])


def _ico(data: bytes, image: Image.Image) -> None:
    count = int.from_bytes(data[4:6], "little")
    for index in range(count):
        entry = 6 + 16 * index
        if entry + 16 > len(data):
            raise Broken("the icon directory is cut off")
        size = int.from_bytes(data[entry + 8 : entry + 12], "little")
        offset = int.from_bytes(data[entry + 12 : entry + 16], "little")
        if offset + size > len(data):
            raise Broken(f"icon {index} lies past the end of the file")
        if data[offset : offset + 8] == _PNG_SIGNATURE:
            try:
                _png(data[offset : offset + size], image)
            except Broken as exc:
                raise Broken(f"icon {index}: {exc}") from None


def _qoi(data: bytes, image: Image.Image) -> None:
    if not data.endswith(_QOI_END):
        raise Broken("no end marker: the file ends early")


def _jpeg(data: bytes, image: Image.Image) -> None:
    walk_jpeg(data)


def _jpeg2000(data: bytes, image: Image.Image) -> None:
    walk_jpeg2000(data)


_CHECKS = {
    "JPEG": _jpeg,
    "JPEG2000": _jpeg2000,
    "PNG": _png,
    "WEBP": _webp,
    "AVIF": _bmff,
    "HEIF": _bmff,
    "TIFF": _tiff,
    "QOI": _qoi,
    "ICO": _ico,
}
