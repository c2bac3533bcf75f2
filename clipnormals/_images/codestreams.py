"""Codestreams: the structure of JPEG and JPEG 2000 data, and helpers every format's walk shares.

- **JPEG** (ITU T.81): :func:`walk_jpeg` walks the markers from SOI; every segment fits the
  file; the entropy-coded data of every scan is followed by a marker, and an EOI comes after the
  last scan. A run of :data:`JPEG_ZERO_RUN` zero bytes inside entropy-coded data is refused,
  unless the scan's Huffman tables decode zero bits as unchanged blocks (``optimize=True`` and
  progressive files code flat areas that way: there a run of zeros is a flat area, and cannot be
  told from one). Data after the EOI (more pictures of a multi-picture JPEG, trailers) is not
  the upload's picture and is not checked.
- **JPEG 2000** (ITU T.800): :func:`walk_jpeg2000` finds the codestream (raw, or the ``jp2c``
  box of a JP2 file), walks the main header's marker segments, then every tile-part by its
  ``Psot`` length: each ends where the next SOT or the EOC marker starts, and its data holds no
  marker code (``FF`` followed by a byte from ``90`` up: T.800 A.1.1 keeps them out of packet
  data by bit stuffing). openjpeg decodes around damaged packets, so this is what notices random
  bytes in the middle (about one such pair per 585 random bytes); a zero-filled hole there has
  no marker code and is not seen.

Every walk raises :class:`Broken` with the reason; ``integrity`` turns it into the message.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["JPEG_ZERO_RUN", "Broken", "walk_jpeg", "walk_jpeg2000", "zero_tail"]

#: Zero bytes in a row that no JPEG scan holds unless its tables code zeros as flat blocks.
#: Files from libjpeg with standard tables hold at most 6 anywhere; a scan of blocks whose 63
#: AC coefficients are all -1, the only other way, does not occur in pictures.
JPEG_ZERO_RUN: Final = 256
_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_J2K_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_J2K_MARKER_CODE = re.compile(rb"\xff[\x90-\xff]")
_SOT, _SOD, _EOC = b"\xff\x90", b"\xff\x93", b"\xff\xd9"


class Broken(ValueError):
    """One reason a file is not whole; ``integrity`` turns it into InvalidImageError."""


def walk_jpeg(raw: bytes) -> None:
    """Walk a JPEG's markers from its SOI to its EOI (see the module docstring).

    Raises:
        Broken: the reason the stream is not whole.
    """
    size = len(raw)
    zero_symbols: dict[tuple[int, int], int] = {}
    pos = 2
    scans = 0
    while True:
        if pos + 2 > size:
            raise Broken("the file ends before the end-of-image marker")
        if raw[pos] != 0xFF:
            raise Broken(f"no marker where one must be, at byte {pos:,}")
        marker = raw[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:
            if not scans:
                raise Broken("an end-of-image marker before any image data")
            return
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        if pos + 4 > size:
            raise Broken("the file ends inside a marker segment")
        length = int.from_bytes(raw[pos + 2 : pos + 4], "big")
        end = pos + 2 + length
        if length < 2 or end > size:
            raise Broken(f"a marker segment at byte {pos:,} runs past the end of the file")
        if marker == 0xC4:
            _huffman_zero_symbols(raw, pos + 4, end, zero_symbols)
        if marker != 0xDA:
            pos = end
            continue
        scans += 1
        flat = _zeros_are_flat(raw, pos + 4, end, zero_symbols)
        found = _MARKER.search(raw, end)
        if found is None:
            raise Broken("the file ends inside the compressed image data, with no end marker")
        if not flat:
            run = raw.find(b"\x00" * JPEG_ZERO_RUN, end, found.start())
            if run != -1:
                raise Broken(
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


# --- JPEG 2000 --------------------------------------------------------------------------------


def walk_jpeg2000(data: bytes) -> None:
    """Walk a JPEG 2000 codestream's tile-parts (see the module docstring).

    Raises:
        Broken: the reason the codestream is not whole.
    """
    start, end = _codestream(data)
    pos = start + 2  # SOC
    while data[pos : pos + 2] != _SOT:
        pos = _segment_end(data, pos, end, "main header")
    parts = 0
    while True:
        marker = data[pos : pos + 2]
        if marker == _EOC:
            if not parts:
                raise Broken("an end-of-codestream marker before any tile")
            return
        if marker != _SOT:
            raise Broken(
                f"no tile-part or end-of-codestream marker where one must be, at byte {pos:,}"
            )
        if pos + 12 > end:
            raise Broken("the file ends inside a tile-part header")
        length = int.from_bytes(data[pos + 6 : pos + 10], "big")
        stop = pos + length if length else end - 2  # 0: the last tile-part, up to the EOC
        if stop > end or stop < pos + 14:
            raise Broken(f"the tile-part at byte {pos:,} runs past the end of the file")
        header = pos + 12
        while data[header : header + 2] != _SOD:
            header = _segment_end(data, header, stop, "tile-part header")
        found = _J2K_MARKER_CODE.search(data, header + 2, stop)
        if found is not None:
            raise Broken(
                f"a marker code inside the compressed data of a tile, at byte {found.start():,}"
            )
        parts += 1
        pos = stop


def _codestream(data: bytes) -> tuple[int, int]:
    """(start, end) of the codestream: the whole file, or a JP2 file's ``jp2c`` box."""
    if not data.startswith(_J2K_SIGNATURE):
        return 0, len(data)
    pos = 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        body = pos + 8
        if size == 1:
            size = int.from_bytes(data[pos + 8 : pos + 16], "big")
            body = pos + 16
        elif size == 0:
            size = len(data) - pos
        if size < body - pos or pos + size > len(data):
            raise Broken(f"the box at byte {pos:,} runs past the end of the file")
        if data[pos + 4 : pos + 8] == b"jp2c":
            return body, pos + size
        pos += size
    raise Broken("no codestream box")


def _segment_end(data: bytes, pos: int, end: int, where: str) -> int:
    if pos + 4 > end or data[pos] != 0xFF:
        raise Broken(f"no marker where one must be in the {where}, at byte {pos:,}")
    stop = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    if stop > end:
        raise Broken(f"a marker segment at byte {pos:,} runs past the end of the {where}")
    return stop


# --- shared -----------------------------------------------------------------------------------


def zero_tail(data: bytes | memoryview, end: int) -> int:
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
